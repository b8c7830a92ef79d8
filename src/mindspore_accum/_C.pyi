"""Type stub of the compiled extension (csrc/frontends/python_bindings.cpp)."""

from typing import Any, List, Optional, Protocol, Sequence, Tuple, TypedDict, Union

import numpy as np

class _DLPackArray(Protocol):
    def __dlpack__(self, *, stream: Any = None) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...

# NumPy arrays, or any DLPack exporter (PyTorch, CuPy, JAX); all of one call on one device.
_Array = Union[np.ndarray, _DLPackArray]
# CUDA tensors only: None (legacy default stream), a cudaStream_t as an int, or an object with
# an int `cuda_stream` or `ptr` attribute.
_Stream = Optional[Any]

class BuildInfo(TypedDict):
    version: str
    cuda: bool
    cuda_architectures: str
    cuda_runtime: Optional[str]
    vector_isa: str
    num_threads: int
    compiler: str

def accumulate(
    acc: Sequence[_Array], grad: Sequence[_Array], scale: float, *, overwrite: bool = False, stream: _Stream = None
) -> None: ...
def momentum_update(
    param: Sequence[_Array],
    moment: Sequence[_Array],
    acc: Optional[Sequence[_Array]],
    grad: Optional[Sequence[_Array]],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float], np.ndarray] = 0.0,
    nesterov: bool = False,
    stream: _Stream = None,
) -> None: ...
def adamw_update(
    param: Sequence[_Array],
    exp_avg: Sequence[_Array],
    exp_avg_sq: Sequence[_Array],
    acc: Optional[Sequence[_Array]],
    grad: Optional[Sequence[_Array]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Union[float, Sequence[float], np.ndarray],
    step: int,
    grad_scale: float,
    bias_correction: bool,
    stream: _Stream = None,
) -> None: ...

# LAMB and LARS: CPU arrays (NumPy or DLPack); on CUDA they run through the AOT ops only.
def lamb_update(
    param: Sequence[_Array],
    exp_avg: Sequence[_Array],
    exp_avg_sq: Sequence[_Array],
    acc: Optional[Sequence[_Array]],
    grad: Optional[Sequence[_Array]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Union[float, Sequence[float], np.ndarray],
    step: int,
    grad_scale: float,
    stream: _Stream = None,
) -> List[float]: ...
def lars_update(
    param: Sequence[_Array],
    moment: Sequence[_Array],
    acc: Optional[Sequence[_Array]],
    grad: Optional[Sequence[_Array]],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float], np.ndarray] = 0.0,
    coefficient: float = 0.001,
    epsilon: float = 1e-5,
    lars: Union[bool, Sequence[bool]] = True,
    stream: _Stream = None,
) -> List[float]: ...

# Deprecated aliases (the same functions), kept for one release: the window-end kernels are updates.
momentum_flush = momentum_update
adamw_flush = adamw_update

def sum_of_squares(tensors: Sequence[_Array], *, stream: _Stream = None) -> float: ...
def sum_of_squares_workspace(numel: Sequence[int], device: str) -> int: ...
def axpy_ceiling(a: Sequence[_Array], b: Sequence[_Array], s: float) -> None: ...
def build_info() -> BuildInfo: ...
def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def set_vector_isa(isa: str) -> None: ...
def _pool_workers() -> int: ...
def _kernel_calls(isa: str) -> int: ...
