"""mindspore_accum: fused gradient accumulation for MindSpore 2.x.

The kernels (``mindspore_accum.kernels`` / ``_C``) need only NumPy; ``GradAccumCell``,
``GradAccumulator``, ``FusedMomentum``, ``FusedAdamW``, ``FusedLAMB``, ``FusedLARS``,
``FlushAtEpochEnd``, the large-batch schedules and the checkpoint helpers import MindSpore when first used.
"""

# The NumPy kernel API re-exported here. With a broken build (the compiled extension cannot be
# imported) the package still imports -- `python -m mindspore_accum` reports what is wrong -- and
# each of these names, and `_C`, raises that ImportError when used.
# The last two are deprecated aliases of the *_update names.
_KERNEL_NAMES = (
    "accumulate",
    "momentum_update",
    "adamw_update",
    "lamb_update",
    "lars_update",
    "sum_of_squares",
    "build_info",
    "momentum_flush",
    "adamw_flush",
)

try:
    from . import _C
    from . import kernels as _kernels
except ImportError as _err:  # a broken build
    _C_IMPORT_ERROR: "ImportError | None" = _err
    from importlib import metadata as _metadata

    try:
        __version__ = _metadata.version("mindspore_accum")
    except _metadata.PackageNotFoundError:
        __version__ = "unknown"
else:
    _C_IMPORT_ERROR = None
    globals().update({name: getattr(_kernels, name) for name in _KERNEL_NAMES})
    __version__ = _C.build_info()["version"]

_LAZY = {
    "GradAccumCell": "cell",
    "GradAccumulator": "accumulator",
    "FlushAtEpochEnd": "callbacks",
    "FusedMomentum": "optim",
    "FusedAdamW": "optim",
    "FusedLAMB": "optim",
    "FusedLARS": "optim",
    "WarmupLinearScaling": "large_batch",
    "linear_scaling_rule": "large_batch",
    "save_checkpoint_atomic": "checkpoint",
    "load_checkpoint_verified": "checkpoint",
    "consolidate_checkpoint": "sharding.checkpoint",
    "load_window_checkpoint": "sharding.checkpoint",
}

__all__ = [*_LAZY, *_KERNEL_NAMES, "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if _C_IMPORT_ERROR is not None and (name == "_C" or name in _KERNEL_NAMES):
        raise ImportError(str(_C_IMPORT_ERROR)) from _C_IMPORT_ERROR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
