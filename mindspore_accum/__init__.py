"""mindspore_accum: fused gradient accumulation for MindSpore 2.x."""
from . import _C
from ._C import build_info

__version__ = _C.build_info()["version"]
__all__ = ["build_info", "__version__"]
