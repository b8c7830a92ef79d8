"""Type stub of the compiled extension (csrc/frontends/python_bindings.cpp)."""
from typing import List, Optional, Sequence, TypedDict, Union

import numpy as np

class BuildInfo(TypedDict):
    version: str
    cuda: bool
    cuda_architectures: str
    cuda_runtime: Optional[str]
    vector_isa: str
    num_threads: int
    compiler: str

def accumulate(
    acc: Sequence[np.ndarray], grad: Sequence[np.ndarray], scale: float, *, overwrite: bool = False
) -> None: ...
def momentum_update(
    param: Sequence[np.ndarray],
    moment: Sequence[np.ndarray],
    acc: Optional[Sequence[np.ndarray]],
    grad: Optional[Sequence[np.ndarray]],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float], np.ndarray] = 0.0,
    nesterov: bool = False,
) -> None: ...
def adamw_update(
    param: Sequence[np.ndarray],
    exp_avg: Sequence[np.ndarray],
    exp_avg_sq: Sequence[np.ndarray],
    acc: Optional[Sequence[np.ndarray]],
    grad: Optional[Sequence[np.ndarray]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Union[float, Sequence[float], np.ndarray],
    step: int,
    grad_scale: float,
    bias_correction: bool,
) -> None: ...

def lamb_update(
    param: Sequence[np.ndarray],
    exp_avg: Sequence[np.ndarray],
    exp_avg_sq: Sequence[np.ndarray],
    acc: Optional[Sequence[np.ndarray]],
    grad: Optional[Sequence[np.ndarray]],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: Union[float, Sequence[float], np.ndarray],
    step: int,
    grad_scale: float,
) -> List[float]: ...
def lars_update(
    param: Sequence[np.ndarray],
    moment: Sequence[np.ndarray],
    acc: Optional[Sequence[np.ndarray]],
    grad: Optional[Sequence[np.ndarray]],
    *,
    lr: float,
    momentum: float,
    grad_scale: float,
    weight_decay: Union[float, Sequence[float], np.ndarray] = 0.0,
    coefficient: float = 0.001,
    epsilon: float = 1e-5,
    lars: Union[bool, Sequence[bool]] = True,
) -> List[float]: ...

# Deprecated aliases (the same functions), kept for one release: the window-end kernels are updates.
momentum_flush = momentum_update
adamw_flush = adamw_update

def sum_of_squares(tensors: Sequence[np.ndarray]) -> float: ...
def sum_of_squares_workspace(numel: Sequence[int], device: str) -> int: ...
def axpy_ceiling(a: Sequence[np.ndarray], b: Sequence[np.ndarray], s: float) -> None: ...
def build_info() -> BuildInfo: ...
def num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def set_vector_isa(isa: str) -> None: ...
def _pool_workers() -> int: ...
def _kernel_calls(isa: str) -> int: ...
