"""The ``kernels`` backend: our fused multi-tensor kernels as MindSpore operators.

Each operation is one ``mindspore.ops.Custom(func_type="aot")`` primitive over an entry point of
``libmsaccum_aot.so`` (the AOT frontend in ``csrc/``): one launch for all the tensors of a window. :data:`ENTRIES`
is the one description of those entry points' arguments on the Python side; whoever builds a
hyper-parameter vector for an entry checks its field order against it with :func:`entry`
(:class:`KernelBackend` for accumulate, :class:`~mindspore_accum.optim.FusedOptimizer` for the
updates), once, when the operator is made.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import _C, _compat
from ..kernels import aot_library_path

__all__ = ["AotEntry", "ENTRIES", "entry", "custom_op", "entry_op", "sum_of_squares_op", "KernelBackend"]


def _placeholder_shape(*_args):
    return (1,)


def _float32(*_args):
    return ms.float32


class AotEntry(NamedTuple):
    """The argument layout of one AOT entry point (n = number of tensors of the call)."""

    name: str  # the CPU export; the GPU one is name + "Cuda", same layout
    hyper: Tuple[str, ...]  # argument 0: a float32 vector of these fields, in this order (none: no vector)
    per_tensor: Tuple[str, ...]  # then, for each name, a float32 vector of n values (one per tensor)
    tensors: Tuple[str, ...]  # then, for each name, n tensors (the lists in this order)
    outputs: str  # "placeholder": one (1,) float32 output set to 0, the results are written in
    #               place (keep it alive with ops.depend); "sum_of_squares": total (1,) float32 and
    #               a float64 workspace of _C.sum_of_squares_workspace() elements


# The AOT entry points the package uses, by operation.
ENTRIES = {
    # overwrite 1: acc = scale * grad, the accumulator's old content never read (first micro-batch
    # of a window); 0: acc += scale * grad
    "accumulate": AotEntry("MsAccumAccumulate", ("scale", "overwrite"), (), ("acc", "grad"), "placeholder"),
    "sum_of_squares": AotEntry("MsAccumSumSquares", (), (), ("x",), "sum_of_squares"),
    # the window end of FusedMomentum: param and moment updated from grad * grad_scale (nesterov 0/1)
    "momentum_update": AotEntry(
        "MsAccumMomentumUpdate",
        ("lr", "momentum", "grad_scale", "nesterov"),
        ("weight_decay",),
        ("param", "moment", "grad"),
        "placeholder",
    ),
    # the window end of FusedAdamW; the bias corrections are precomputed (1 - beta^t, or 1)
    "adamw_update": AotEntry(
        "MsAccumAdamWUpdate",
        ("lr", "beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"),
        ("weight_decay",),
        ("param", "exp_avg", "exp_avg_sq", "grad"),
        "placeholder",
    ),
    # the window end of FusedLAMB (two passes: moments and norms, then the step); bias corrections 1 - beta^t
    "lamb_update": AotEntry(
        "MsAccumLambUpdate",
        ("lr", "beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"),
        ("weight_decay",),
        ("param", "exp_avg", "exp_avg_sq", "grad"),
        "placeholder",
    ),
    # the window end of FusedLARS (two passes: norms, then the momentum step); lars 1: trust ratio, 0: plain
    "lars_update": AotEntry(
        "MsAccumLarsUpdate",
        ("lr", "momentum", "grad_scale", "coefficient", "epsilon"),
        ("weight_decay", "lars"),
        ("param", "moment", "grad"),
        "placeholder",
    ),
}


def entry(operation: str, hyper: Sequence[str], tensors: Optional[int] = None) -> AotEntry:
    """The table entry of ``operation``, after checking that a caller building its hyper-parameter
    vector from the fields ``hyper`` (in that order), and passing ``tensors`` tensor lists, builds
    what the entry point reads. Raises ``ValueError`` naming both layouts otherwise."""
    found = ENTRIES[operation]
    if tuple(hyper) != found.hyper:
        raise ValueError(f"{found.name} reads the hyper-parameters {found.hyper}; the caller builds {tuple(hyper)}")
    if tensors is not None and tensors != len(found.tensors):
        raise ValueError(
            f"{found.name} takes {len(found.tensors)} tensor lists {found.tensors}; the caller passes {tensors}"
        )
    return found


def custom_op(entry_name: str, out_shape: Callable = _placeholder_shape, out_dtype: Callable = _float32):
    """A ``mindspore.ops.Custom`` AOT primitive over the entry point ``entry_name`` (e.g.
    ``"MsAccumAccumulate"``).

    The ``Cuda`` variant of the entry point is used when the device target is GPU. The in-place
    ops have one placeholder output of shape (1,) (the defaults): keep it alive with
    ``ops.depend``. The op is declared a memory side effect, so GRAPH mode orders it with the
    reads and writes of its Parameters.
    """
    target = ms.get_context("device_target")
    if target == "GPU":
        if not _C.build_info()["cuda"]:
            raise RuntimeError(
                "the device target is GPU but mindspore_accum was built without CUDA; "
                "reinstall it on a machine with nvcc (MSACCUM_CUDA=ON)"
            )
        entry_name += "Cuda"
    elif target != "CPU":
        raise RuntimeError(f"mindspore_accum has kernels for CPU and GPU, not for device target {target!r}")
    library = aot_library_path()
    try:
        op = ops.Custom(f"{library}:{entry_name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")
    except TypeError as err:
        whitelist = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
        if whitelist:
            raise TypeError(
                f"MindSpore refused mindspore_accum's kernel library {library} because MS_CUSTOM_AOT_WHITE_LIST="
                f"{whitelist!r} does not contain it. Add {os.path.dirname(library)!r} to that variable (or unset "
                f"it) before starting Python."
            ) from err
        raise
    # The kernels write their inputs in place. Declared as memory side effects, the ops are kept
    # in order with every other read and write of those Parameters (auto-monad) and are never
    # pruned; without it GRAPH mode reuses a load of a Parameter taken before the op wrote it.
    return _compat.mark_side_effect_mem(op)


def entry_op(operation: str):
    """The primitive of ``ENTRIES[operation]`` with the output shapes the table gives it."""
    found = ENTRIES[operation]
    if found.outputs == "sum_of_squares":
        return sum_of_squares_op()
    return custom_op(found.name)


def sum_of_squares_op():
    """A ``mindspore.ops.Custom`` AOT primitive: ``op(*tensors)`` returns ``(total, workspace)``,
    ``total`` of shape (1,) float32 = the sum of squares of every element (as
    :func:`mindspore_accum.kernels.sum_of_squares`), ``workspace`` float64 scratch of the GPU
    kernel. In a graph, use both (e.g. ``ops.depend(total, workspace)``): the op is a memory side
    effect (see :func:`custom_op`), and MindSpore warns at every compile when it eliminates an
    unused output of one."""
    target = ms.get_context("device_target")

    def shapes(*input_shapes):
        numel = [int(np.prod(shape, dtype=np.int64)) for shape in input_shapes]
        return (1,), (_C.sum_of_squares_workspace(numel, "GPU" if target == "GPU" else "CPU"),)

    return custom_op(ENTRIES["sum_of_squares"].name, out_shape=shapes, out_dtype=lambda *_: (ms.float32, ms.float64))


class KernelBackend(nn.Cell):
    """Accumulate and sum of squares as our fused kernels (one launch for all tensors). The
    fused optimizers make their update operator with :func:`entry` and :func:`entry_op`."""

    def __init__(self):
        super().__init__()
        entry("accumulate", ("scale", "overwrite"), tensors=2)  # the vector accumulate() stacks
        self._accumulate_op = entry_op("accumulate")
        # As 322 x (cast, square, sum) MindSpore ops the check took 434 ms per ResNet50 update on
        # a 2-core CPU (27 ms as one kernel) and 7 s to compile.
        self._squares_op = entry_op("sum_of_squares")

    def accumulate(self, accumulators, grads, weight, first):
        """``acc = weight * grad`` where ``first``, else ``acc += weight * grad``, for every tensor.
        Returns the op's (1,) placeholder output, to keep alive with ``ops.depend``."""
        hyper = ops.stack([ops.cast(weight, ms.float32), ops.cast(first, ms.float32)])  # {scale, overwrite}
        return self._accumulate_op(hyper, *accumulators, *grads)

    def sum_of_squares(self, tensors):
        """The sum of squares of every element of ``tensors``, a float32 scalar."""
        total, workspace = self._squares_op(*tensors)
        # The op is a side effect (custom_op): an output left unused is eliminated from the graph
        # with a warning at every compile ("Some side effect nodes were eliminated by mistake").
        return ops.reshape(ops.depend(total, workspace), ())
