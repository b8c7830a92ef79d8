"""Typed wrappers over the `_C` extension, and the `ops.Custom` operators over its AOT library.

The NumPy-level functions update C-contiguous arrays in place; they are what the PyNative CPU
path of :class:`GradAccumCell` calls on zero-copy views of MindSpore tensors. The operator
factories build ``mindspore.ops.Custom(func_type="aot")`` primitives over the same kernels for
GRAPH mode and for GPU (see ``csrc/frontends/mindspore_aot.cpp`` for the argument layouts).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from . import _C, _compat

ArrayList = Sequence[np.ndarray]

__all__ = ["accumulate", "momentum_flush", "adamw_flush", "sum_of_squares", "aot_library_path", "build_info"]


def build_info() -> dict:
    """How the extension was built: version, CUDA (and architectures), CPU vector ISA, threads."""
    return _C.build_info()


def accumulate(acc: ArrayList, grad: ArrayList, scale: float = 1.0, *, overwrite: bool = False) -> None:
    """``acc[i] += scale * grad[i]`` for every i, in place, in one multi-threaded call.

    With ``overwrite=True``: ``acc[i] = scale * grad[i]``, the accumulators' previous content is
    never read (it may hold anything, NaN included): the first micro-batch of a window, which then
    needs no zeroed accumulators (8 instead of 12 bytes per element).

    ``acc`` arrays are float32; ``grad`` arrays float32, float16 or bfloat16 (widened exactly).
    Raises ``TypeError``/``ValueError`` naming the offending argument before anything is written.
    """
    _C.accumulate(acc, grad, scale, overwrite=overwrite)


def momentum_flush(
    param: ArrayList,
    moment: ArrayList,
    acc: Optional[ArrayList],
    grad: Optional[ArrayList],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float]] = 0.0,
    nesterov: bool = False,
) -> None:
    """The fused end of an accumulation window, per element::

        g = (acc + grad) * grad_scale + weight_decay * param
        v = momentum * v + g
        param -= lr * (g + momentum * v) if nesterov else lr * v
        acc = 0

    ``acc`` and ``grad`` may each be None; ``weight_decay`` is one float or one per tensor.
    """
    _C.momentum_flush(param, moment, acc, grad, lr=lr, momentum=momentum, grad_scale=grad_scale,
                      weight_decay=weight_decay, nesterov=nesterov)


def adamw_flush(
    param: ArrayList,
    exp_avg: ArrayList,
    exp_avg_sq: ArrayList,
    acc: Optional[ArrayList],
    grad: Optional[ArrayList],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Union[float, Sequence[float]],
    step: int,
    grad_scale: float,
    bias_correction: bool,
) -> None:
    """The fused end of an accumulation window with AdamW, per element (float32)::

        g = (acc + grad) * grad_scale
        m = beta1 * m + (1 - beta1) * g                   # exp_avg
        v = beta2 * v + (1 - beta2) * g * g               # exp_avg_sq
        u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
        param = param - lr * weight_decay * param - lr * u
        acc = 0

    ``bias_correction=True``: ``bc1 = 1 - beta1**step``, ``bc2 = 1 - beta2**step`` (computed in
    double, rounded to float32), as ``torch.optim.AdamW`` / ``mindspore.mint.optim.AdamW``;
    ``False``: both 1, as ``mindspore.nn.AdamWeightDecay``. The decay is decoupled and applied to
    the parameter before this update. ``step`` counts updates from 1.

    ``param``, ``exp_avg``, ``exp_avg_sq`` and ``acc`` are float32 arrays; ``grad`` float32,
    float16 or bfloat16; ``acc`` and ``grad`` may each be None. ``weight_decay`` is one float or
    one per tensor. Checked before anything is written: finite ``lr >= 0``, ``0 <= beta < 1``,
    ``eps > 0``, finite ``grad_scale`` and weight decays, ``step >= 1``, and the arrays as in
    :func:`momentum_flush` (``TypeError``/``ValueError`` naming the argument and index).
    """
    _C.adamw_flush(param, exp_avg, exp_avg_sq, acc, grad, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                   weight_decay=weight_decay, step=step, grad_scale=grad_scale, bias_correction=bias_correction)


def sum_of_squares(tensors: ArrayList) -> float:
    """``sum(x * x)`` over every element of every array, in one multi-threaded pass.

    Arrays may be float32, float16 or bfloat16 (widened exactly); squares are float32, partial
    sums double. The result is NaN or inf when an element is, or when a square overflows
    float32 (|x| > ~1.8e19): the window-end check for non-finite gradients and the global norm
    for clipping. Raises ``TypeError``/``ValueError`` naming the offending array.
    """
    return _C.sum_of_squares(tensors)


def aot_library_path() -> str:
    """Absolute path of ``libmsaccum_aot.so`` (installed next to the ``_C`` extension)."""
    path = os.path.join(os.path.dirname(os.path.abspath(_C.__file__)), "libmsaccum_aot.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mindspore_accum's AOT kernel library is missing at {path}; reinstall the package")
    return path


def _one_float(*_args):
    return (1,)


def _float32(*_args):
    import mindspore as ms

    return ms.float32


def custom_op(entry: str, out_shape=_one_float, out_dtype=_float32):
    """A ``mindspore.ops.Custom`` AOT primitive over ``entry`` (e.g. ``"MsAccumMomentumUpdate"``).

    The ``Cuda`` variant of the entry point is used when the device target is GPU. The in-place
    ops have one placeholder output of shape (1,) (the defaults): keep it alive with
    ``ops.depend``. The op is declared a memory side effect, so GRAPH mode orders it with the
    reads and writes of its Parameters.
    """
    import mindspore as ms
    from mindspore import ops

    target = ms.get_context("device_target")
    if target == "GPU":
        if not _C.build_info()["cuda"]:
            raise RuntimeError("the device target is GPU but mindspore_accum was built without CUDA; "
                               "reinstall it on a machine with nvcc (MSACCUM_CUDA=ON)")
        entry += "Cuda"
    elif target != "CPU":
        raise RuntimeError(f"mindspore_accum has kernels for CPU and GPU, not for device target {target!r}")
    library = aot_library_path()
    try:
        op = ops.Custom(f"{library}:{entry}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")
    except TypeError as err:
        whitelist = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
        if whitelist:
            raise TypeError(
                f"MindSpore refused mindspore_accum's kernel library {library} because MS_CUSTOM_AOT_WHITE_LIST="
                f"{whitelist!r} does not contain it. Add {os.path.dirname(library)!r} to that variable (or unset "
                f"it) before starting Python.") from err
        raise
    # The kernels write their inputs in place. Declared as memory side effects, the ops are kept
    # in order with every other read and write of those Parameters (auto-monad) and are never
    # pruned; without it GRAPH mode reuses a load of a Parameter taken before the op wrote it.
    return _compat.mark_side_effect_mem(op)


def sum_of_squares_op():
    """A ``mindspore.ops.Custom`` AOT primitive: ``op(*tensors)`` returns ``(total, workspace)``,
    ``total`` of shape (1,) float32 = the sum of squares of every element (as
    :func:`sum_of_squares`), ``workspace`` float64 scratch of the GPU kernel (ignore it)."""
    import mindspore as ms

    target = ms.get_context("device_target")

    def shapes(*input_shapes):
        numel = [int(np.prod(shape, dtype=np.int64)) for shape in input_shapes]
        return (1,), (_C.sum_of_squares_workspace(numel, "GPU" if target == "GPU" else "CPU"),)

    return custom_op("MsAccumSumSquares", out_shape=shapes, out_dtype=lambda *_: (ms.float32, ms.float64))
