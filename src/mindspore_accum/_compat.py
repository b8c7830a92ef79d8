"""Every private MindSpore API (and undocumented behaviour) the package relies on, behind one small
function each, with a fallback where a release lacks it.

The rest of the package calls only these functions, never ``mindspore.*._private`` names, so a
MindSpore release that moves or drops one of them breaks one function here, and
``tests/cell/test_compat.py`` -- which checks each function against the installed MindSpore's real
behaviour -- says which. Supported releases: see README, "Supported MindSpore versions".

Importing this module does not import MindSpore; each function does, when called.
"""

from __future__ import annotations

import binascii
import functools
import inspect
import os
import re
import threading
from typing import Callable, Optional, Tuple

__all__ = [
    "mindspore_version",
    "opt_init_args_register",
    "optimizer_parameters",
    "CKPT_CRC_MARKER",
    "CKPT_CRC_BYTES",
    "checkpoint_crc_trailer",
    "checkpoint_payload_crc",
    "mem_available_bytes",
    "load_checkpoint",
    "pynative_sync",
    "reset_pynative_grad",
    "jit_executor_class",
    "mark_side_effect_mem",
]


def mindspore_version() -> Optional[Tuple[int, ...]]:
    """The installed MindSpore's release as a tuple, e.g. ``(2, 10, 0)``; None when it is not
    installed. Reads the package metadata (does not import MindSpore)."""
    from importlib import metadata

    try:
        text = metadata.version("mindspore")
    except metadata.PackageNotFoundError:
        return None
    match = re.match(r"\d+(\.\d+)*", text)  # "2.10.0" -> (2, 10, 0); "2.8.0rc1" -> (2, 8, 0)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


# ---- optimizers: the decorator that records an optimizer's constructor arguments ----


