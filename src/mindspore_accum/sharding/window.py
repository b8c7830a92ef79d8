"""The sharded window (``shard="optimizer"`` / ``"gradients"``): ZeRO-1/2 with one reduction per window.

Each of the W data-parallel workers owns a contiguous 1/W of the flattened weights
(:class:`.layout.ShardLayout`; FusedLAMB/FusedLARS: a block holding whole weights only, the
largest block setting the size) and keeps the optimizer state only for it::

    "optimizer" (ZeRO-1)
      micro-step:  accumulate locally (full accumulators), no collective -- as shard=None
      window end:  flat = [accumulators..., padding]
                   own  = ReduceScatter(flat)   (CPU: AllReduce(flat)[own range]; no ReduceScatter there)
                   [sum of squares of own, items, micro-batches, loss] -> one small AllReduce
                   check, normalise (+clip) -> fused update of the own pieces (weights and state)
                   AllGather(own pieces of the weights) -> every weight written back
    "gradients" (ZeRO-2)
      micro-step:  own += reduce-to-own-range(weight * grads)   (accumulators: own range only)
      window end:  as above, without the big reduction

The update runs on the worker's *pieces* of the weights: a weight wholly in the range is passed
itself (the kernel writes it in place); a weight cut by the range is passed as a slice of it (a
temporary the kernel writes, or the native math returns anew). The AllGather then writes every
weight, the worker's own pieces included, so every worker ends with the same weights.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

from ..optim import FusedOptimizer
from .layout import MODES, ShardLayout
from .optimizer_state import WHOLE_TENSOR_UPDATES

__all__ = ["ShardedWindow"]

_ITEMS_SPLIT = 4096  # as _window._ITEMS_SPLIT: the item count as two exact float32 integers


class ShardedWindow(nn.Cell):
    """The sharded parts of an AccumulationWindow's micro-step and window end."""

    def __init__(self, mode: str, optimizer, weights, world: int, rank: int, owner: str):
        super().__init__(auto_prefix=False)  # the Parameters' names are the checkpoint format
        if not isinstance(optimizer, FusedOptimizer):
            raise TypeError(
                f"{owner}(shard={mode!r}) needs a fused optimizer (FusedAdamW, FusedMomentum, FusedLAMB or "
                f"FusedLARS), which "
                f"can update a slice of the weights; got {type(optimizer).__name__}. Use shard=None with it"
            )
        self.mode = mode
        self.gradients = mode == "gradients"
        # LAMB/LARS: pieces must be whole tensors (trust ratios); the layout cuts between weights
        whole_tensors = optimizer.spec.update in WHOLE_TENSOR_UPDATES
        sizes = [int(np.prod(w.shape)) for w in weights]
        self.layout = layout = ShardLayout(sizes, world, rank, whole_tensors=whole_tensors)
        # [mode, world, rank] (+ [1] for the whole-tensor layout): a loaded checkpoint of another
        # layout is refused, naming both
        self.expected_info = (MODES[mode], int(world), int(rank)) + ((1,) if whole_tensors else ())
        self.info = Parameter(
            Tensor(np.asarray(self.expected_info, np.int32)), name="accumulation.shard", requires_grad=False
        )
        self._whole = tuple(layout.whole(p) for p in layout.pieces)
        # plain ints for the compiled graphs: (weight index, start, stop, offset in the shard)
        self._pieces = tuple((p.index, p.start, p.stop, p.offset) for p in layout.pieces)
        self._weight_ranges = tuple(zip(layout.offsets, layout.sizes))
        self._own_range = (layout.start, layout.stop)
        self._piece_shapes = tuple(
            tuple(weights[p.index].shape) if whole else (p.size,) for p, whole in zip(layout.pieces, self._whole)
        )
        optimizer._shard_state([p.index for p in layout.pieces], self._piece_shapes)
        # ReduceScatter where the backend has it (NCCL, HCCL); MindSpore's CPU backend has none
        self._reduce_scatter = None
        if ms.get_context("device_target") != "CPU":
            self._reduce_scatter = ops.ReduceScatter(ops.ReduceOp.SUM)
        self._allreduce = ops.AllReduce(ops.ReduceOp.SUM)
        self._small_allreduce = ops.AllReduce(ops.ReduceOp.SUM)
        self._allgather = ops.AllGather()
        # zeros before each weight (the whole-tensor layout's gaps at block starts) and after the last
        ends = [o + n for o, n in zip(layout.offsets, layout.sizes)]
        self._gaps = tuple(o - e for o, e in zip(layout.offsets, [0] + ends[:-1]))
        self._has_gaps = any(self._gaps)
        self._pad = _zeros(layout.padded - (ends[-1] if ends else 0))
        self._own_pad = _zeros(layout.shard_size - layout.owned)  # after this worker's pieces
        self._one = Tensor(1.0, ms.float32)

    def check_loaded(self, owner: str) -> None:
        """From Python: raises when a checkpoint of another rank or setting was loaded into this
        window (``ms.load_checkpoint`` loads whatever matches in shape)."""
        found = tuple(int(v) for v in self.info.asnumpy())
        if found != self.expected_info:
            from .checkpoint import _describe

            raise ValueError(
                f"{owner}: the loaded state was written by {_describe(found)}; this window is "
                f"{_describe(self.expected_info)}. Load a checkpoint of this rank and setting, or merge "
                "the ranks' checkpoints (mindspore_accum.consolidate_checkpoint) and load the result "
                "with mindspore_accum.load_window_checkpoint"
            )

    def make_accumulators(self):
        """The window's accumulators of "gradients": this worker's range of the flat sum."""
        size = self.layout.shard_size
        return ms.ParameterTuple(
            [Parameter(initializer("zeros", (size,), ms.float32), name="accumulators.shard", requires_grad=False)]
        )

    # ------------------------------------------------------------------ in the compiled graphs
    def _flat(self, tensors):
        """``tensors`` (one per weight) as the padded flat vector of the layout."""
        if self._has_gaps:
            parts = []
            for t, gap in zip(tensors, self._gaps):
                if gap > 0:
                    parts.append(ops.zeros((gap,), ms.float32))
                parts.append(ops.reshape(ops.cast(t, ms.float32), (-1,)))
        else:
            parts = [ops.reshape(ops.cast(t, ms.float32), (-1,)) for t in tensors]
        if self._pad is not None:
            parts.append(self._pad)
        return ops.concat(parts)

    def _reduce(self, flat):
        """The sum over workers of ``flat``: (a tensor holding this worker's range of it, where
        that range starts in the tensor)."""
        if self._reduce_scatter is not None:
            return self._reduce_scatter(flat), 0
        return self._allreduce(flat), self._own_range[0]  # slices are taken by the reader

    def _to_own(self, flat):
        """The sum over workers of ``flat``, this worker's range of it."""
        summed, start = self._reduce(flat)
        if self._reduce_scatter is not None:
            return summed
        return summed[start : start + self.layout.shard_size]

    def accumulate(self, backend_ops, accumulators, grads, weight, first):
        """ "gradients": adds this micro-batch's ``weight * grads``, summed over workers, to the
        own range (every worker must run the same number of micro-steps)."""
        own = self._to_own(self._flat(grads) * ops.cast(weight, ms.float32))
        return backend_ops.accumulate(accumulators, (own,), self._one, first)

    def window_sum(self, state, backend_ops):
        """(sources: the own pieces of the window's sum, items, micro-batches, loss sum, sum of
        squares), all but the sources summed over workers in one small AllReduce."""
        if self.gradients:
            summed, start = state.accumulators[0], 0
        else:  # (a worker with nothing pending has zeroed its accumulators: flush)
            summed, start = self._reduce(self._flat(state.accumulators))
        # the pieces, sliced from the reduced sum directly (one copy, not two)
        sources = tuple(
            ops.reshape(summed[start + offset : start + offset + stop - begin], shape)
            for (_, begin, stop, offset), shape in zip(self._pieces, self._piece_shapes)
        )
        squares = backend_ops.sum_of_squares(sources) if sources else ops.zeros((), ms.float32)
        items = state.items
        hi = ops.cast(items // _ITEMS_SPLIT, ms.float32)
        lo = ops.cast(items % _ITEMS_SPLIT, ms.float32)
        counts = ops.stack([squares, hi, lo, ops.cast(state.micro_step, ms.float32), state.loss_sum])
        counts = self._small_allreduce(counts)
        items = ops.cast(counts[1], ms.int64) * _ITEMS_SPLIT + ops.cast(counts[2], ms.int64)
        return sources, items, counts[3], counts[4], counts[0]

    def weight_pieces(self, weights):
        """This worker's pieces of ``weights``: a whole weight itself, else a flat slice of it."""
        return tuple(
            weights[index] if whole else ops.reshape(weights[index], (-1,))[start:stop]
            for (index, start, stop, _), whole in zip(self._pieces, self._whole)
        )

    def gather(self, weights, pieces, out):
        """Every worker's updated ``pieces`` (one AllGather), written into ``weights``."""
        parts = [ops.reshape(ops.depend(p, out), (-1,)) for p in pieces]
        if self._own_pad is not None:
            parts.append(self._own_pad)
        flat = self._allgather(ops.concat(parts))
        for w, (offset, size) in zip(weights, self._weight_ranges):
            out = ops.depend(out, ops.assign(w, ops.reshape(flat[offset : offset + size], w.shape)))
        return out


def _zeros(n: int):
    return Tensor(np.zeros(n, np.float32)) if n > 0 else None
