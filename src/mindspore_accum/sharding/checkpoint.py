"""Checkpoints of sharded windows (``shard="optimizer"`` / ``"gradients"``): merge, load, convert.

A sharded worker saves its cell as any cell (:func:`~.checkpoint.save_checkpoint_atomic`): the
weights (whole: every worker holds them), its pieces of the optimizer state under the replicated
names (``adam_m.<weight>``, ``adam_v.<weight>``, ``moments.<weight>``, shaped as the piece), the
window's counters and ``accumulation.shard`` = [mode, world size, rank] (mode 1: "optimizer",
2: "gradients", whose accumulators are ``accumulators.shard``, the worker's range of the sum),
followed by 1 for the whole-tensor layout of FusedLAMB/FusedLARS (``sharding.layout.ShardLayout``).

* :func:`consolidate_checkpoint` merges the checkpoints of every rank into the checkpoint a
  replicated (``shard=None``) cell writes: same names and shapes, loadable with
  ``ms.load_checkpoint(path, net=cell)`` on any number of workers, or into a sharded cell with
  :func:`load_window_checkpoint`. Only at a window boundary (no micro-batch pending): a pending
  window's sums are per worker and cannot move to another layout.
* :func:`load_window_checkpoint` loads a checkpoint into a window (GradAccumCell or
  GradAccumulator): a replicated one into a sharded window (each worker takes its pieces), a
  sharded one into the same rank of the same setting; anything else raises, naming both settings.

``python -m mindspore_accum consolidate OUT SHARD...`` runs :func:`consolidate_checkpoint`.

Every path is read and written in the format of its extension: ``.safetensors`` (for large
models: MindSpore reads it tensor by tensor, while a protobuf ``.ckpt`` is parsed whole in memory
and MindSpore 2.10 refuses one larger than the free memory it estimates), anything else ``.ckpt``.
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np

from .. import _compat
from .layout import MODES, STATE_PREFIXES, merge_pieces

__all__ = ["consolidate_checkpoint", "load_window_checkpoint"]

_MODE_NAMES = {code: name for name, code in MODES.items()}
_INFO = "accumulation.shard"
_FLAT_ACCUMULATORS = "accumulators.shard"


def _describe(info) -> str:
    if info is None:
        return "not sharded (shard=None)"
    mode, world, rank = (int(v) for v in info[:3])
    layout = " (whole-tensor layout: FusedLAMB/FusedLARS)" if len(info) > 3 else ""
    return f"rank {rank} of {world} workers with shard={_MODE_NAMES.get(mode, mode)!r}{layout}"


def _format(path) -> str:
    return "safetensors" if os.fspath(path).endswith(".safetensors") else "ckpt"


def _load(path) -> Dict:
    import mindspore as ms

    fmt = _format(path)
    if fmt == "ckpt":  # not refused for memory the page cache holds (MindSpore 2.10)
        return _compat.load_checkpoint(os.fspath(path), format=fmt)
    return ms.load_checkpoint(os.fspath(path), format=fmt)


def _state_names(params: Dict, weights: Sequence[str]):
    """(name, weight) of every optimizer-state entry of ``params`` over ``weights``."""
    return [(f"{p}.{w}", w) for p in STATE_PREFIXES for w in weights if f"{p}.{w}" in params]


def consolidate_checkpoint(shard_paths: Sequence[str], out_path: str) -> str:
    """Merges the checkpoints of every rank of a sharded run (any order) into the replicated
    checkpoint ``out_path`` (written atomically, with a CRC). Returns the path written.

    The shard files may be ``.ckpt`` or ``.safetensors`` (by extension, mixed if need be);
    ``out_path`` ending in ``.safetensors`` writes safetensors (with the CRC in its header),
    otherwise a ``.ckpt``. Raises ``ValueError`` when a file is not of a sharded window, the files
    are of different settings or ranks are missing or repeated, a window is pending in one of
    them, or (safetensors out) an entry is a string, which safetensors cannot hold."""
    from mindspore import Tensor

    from ..checkpoint import save_checkpoint_atomic

    if isinstance(shard_paths, (str, os.PathLike)) or not shard_paths:
        raise ValueError("shard_paths must be a non-empty list of the checkpoint paths of every rank")
    by_rank, settings = {}, set()
    for path in shard_paths:
        params = _load(path)
        if _INFO not in params:
            raise ValueError(
                f"{path} is not the checkpoint of a sharded window (it has no {_INFO!r}); "
                "a replicated checkpoint needs no consolidation"
            )
        info = tuple(int(v) for v in params[_INFO].asnumpy())
        mode, world, rank = info[:3]
        pending = int(params["accumulation.micro_step"].asnumpy())
        if pending:
            raise ValueError(
                f"{path} ({_describe(info)}) holds a pending window ({pending} micro-batches); "
                "a window's sums cannot be moved to another layout. Save at a window boundary "
                "(after the update, or after flush()) to consolidate"
            )
        if rank in by_rank:
            raise ValueError(f"{path} and another file are both of rank {rank}")
        by_rank[rank] = params
        settings.add((mode, world) + info[3:])
    if len(settings) != 1:
        raise ValueError(
            f"the checkpoints are of different settings: {sorted(settings)} (mode, world size[, whole-tensor layout])"
        )
    mode, world = settings.pop()[:2]
    if sorted(by_rank) != list(range(world)):
        missing = sorted(set(range(world)) - set(by_rank))
        raise ValueError(f"the run had {world} workers; the checkpoints of ranks {missing} are missing")
    ranks = [by_rank[r] for r in range(world)]
    base = ranks[0]
    # the weights: what a state entry of some rank is named after
    weights = [w for w in base if any(f"{p}.{w}" in params for params in ranks for p in STATE_PREFIXES)]
    merged = {}
    for prefix in STATE_PREFIXES:
        names = [w for w in weights if any(f"{prefix}.{w}" in params for params in ranks)]
        pieces = [
            {w: params[f"{prefix}.{w}"].asnumpy() for w in names if f"{prefix}.{w}" in params} for params in ranks
        ]
        for w, array in merge_pieces(pieces, {w: tuple(base[w].shape) for w in names}).items():
            merged[f"{prefix}.{w}"] = array
    out = []
    for name, param in base.items():
        if name == _INFO or name in merged:
            continue
        if name == _FLAT_ACCUMULATORS:  # no window is pending: the replicated accumulators start at 0
            out += [{"name": f"accumulators.{w}", "data": Tensor(np.zeros(base[w].shape, np.float32))} for w in weights]
            continue
        out.append({"name": name, "data": param})
    out += [{"name": name, "data": Tensor(array)} for name, array in merged.items()]
    # strings (from append_dict of the rank checkpoints) go back the way they came: a list of
    # entries takes Parameters only; safetensors holds no strings at all
    strings = {e["name"]: e["data"] for e in out if isinstance(e["data"], str)}
    if strings and _format(out_path) == "safetensors":
        raise ValueError(
            f"the entries {sorted(strings)} of the rank checkpoints are strings, which safetensors cannot hold: "
            f"consolidate into a .ckpt instead of {os.fspath(out_path)!r}"
        )
    out = [e for e in out if e["name"] not in strings]
    return save_checkpoint_atomic(out, out_path, append_dict=strings or None)


def load_window_checkpoint(window, ckpt, *, strict: bool = True):
    """Loads ``ckpt`` (a path, or the dict ``ms.load_checkpoint`` returns) into ``window`` (a
    GradAccumCell or GradAccumulator), converting a replicated checkpoint for a sharded window:
    each worker takes its pieces of the optimizer state. A sharded checkpoint loads only into
    the rank and setting that wrote it (else ValueError naming both: consolidate it first).
    ``strict``: every Parameter of ``window`` must be in the checkpoint (ValueError naming the
    missing ones). A path ending in ``.safetensors`` is read as safetensors, any other as a .ckpt.
    Returns the names of the checkpoint's entries the window has no Parameter for."""
    import mindspore as ms
    from mindspore import Parameter, Tensor

    source = ckpt if isinstance(ckpt, dict) else _load(ckpt)
    what = "the checkpoint" if isinstance(ckpt, dict) else repr(os.fspath(ckpt))
    owner = type(window).__name__
    sharding = getattr(window, "_sharding", None)
    mine = None if sharding is None else tuple(int(v) for v in sharding.expected_info)
    theirs = None if _INFO not in source else tuple(int(v) for v in source[_INFO].asnumpy())
    if theirs is not None and theirs != mine:
        raise ValueError(
            f"{what} was written by {_describe(theirs)}; this {owner} is {_describe(mine)}. A sharded "
            "checkpoint loads only into the rank and setting that wrote it: merge the checkpoints of every "
            "rank with mindspore_accum.consolidate_checkpoint (python -m mindspore_accum consolidate OUT "
            "SHARD...) and load the result"
        )
    params = dict(source)
    if theirs is None and mine is not None:
        params = _take_pieces(window, sharding, params, what, owner)
        params[_INFO] = Parameter(Tensor(np.asarray(mine, np.int32)), name=_INFO)
    if strict:
        missing = [p.name for p in window.get_parameters() if p.name not in params]
        if missing:
            raise ValueError(f"{what} has no entry for {missing} of this {owner}")
    _, unused = ms.load_param_into_net(window, params, strict_load=True)
    return unused


def _take_pieces(window, sharding, params, what, owner):
    """A replicated checkpoint's entries for this worker's pieces of the optimizer state."""
    from mindspore import Parameter, Tensor

    pending = int(params["accumulation.micro_step"].asnumpy()) if "accumulation.micro_step" in params else 0
    if pending and sharding.gradients:
        raise ValueError(
            f"{what} holds a pending window ({pending} micro-batches) of replicated accumulators, which this "
            f"{owner}(shard='gradients') keeps reduced over workers; save at a window boundary to change setting"
        )
    weights = [w.name for w in window.weights]
    out = dict(params)
    for (index, start, stop, _), shape in zip(sharding._pieces, sharding._piece_shapes):
        for prefix in STATE_PREFIXES:
            name = f"{prefix}.{weights[index]}"
            if name in params:
                piece = params[name].asnumpy().reshape(-1)[start:stop].reshape(shape)
                out[name] = Parameter(Tensor(piece), name=name)
    if sharding.gradients:
        for w in weights:
            out.pop(f"accumulators.{w}", None)
        size = sharding.layout.shard_size
        out[_FLAT_ACCUMULATORS] = Parameter(Tensor(np.zeros(size, np.float32)), name=_FLAT_ACCUMULATORS)
    return out