def _opt_init_args_register_fallback(fn: Callable) -> Callable:
    """What ``mindspore.nn.optim.optimizer.opt_init_args_register`` does in 2.7-2.10: record the
    constructor's arguments on the optimizer (``init_params``, ``init_learning_rate``,
    ``init_args``), which e.g. ``mindspore.boost`` and optimizer cloning read."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def deco(self, *args, **kwargs):
        from mindspore import Tensor, nn

        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        arguments.pop("self")
        if "params" in arguments:
            self.init_params = {"params": arguments.pop("params")}
        if "optimizer" in arguments:
            self.init_params = {"params": arguments.pop("optimizer").init_params["params"]}
        if "learning_rate" in arguments:
            learning_rate = arguments.pop("learning_rate")
            if isinstance(learning_rate, Tensor):
                learning_rate = learning_rate.asnumpy().tolist()
            self.init_learning_rate = None if isinstance(learning_rate, nn.Cell) else learning_rate
        self.init_args = arguments
        fn(self, *args, **kwargs)

    return deco


def opt_init_args_register(fn: Callable) -> Callable:
    """Decorator for an ``nn.Optimizer`` subclass's ``__init__``, as MindSpore's own optimizers use.

    2.7-2.10: ``mindspore.nn.optim.optimizer.opt_init_args_register`` (not exported). Fallback:
    the same recording, reimplemented."""
    try:
        from mindspore.nn.optim.optimizer import opt_init_args_register as register
    except ImportError:
        register = _opt_init_args_register_fallback
    return register(fn)


def optimizer_parameters(optimizer):
    """The Parameters an ``nn.Optimizer`` updates, in the order its per-parameter tuples
    (``decay_flags``, group learning rates and weight decays) follow.

    2.7-2.10: ``optimizer._parameters`` (private; 2.7-2.8 may hold flattened parameters there while
    ``optimizer.parameters`` keeps the originals). Fallback: the public ``optimizer.parameters``."""
    parameters = getattr(optimizer, "_parameters", None)
    if parameters is None:
        parameters = optimizer.parameters
    return parameters


# ---- checkpoints: MindSpore's CRC-32 trailer ----

# ``save_checkpoint(..., crc_check=True)`` (.ckpt format, unencrypted) appends
# b"crc_num" + the CRC-32 of every byte before the marker as a 10-byte big-endian integer;
# ``load_checkpoint(..., crc_check=True)`` checks it (2.7-2.10; tests/cell/test_compat.py re-checks).
CKPT_CRC_MARKER = b"crc_num"
CKPT_CRC_BYTES = 10
_TRAILER = len(CKPT_CRC_MARKER) + CKPT_CRC_BYTES


def checkpoint_crc_trailer(path: str) -> Tuple[int, Optional[int]]:
    """``(file size, stored CRC-32)`` of a .ckpt file; the CRC is None when the file has no
    trailer (written without ``crc_check``, or truncated). Reads only the end of the file."""
    with open(os.fspath(path), "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < _TRAILER:
            return size, None
        f.seek(size - _TRAILER)
        tail = f.read(_TRAILER)
    if tail[: len(CKPT_CRC_MARKER)] != CKPT_CRC_MARKER:
        return size, None
    return size, int.from_bytes(tail[len(CKPT_CRC_MARKER) :], byteorder="big")


def checkpoint_payload_crc(path: str) -> int:
    """CRC-32 of the bytes before the trailer, as ``load_checkpoint(crc_check=True)`` computes it."""
    size, stored = checkpoint_crc_trailer(path)
    end = size - _TRAILER if stored is not None else size
    crc = 0
    with open(os.fspath(path), "rb") as f:
        left = end
        while left:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            crc = binascii.crc32(chunk, crc)
            left -= len(chunk)
    return crc


# ---- checkpoints: MindSpore's memory check before reading a .ckpt ----

# MindSpore 2.10 (not 2.7) refuses a .ckpt larger than "available memory", which
# ``serialization._get_available_memory`` computes as SC_AVPHYS_PAGES x page size: MemFree, which
# counts the page cache as used, so a machine with a large page cache refuses files it can load
# (a 282 MB checkpoint on a 24 GiB machine, "available memory 227328000 bytes"). The memory the
# kernel can actually give is MemAvailable.
_SIZE_ERROR = "_CheckpointProtobufSizeError"  # mindspore.train.serialization, 2.10
# Serialises the retries: each patches a module global of MindSpore's for its one call.
_ESTIMATE_LOCK = threading.Lock()


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """The kernel's estimate of the memory available to start new work without swapping
    (``MemAvailable`` in ``/proc/meminfo``, Linux >= 3.14), in bytes; None when it cannot be read."""
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):  # "MemAvailable:   12345678 kB"
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def load_checkpoint(ckpt_file_name, **kwargs):
    """``mindspore.load_checkpoint(ckpt_file_name, **kwargs)``, without MindSpore 2.10's false
    "exceeds current available memory" refusals (see the comment above).

    When MindSpore refuses the file for its size, and the file is smaller than ``MemAvailable``,
    the load is retried once with MindSpore's estimate replaced by ``MemAvailable`` for that call.
    A file larger than ``MemAvailable`` (or a refusal when ``MemAvailable`` cannot be read)
    raises MindSpore's error, with what to do in its message.

    2.10: ``mindspore.train.serialization._CheckpointProtobufSizeError`` and
    ``_get_available_memory`` (private). 2.7 has neither, and no check: a plain load.
    ``tests/cell/test_checkpoint_memory.py`` checks it against the installed MindSpore."""
    import mindspore as ms
    from mindspore.train import serialization

    size_error = getattr(serialization, _SIZE_ERROR, None)
    if size_error is None or not hasattr(serialization, "_get_available_memory"):
        return ms.load_checkpoint(ckpt_file_name, **kwargs)
    try:
        return ms.load_checkpoint(ckpt_file_name, **kwargs)
    except size_error as refusal:
        path = os.fspath(ckpt_file_name)
        available = mem_available_bytes()
        if available is None:
            raise
        size = os.path.getsize(path)
        if size >= available:
            raise size_error(
                f"checkpoint {path!r} ({size} bytes) is larger than the memory available "
                f"(MemAvailable: {available} bytes), and the .ckpt format is read whole into memory: "
                "load it on a machine with more free memory, or save checkpoints as safetensors "
                "(format='safetensors'), which are not read whole"
            ) from refusal
        # The patch replaces a module global, so a load in another thread during this call sees
        # the MemAvailable estimate too (the better one); the lock keeps two retries from
        # restoring each other's patch.
        with _ESTIMATE_LOCK:
            original = serialization._get_available_memory
            serialization._get_available_memory = lambda: available
            try:
                return ms.load_checkpoint(ckpt_file_name, **kwargs)
            finally:
                serialization._get_available_memory = original


# ---- PyNative: wait for queued operators ----


def pynative_sync() -> None:
    """Wait until every operator PyNative has queued has run. (``mindspore.runtime.synchronize()``
    does not wait on CPU: it logs "CPU device is not supported" and returns.)

    2.7-2.10: ``mindspore.common.api._pynative_executor.sync()`` (private). Fallback:
    ``asnumpy()`` of the output of an operator queued last, which waits for it, so for every
    operator before it. (``asnumpy()`` of a tensor made from NumPy does not wait in 2.7.)"""
    try:
        sync = _pynative_executor().sync
    except (ImportError, AttributeError):
        sync = _sync_by_reading
    sync()


def _sync_by_reading() -> None:
    import mindspore as ms
    import numpy as np

    ms.ops.add(ms.Tensor(np.zeros(1, np.float32)), 0.0).asnumpy()


def _pynative_executor():
    try:
        from mindspore.graph.api import _pynative_executor  # 2.9-2.10
    except ImportError:
        from mindspore.common.api import _pynative_executor  # 2.7-2.8
    return _pynative_executor


def reset_pynative_grad() -> None:
    """Clears PyNative's grad executor after an exception inside a backward pass (otherwise the
    next graph compiled in the process inherits the half-built grad graph and fails to compile).

    2.7-2.10: ``_pynative_executor.clear_res()`` (private)."""
    _pynative_executor().clear_res()


# ---- the JIT executor (tests count the AllReduce nodes of compiled graphs through it) ----


def jit_executor_class():
    """The class that compiles and runs ``ms.jit`` functions (``compile(method_name, *args)``
    returns the phase; ``_graph_executor.get_func_graph_proto(phase, "anf_ir")`` the graph).

    2.9-2.10: ``mindspore.graph.api._JitExecutor`` (private). 2.7-2.8 (the fallback):
    ``mindspore.common.api._JitExecutor``."""
    try:
        from mindspore.graph.api import _JitExecutor
    except ImportError:
        from mindspore.common.api import _JitExecutor
    return _JitExecutor


# ---- primitives: declaring a memory side effect ----


def mark_side_effect_mem(primitive):
    """Declare that ``primitive`` (an ``ops.Custom`` that writes its inputs in place) has a memory
    side effect, so GRAPH mode keeps it, in order, with every read and write of those Parameters.

    2.7-2.10: the primitive attribute ``side_effect_mem`` (internal; MindSpore's own in-place
    primitives set it). Returns the primitive."""
    primitive.add_prim_attr("side_effect_mem", True)
    return primitive
