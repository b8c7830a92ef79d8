"""The backends: which one runs a window's operations, and a factory for it.

A backend does the three device-side operations of a window -- accumulate a micro-batch, the
sum of squares of the window's gradient (the non-finite check and the clip norm), and the fused
optimizers' update -- with the same math, state and checkpoints either way:

* ``kernels`` (:mod:`.kernel`): our multi-tensor kernels, the AOT operators of
  ``libmsaccum_aot.so`` (CPU; GPU when the package was built with CUDA), one launch each.
* ``native`` (:mod:`.native`): the same math written with MindSpore operators -- every device
  MindSpore supports (Ascend included), not fused.

``auto`` picks ``kernels`` where they serve the device and ``native`` elsewhere, and says why.
This module does not import MindSpore (``python -m mindspore_accum`` reports the choice without
it); :func:`make` imports the backend it builds.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple

BACKENDS = ("auto", "kernels", "native")

__all__ = ["BACKENDS", "kernels_unavailable_reason", "choose_backend", "make"]

_warned = set()


def kernels_unavailable_reason(device_target: str) -> Optional[str]:
    """None when our kernels can run on ``device_target``, else why not (one sentence)."""
    try:
        from .. import _C
    except ImportError as err:  # a broken or missing build
        return f"the compiled extension mindspore_accum._C cannot be imported ({err})"
    if device_target == "GPU" and not _C.build_info()["cuda"]:
        return "this build of mindspore_accum has no CUDA kernels (it was built without nvcc)"
    if device_target not in ("CPU", "GPU"):
        return f"our kernels serve CPU and GPU, not {device_target}"
    library = os.path.join(os.path.dirname(os.path.abspath(_C.__file__)), "libmsaccum_aot.so")
    if not os.path.isfile(library):
        return f"the AOT kernel library {library} is missing"
    whitelist = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
    if whitelist and not os.path.realpath(library).startswith(os.path.realpath(whitelist) + os.sep):
        return (
            f"MS_CUSTOM_AOT_WHITE_LIST={whitelist!r} does not contain {os.path.dirname(library)!r}, so "
            "MindSpore refuses our AOT kernel library"
        )
    return None


def choose_backend(
    requested: str = "auto", device_target: Optional[str] = None, *, owner: str = "mindspore_accum"
) -> Tuple[str, str]:
    """``(backend, reason)`` for ``requested`` in ``auto|kernels|native`` on ``device_target``
    (default: MindSpore's current target). ``kernels`` where they cannot run raises RuntimeError;
    ``auto`` says once per (owner, device, choice) which backend it chose and why."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {requested!r}")
    if device_target is None:
        import mindspore as ms

        device_target = ms.get_context("device_target")
    why_not = kernels_unavailable_reason(device_target)
    if requested == "kernels":
        if why_not is not None:
            raise RuntimeError(
                f"{owner}: backend='kernels' cannot run here: {why_not}. "
                "Use backend='native' (MindSpore's own operators) or 'auto'."
            )
        return "kernels", f"requested; our fused kernels serve {device_target}"
    if requested == "native":
        return "native", "requested"
    if why_not is None:
        return "kernels", f"our fused kernels serve {device_target}"
    reason = f"{why_not}; using MindSpore's own operators (same math and state, not fused)"
    key = (owner, device_target, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"{owner}: backend='auto' chose 'native': {reason}", RuntimeWarning, stacklevel=3)
    return "native", reason


def make(backend: str):
    """The window operations of ``backend`` (``"kernels"`` or ``"native"``, as chosen by
    :func:`choose_backend`): a :class:`~.kernel.KernelBackend` or :class:`~.native.NativeBackend`
    Cell with ``accumulate(accumulators, grads, weight, first)`` and ``sum_of_squares(tensors)``."""
    if backend == "kernels":
        from .kernel import KernelBackend

        return KernelBackend()
    if backend == "native":
        from .native import NativeBackend

        return NativeBackend()
    raise ValueError(f"make() takes a chosen backend, 'kernels' or 'native', got {backend!r}")
