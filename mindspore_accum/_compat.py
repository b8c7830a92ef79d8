"""Every private MindSpore API the package touches, behind one small function each."""
from __future__ import annotations


def reset_pynative_grad() -> None:
    """Clears PyNative's grad executor after an exception inside a backward pass (otherwise the
    next graph compiled in the process inherits the half-built grad graph)."""
    try:
        from mindspore.graph.api import _pynative_executor
    except ImportError:  # MindSpore < 2.9
        from mindspore.common.api import _pynative_executor
    _pynative_executor.clear_res()
