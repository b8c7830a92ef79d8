"""Which part of the flattened weights each data-parallel worker owns (pure Python and NumPy).

The weights are flattened in the optimizer's order into one vector of ``total`` elements, padded
with zeros to ``world * shard_size`` (``shard_size = ceil(total / world)``); worker ``rank`` owns
``[rank * shard_size, (rank + 1) * shard_size)``. Its range cuts through some weights: its
*pieces*, each ``(index, start, stop, offset)`` -- elements ``[start, stop)`` of the flattened
weight ``index``, found at ``offset`` in the worker's shard. A range is contiguous, so a weight
has at most one piece per worker, and the pieces of a weight over the workers in rank order tile
it exactly: that is how :func:`merge_pieces` puts a weight's state back together.

``whole_tensors=True`` (FusedLAMB, FusedLARS: their trust ratios take norms of whole tensors)
cuts only between weights: the weights, in order, are split into ``world`` contiguous runs
(some empty when there are fewer weights than workers) minimising the largest run, which is
``shard_size``; worker r's run sits at the start of block r of the padded vector, then zeros.
Every piece is then a whole weight, and a worker holds the largest run's elements of state at
most -- more than ``ceil(total / world)`` by less than the largest weight.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ["MODES", "STATE_PREFIXES", "Piece", "ShardLayout", "merge_pieces", "check_mode", "whole_tensor_runs"]

# shard= values; their codes in the ``accumulation.shard`` Parameter of a sharded cell
MODES = {"optimizer": 1, "gradients": 2}
# the Parameter name prefixes of the state of the optimizers that can shard (FusedMomentum,
# FusedLARS, FusedAdamW, FusedLAMB: optim.FusedSpec.states); a checkpoint's pieces of state are found by them
STATE_PREFIXES = ("moments", "adam_m", "adam_v", "lamb_m", "lamb_v")


def check_mode(shard, owner: str) -> None:
    if shard is not None and shard not in MODES:
        raise ValueError(
            f"{owner}: shard must be None (every worker holds everything), 'optimizer' (each worker "
            "keeps the optimizer state of its slice of the weights: ZeRO-1) or 'gradients' (also the "
            f"accumulators: ZeRO-2); got {shard!r}"
        )


class Piece(NamedTuple):
    index: int  # the weight, in the optimizer's order
    start: int  # elements [start, stop) of the flattened weight
    stop: int
    offset: int  # where they sit in the worker's shard

    @property
    def size(self) -> int:
        return self.stop - self.start


class ShardLayout:
    """The layout of ``sizes`` (elements per weight, in the optimizer's order) over ``world``
    workers, seen from worker ``rank``."""

    def __init__(self, sizes: Sequence[int], world: int, rank: int, whole_tensors: bool = False):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world) and world >= 1; got rank {rank}, world {world}")
        if any(int(n) < 0 for n in sizes):
            raise ValueError(f"weight sizes must be >= 0, got {list(sizes)}")
        self.sizes = tuple(int(n) for n in sizes)
        self.world, self.rank = int(world), int(rank)
        self.whole_tensors = bool(whole_tensors)
        self.total = sum(self.sizes)
        if self.whole_tensors:
            runs = whole_tensor_runs(self.sizes, self.world)
            self.shard_size = max([1] + [sum(self.sizes[i] for i in run) for run in runs])
            offsets = [0] * len(self.sizes)  # each weight's offset in the padded flat vector
            for r, run in enumerate(runs):
                at = r * self.shard_size
                for i in run:
                    offsets[i], at = at, at + self.sizes[i]
            self.offsets = tuple(offsets)
        else:
            self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.sizes)[:-1])
            self.shard_size = max(1, -(-self.total // self.world))  # ceil; >= 1 so every shard is a tensor
        self.padded = self.shard_size * self.world
        self.start = self.rank * self.shard_size
        self.stop = self.start + self.shard_size
        self.pieces = self.pieces_of(self.rank)

    def pieces_of(self, rank: int) -> Tuple[Piece, ...]:
        """The pieces of worker ``rank``, in order (empty where its range is padding only)."""
        lo, hi = rank * self.shard_size, (rank + 1) * self.shard_size
        out = []
        for index, (offset, size) in enumerate(zip(self.offsets, self.sizes)):
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                out.append(Piece(index, a - offset, b - offset, a - lo))
        return tuple(out)

    @property
    def owned(self) -> int:
        """Elements of real weights in this worker's shard (the rest is padding)."""
        return sum(p.size for p in self.pieces)

    def whole(self, piece: Piece) -> bool:
        """Whether ``piece`` is its whole weight."""
        return piece.start == 0 and piece.stop == self.sizes[piece.index]

    # ---- NumPy, for checkpoints and tests
    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The weights' arrays as the padded flat vector of ``padded`` elements."""
        self._check(arrays)
        flat = np.zeros(self.padded, np.result_type(*arrays) if arrays else np.float32)
        for array, offset, size in zip(arrays, self.offsets, self.sizes):
            flat[offset : offset + size] = np.asarray(array).reshape(-1)
        return flat

    def take_pieces(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """This worker's pieces (flat) of ``arrays`` (one full array per weight)."""
        self._check(arrays)
        return [np.asarray(arrays[p.index]).reshape(-1)[p.start : p.stop].copy() for p in self.pieces]

    def _check(self, arrays) -> None:
        if len(arrays) != len(self.sizes) or any(np.size(a) != n for a, n in zip(arrays, self.sizes)):
            raise ValueError(
                f"expected {len(self.sizes)} arrays of sizes {list(self.sizes)}, "
                f"got sizes {[np.size(a) for a in arrays]}"
            )


def whole_tensor_runs(sizes: Sequence[int], world: int) -> List[range]:
    """``sizes`` split into ``world`` contiguous runs of indices (trailing ones possibly empty)
    whose largest sum is the least possible: the least capacity a greedy fill fits in ``world``
    runs (binary search; greedy fits whenever any split does), then that greedy fill."""

    def fill(capacity):
        runs, start, load = [], 0, 0
        for i, n in enumerate(sizes):
            if load + n > capacity and i > start:
                runs.append(range(start, i))
                start, load = i, 0
            load += n
        runs.append(range(start, len(sizes)))
        return runs

    lo, hi = max(sizes, default=0), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(fill(mid)) <= world else (mid + 1, hi)
    runs = fill(lo)
    return runs + [range(len(sizes), len(sizes))] * (world - len(runs))


def merge_pieces(pieces_by_rank: Sequence[Dict[str, np.ndarray]], shapes: Dict[str, tuple]) -> Dict[str, np.ndarray]:
    """Whole arrays from the pieces of every worker: ``pieces_by_rank[r]`` maps a weight's name to
    worker r's piece of it (absent where r has none); ``shapes`` gives each weight's shape. The
    pieces of a weight, in rank order, must tile it exactly (ValueError otherwise)."""
    out = {}
    for name, shape in shapes.items():
        parts = [np.asarray(by_name[name]).reshape(-1) for by_name in pieces_by_rank if name in by_name]
        size = int(np.prod(shape, dtype=np.int64))
        if not parts or sum(p.size for p in parts) != size:
            raise ValueError(
                f"the pieces of {name!r} hold {sum(p.size for p in parts)} elements over "
                f"{len(pieces_by_rank)} workers; the weight has {size} (shape {tuple(shape)}): "
                "are the checkpoints of every rank given, all of the same run?"
            )
        out[name] = np.concatenate(parts).reshape(shape)
    return out
