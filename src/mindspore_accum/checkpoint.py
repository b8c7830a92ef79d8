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

A path ending in ``.safetensors`` is written and read in that format (``format="safetensors"``:
a header, then the raw tensors, which MindSpore reads tensor by tensor instead of parsing the
whole file in memory as it does a protobuf ``.ckpt``). Such a file has no CRC trailer: with
``crc_check=True`` MindSpore stores the CRC-32 of the names and data in the header's metadata
(``crc_num``) and checks it on load. safetensors holds numbers only: a string value (e.g. in
``append_dict``) raises ``ValueError`` before anything is written.
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
        ckpt_file_name: the final path (``.ckpt`` is appended when missing, as MindSpore does;
            a path ending in ``.safetensors``, or ``format="safetensors"``, writes safetensors).
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
    if path.endswith(".safetensors"):
        kwargs.setdefault("format", "safetensors")
    suffix = "." + kwargs.get("format", "ckpt")
    if not path.endswith(suffix):
        path += suffix
    if suffix == ".safetensors":
        _refuse_strings(save_obj, append_dict, path)
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    # A unique temporary name in the same directory (same file system: the rename is atomic). It
    # ends in the format's suffix, else MindSpore would append the suffix itself.
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path)[: -len(suffix)] + ".", suffix=".partial" + suffix, dir=directory
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


def _refuse_strings(save_obj, append_dict, path) -> None:
    """ValueError naming the string values of a checkpoint bound for safetensors, which holds
    numbers only (MindSpore would fail inside the safetensors library with 'Unknown dtype')."""
    entries = dict(append_dict or {})
    if isinstance(save_obj, dict):
        entries.update(save_obj)
    elif isinstance(save_obj, (list, tuple)):
        entries.update((e["name"], e["data"]) for e in save_obj if isinstance(e, dict) and "name" in e)
    strings = sorted(name for name, value in entries.items() if isinstance(value, str))
    if strings:
        raise ValueError(
            f"{path}: safetensors holds numbers only, and the entries {strings} are strings: "
            "save them as a .ckpt, or store them elsewhere (e.g. as numbers, or in a JSON file beside it)"
        )


def _safetensors_metadata(path: str) -> Optional[dict]:
    """The ``__metadata__`` of a safetensors file's header (None when it has none); ValueError
    when the header cannot be read (a file cut inside its header, or not safetensors)."""
    import json
    import struct

    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        raw = f.read(length) if 0 < length < (1 << 27) else b""  # the format caps its header at 100 MB
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"checkpoint {path!r} has no readable safetensors header: it is truncated or not safetensors")
    return header.get("__metadata__")


def _load_safetensors_verified(path: str, net, kwargs: dict) -> dict:
    # MindSpore only warns when crc_num is missing, and a file cut in its data is refused by
    # safetensors itself (the header gives every tensor's byte range); require the CRC here.
    metadata = _safetensors_metadata(path) or {}
    if "crc_num" not in metadata:
        raise ValueError(
            f"safetensors checkpoint {path!r} has no CRC (metadata crc_num): it was not written with "
            "crc_check=True (save_checkpoint_atomic writes it)"
        )
    if kwargs.setdefault("format", "safetensors") != "safetensors":
        raise ValueError(f"checkpoint {path!r} is safetensors (by its extension) but format={kwargs['format']!r}")
    kwargs["crc_check"] = True
    return ms.load_checkpoint(path, net=net, **kwargs)


def load_checkpoint_verified(ckpt_file_name: str, net=None, **kwargs) -> dict:
    """``mindspore.load_checkpoint`` that accepts only complete, undamaged files written with a
    CRC, as :func:`save_checkpoint_atomic` writes them. The format follows the extension: a
    ``.safetensors`` file must carry the CRC that ``crc_check=True`` stores in its header's
    metadata (``crc_num``), which MindSpore then checks; any other file, the .ckpt CRC trailer.
    A file without its CRC (e.g. truncated) or whose CRC does not match raises ``ValueError``;
    ``FileNotFoundError`` if absent.
    Other arguments as ``mindspore.load_checkpoint``.

    Unlike ``mindspore.load_checkpoint`` in MindSpore 2.10, it does not refuse a file smaller than
    the memory the system can give (``MemAvailable``) because the page cache fills the rest;
    a file larger than that raises ``ValueError`` saying what to do."""
    path = os.fspath(ckpt_file_name)
    if path.endswith(".safetensors"):
        return _load_safetensors_verified(path, net, kwargs)
    size, stored_crc = _compat.checkpoint_crc_trailer(path)
    if stored_crc is None:
        raise ValueError(
            f"checkpoint {path!r} ({size} bytes) has no CRC trailer: it is truncated or was not "
            "written with crc_check=True (save_checkpoint_atomic writes it)"
        )
    kwargs["crc_check"] = True
    # Not ms.load_checkpoint: MindSpore 2.10 refuses files it could load when the page cache is full.
    return _compat.load_checkpoint(path, net=net, **kwargs)
