"""Crash-safe checkpoints: a checkpoint file is either the previous complete one or the new
complete one, never a partial write.

``mindspore.save_checkpoint(obj, path)`` deletes an existing ``path`` before it writes the new
file, so a process killed while saving can leave no checkpoint at all, and a reader racing the
writer can see a partial file. :func:`save_checkpoint_atomic` writes to a temporary name in the
same directory, flushes it to disk, and renames it over ``path`` with ``os.replace`` (atomic on
POSIX and Windows within one file system). The file carries MindSpore's CRC-32 trailer
(``crc_check=True``), which :func:`load_checkpoint_verified` requires and checks, so a file
damaged in any other way (truncated, overwritten) is rejected with ``ValueError`` instead of
being loaded. (``mindspore.load_checkpoint(..., crc_check=True)`` alone only *warns* when the
trailer is missing -- which is exactly what a truncated file looks like -- and then loads the
parameters that precede the cut.)
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import mindspore as ms

from . import _compat

__all__ = ["save_checkpoint_atomic", "load_checkpoint_verified"]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint_atomic(
    save_obj: Any, ckpt_file_name: str, *, append_dict: Optional[dict] = None, fsync: bool = True, **kwargs
) -> str:
    """``mindspore.save_checkpoint`` made atomic: the file at ``ckpt_file_name`` is replaced in
    one step by a complete new checkpoint.

    Args:
        save_obj: what ``mindspore.save_checkpoint`` accepts: a Cell (e.g. a ``GradAccumCell``,
            which includes its accumulators, micro-step counter and the optimizer state), a list
            of Parameters or of ``{"name": ..., "data": ...}`` dicts, or a dict of them.
        ckpt_file_name: the final path (``.ckpt`` is appended when missing, as MindSpore does).
        append_dict: extra values stored with the checkpoint (e.g. the epoch or micro-step).
        fsync: flush the file and its directory to disk before and after the rename (durability
            across power loss; a killed process needs only the rename).
        **kwargs: passed on to ``mindspore.save_checkpoint`` (``crc_check`` defaults to True;
            ``async_save`` is not allowed: the rename needs the finished file).

    Returns:
        The path written.
    """
    if kwargs.get("async_save"):
        raise ValueError("save_checkpoint_atomic cannot save asynchronously (the rename needs the finished file)")
    kwargs.setdefault("crc_check", True)
    path = os.fspath(ckpt_file_name)
    if not path.endswith(".ckpt"):
        path += ".ckpt"
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # A unique temporary name in the same directory (same file system: the rename is atomic). It
    # ends in .ckpt, else MindSpore would append the suffix itself.
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path)[: -len(".ckpt")] + ".", suffix=".partial.ckpt", dir=directory
    )
    os.close(fd)
    try:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, **kwargs)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(directory)
    return path


def load_checkpoint_verified(ckpt_file_name: str, net=None, **kwargs) -> dict:
    """``mindspore.load_checkpoint`` that accepts only complete, undamaged files written with a
    CRC (as :func:`save_checkpoint_atomic` writes them): a file without the CRC trailer (e.g.
    truncated) or whose CRC does not match raises ``ValueError``; ``FileNotFoundError`` if absent.
    Other arguments as ``mindspore.load_checkpoint``.

    Unlike ``mindspore.load_checkpoint`` in MindSpore 2.10, it does not refuse a file smaller than
    the memory the system can give (``MemAvailable``) because the page cache fills the rest;
    a file larger than that raises ``ValueError`` saying what to do."""
    path = os.fspath(ckpt_file_name)
    size, stored_crc = _compat.checkpoint_crc_trailer(path)
    if stored_crc is None:
        raise ValueError(
            f"checkpoint {path!r} ({size} bytes) has no CRC trailer: it is truncated or was not "
            "written with crc_check=True (save_checkpoint_atomic writes it)"
        )
    kwargs["crc_check"] = True
    # Not ms.load_checkpoint: MindSpore 2.10 refuses files it could load when the page cache is full.
    return _compat.load_checkpoint(path, net=net, **kwargs)
