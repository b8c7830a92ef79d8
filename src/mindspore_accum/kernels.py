"""The kernels as an array API: typed wrappers over the ``_C`` extension (no MindSpore needed).

Each function updates C-contiguous arrays in place, in one call over a list of tensors, with the
per-element math of ``csrc/accum_math.h`` -- the same kernels that
:class:`~mindspore_accum.GradAccumCell` runs as MindSpore operators through the AOT library
(``mindspore_accum.backends.kernel``). Arguments are checked before anything is written.

The arrays are NumPy arrays or any objects exporting DLPack (``__dlpack__`` and
``__dlpack_device__``: PyTorch, CuPy, JAX, NumPy): CPU tensors run the multi-threaded CPU kernels
on their own storage; CUDA tensors run the CUDA kernels, with no copy, on ``stream`` (``None``:
the legacy default stream, which is PyTorch's and CuPy's current stream unless you changed it;
otherwise a ``cudaStream_t`` as an int, or a stream object with ``cuda_stream``/``ptr``). CUDA
calls are asynchronous (except :func:`sum_of_squares`, which returns a number). All tensors of
one call must be on one device. See docs/kernels.md, "Any array library: DLPack".

The functions that end an accumulation window are *updates* (:func:`momentum_update`,
:func:`adamw_update`); their 0.2 names ``momentum_flush``/``adamw_flush`` remain as deprecated
aliases for one release.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from . import _C


class SupportsDLPack(Protocol):
    """An array exporting DLPack: PyTorch, CuPy and JAX arrays, NumPy arrays."""

    def __dlpack__(self, *, stream: Any = None) -> Any: ...

    def __dlpack_device__(self) -> Tuple[int, int]: ...


ArrayList = Sequence[Union[np.ndarray, SupportsDLPack]]
# None, a cudaStream_t as an int (1: legacy default stream, 2: per-thread default stream), or a
# stream object with an int ``cuda_stream`` (PyTorch) or ``ptr`` (CuPy) attribute.
Stream = Optional[Any]

__all__ = [
    "accumulate",
    "momentum_update",
    "adamw_update",
    "lamb_update",
    "lars_update",
    "sum_of_squares",
    "aot_library_path",
    "build_info",
    "momentum_flush",
    "adamw_flush",
]


def build_info() -> dict:
    """How the extension was built: version, CUDA (and architectures), CPU vector ISA, threads."""
    return _C.build_info()


def accumulate(
    acc: ArrayList, grad: ArrayList, scale: float = 1.0, *, overwrite: bool = False, stream: Stream = None
) -> None:
    """``acc[i] += scale * grad[i]`` for every i, in place, in one multi-threaded call.

    With ``overwrite=True``: ``acc[i] = scale * grad[i]``, the accumulators' previous content is
    never read (it may hold anything, NaN included): the first micro-batch of a window, which then
    needs no zeroed accumulators (8 instead of 12 bytes per element).

    ``acc`` arrays are float32; ``grad`` arrays float32, float16 or bfloat16 (widened exactly).
    NumPy or DLPack arrays, all on one device; ``stream`` only for CUDA tensors (module docstring).
    Raises ``TypeError``/``ValueError`` naming the offending argument before anything is written.
    """
    _C.accumulate(acc, grad, scale, overwrite=overwrite, stream=stream)


def momentum_update(
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
    stream: Stream = None,
) -> None:
    """The fused end of an accumulation window with momentum SGD (``nn.Momentum``), per element::

        g = (acc + grad) * grad_scale + weight_decay * param
        v = momentum * v + g                                 # moment
        param -= lr * (g + momentum * v) if nesterov else lr * v
        acc = 0                                              # when acc is given

    ``acc`` and ``grad`` may each be None (the window's sum is read from whichever exist);
    ``weight_decay`` is one float or one per tensor. (This function zeroes ``acc`` after reading
    it; :class:`~mindspore_accum.GradAccumCell` does not need that -- the first micro-batch of
    its next window overwrites its accumulators -- and its AOT update passes them as ``grad``.)
    ``param``, ``moment`` and ``acc`` are float32; ``grad`` float32, float16 or bfloat16; NumPy or
    DLPack arrays on one device, ``stream`` for CUDA tensors (module docstring).
    Raises ``TypeError``/``ValueError`` naming the argument and index before anything is written.
    """
    _C.momentum_update(
        param,
        moment,
        acc,
        grad,
        lr=lr,
        momentum=momentum,
        grad_scale=grad_scale,
        weight_decay=weight_decay,
        nesterov=nesterov,
        stream=stream,
    )


def adamw_update(
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
    stream: Stream = None,
) -> None:
    """The fused end of an accumulation window with AdamW, per element (float32)::

        g = (acc + grad) * grad_scale
        m = beta1 * m + (1 - beta1) * g                   # exp_avg
        v = beta2 * v + (1 - beta2) * g * g               # exp_avg_sq
        u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
        param = param - lr * weight_decay * param - lr * u
        acc = 0                                           # when acc is given (as momentum_update)

    ``bias_correction=True``: ``bc1 = 1 - beta1**step``, ``bc2 = 1 - beta2**step`` (computed in
    double, rounded to float32), as ``torch.optim.AdamW`` / ``mindspore.mint.optim.AdamW``;
    ``False``: both 1, as ``mindspore.nn.AdamWeightDecay``. The decay is decoupled and applied to
    the parameter before this update. ``step`` counts updates from 1.

    ``param``, ``exp_avg``, ``exp_avg_sq`` and ``acc`` are float32 arrays; ``grad`` float32,
    float16 or bfloat16; ``acc`` and ``grad`` may each be None. ``weight_decay`` is one float or
    one per tensor. Checked before anything is written: finite ``lr >= 0``, ``0 <= beta < 1``,
    ``eps > 0``, finite ``grad_scale`` and weight decays, ``step >= 1``, and the arrays as in
    :func:`momentum_update` (``TypeError``/``ValueError`` naming the argument and index).
    NumPy or DLPack arrays on one device, ``stream`` for CUDA tensors (module docstring).
    """
    _C.adamw_update(
        param,
        exp_avg,
        exp_avg_sq,
        acc,
        grad,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        step=step,
        grad_scale=grad_scale,
        bias_correction=bias_correction,
        stream=stream,
    )


def lamb_update(
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
) -> List[float]:
    """The fused end of an accumulation window with LAMB (You et al. 2019), per tensor::

        g = (acc + grad) * grad_scale
        m = beta1 * m + (1 - beta1) * g                   # exp_avg
        v = beta2 * v + (1 - beta2) * g * g               # exp_avg_sq
        u = (m / (1 - beta1**step)) / (sqrt(v / (1 - beta2**step)) + eps) + weight_decay * param
        r = ||param|| / ||u||   (1 if either norm is 0)
        param -= lr * r * u
        acc = 0                                           # when acc is given

    Two passes: the first writes the moments and sums param^2 and u^2 per tensor, the second
    recomputes u and writes param (40 bytes per element with float32 gradients). Returns the
    ratios r, one per tensor. Arguments as :func:`adamw_update` (checked the same way, before
    anything is written); the bias corrections are always applied.
    """
    return _C.lamb_update(
        param,
        exp_avg,
        exp_avg_sq,
        acc,
        grad,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        step=step,
        grad_scale=grad_scale,
    )


def lars_update(
    param: ArrayList,
    moment: ArrayList,
    acc: Optional[ArrayList],
    grad: Optional[ArrayList],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float]] = 0.0,
    coefficient: float = 0.001,
    epsilon: float = 1e-5,
    lars: Union[bool, Sequence[bool]] = True,
) -> List[float]:
    """The fused end of an accumulation window with LARS around momentum SGD (``nn.LARS`` over
    ``nn.Momentum``; You et al. 2017), per tensor::

        g = (acc + grad) * grad_scale
        trust = coefficient * ||param|| / (||g|| + weight_decay * ||param|| + epsilon)
                (1 if either norm is 0)
        d = trust * (g + weight_decay * param)    where lars holds, else d = g (no decay)
        v = momentum * v + d                      # moment
        param -= lr * v
        acc = 0                                   # when acc is given

    Two passes: the first reads param and the gradient and sums their squares per tensor
    (tensors without ``lars`` skip it), the second is the momentum step (28 bytes per element
    with float32 gradients). ``lars`` and ``weight_decay`` are one value or one per tensor.
    Returns the trust ratios (1 where ``lars`` is False). Checked before anything is written:
    finite ``lr``, ``momentum``, ``coefficient``, ``epsilon`` >= 0, finite ``grad_scale`` and
    weight decays, and the arrays as in :func:`momentum_update`.
    """
    return _C.lars_update(
        param,
        moment,
        acc,
        grad,
        lr=lr,
        momentum=momentum,
        grad_scale=grad_scale,
        weight_decay=weight_decay,
        coefficient=coefficient,
        epsilon=epsilon,
        lars=lars,
    )


def _deprecated_alias(new, old_name: str):
    @functools.wraps(new)
    def alias(*args, **kwargs):
        warnings.warn(
            f"mindspore_accum.kernels.{old_name} is deprecated and will be removed in the next release; "
            f"use {new.__name__} (same arguments)",
            DeprecationWarning,
            stacklevel=2,
        )
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{new.__name__}` (the 0.2 name), kept for one release."
    return alias


momentum_flush = _deprecated_alias(momentum_update, "momentum_flush")
adamw_flush = _deprecated_alias(adamw_update, "adamw_flush")


def sum_of_squares(tensors: ArrayList, *, stream: Stream = None) -> float:
    """``sum(x * x)`` over every element of every array, in one multi-threaded pass.

    Arrays may be float32, float16 or bfloat16 (widened exactly); squares are float32, partial
    sums double. The result is NaN or inf when an element is, or when a square overflows
    float32 (|x| > ~1.8e19): the window-end check for non-finite gradients and the global norm
    for clipping. Raises ``TypeError``/``ValueError`` naming the offending array. NumPy or DLPack
    arrays on one device; on CUDA (``stream`` as in the module docstring) the partial sums are
    double too but the result is float32, and the call waits for it.
    """
    return _C.sum_of_squares(tensors, stream=stream)


def aot_library_path() -> str:
    """Absolute path of ``libmsaccum_aot.so`` (installed next to the ``_C`` extension)."""
    path = os.path.join(os.path.dirname(os.path.abspath(_C.__file__)), "libmsaccum_aot.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mindspore_accum's AOT kernel library is missing at {path}; reinstall the package")
    return path
