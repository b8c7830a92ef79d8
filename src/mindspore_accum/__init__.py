"""mindspore_accum: fused gradient accumulation for MindSpore 2.x.

The kernels (``mindspore_accum.kernels`` / ``_C``) need only NumPy; ``GradAccumCell``,
``FusedMomentum``, ``FusedAdamW``, ``FlushAtEpochEnd`` and the checkpoint helpers import MindSpore when first used.
"""
try:
    from . import _C
    from .kernels import accumulate, adamw_flush, build_info, momentum_flush, sum_of_squares
except ImportError as _err:  # a broken build: `python -m mindspore_accum` still reports, the kernels raise
    _C_IMPORT_ERROR: "ImportError | None" = _err
    from importlib import metadata as _metadata

    try:
        __version__ = _metadata.version("mindspore_accum")
    except _metadata.PackageNotFoundError:
        __version__ = "unknown"
else:
    _C_IMPORT_ERROR = None
    __version__ = _C.build_info()["version"]
__all__ = ["GradAccumCell", "FusedMomentum", "FusedAdamW", "FlushAtEpochEnd", "save_checkpoint_atomic",
           "load_checkpoint_verified", "accumulate", "momentum_flush", "adamw_flush", "sum_of_squares", "build_info",
           "__version__"]

_LAZY = {"GradAccumCell": "cell", "FlushAtEpochEnd": "cell", "FusedMomentum": "optim", "FusedAdamW": "optim",
         "save_checkpoint_atomic": "checkpoint", "load_checkpoint_verified": "checkpoint"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if _C_IMPORT_ERROR is not None and name in ("_C", "accumulate", "build_info", "momentum_flush", "sum_of_squares"):
        raise ImportError(str(_C_IMPORT_ERROR)) from _C_IMPORT_ERROR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
