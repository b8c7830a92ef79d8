"""The state of a GradAccumCell's accumulation window, as one object.

Every value lives in a non-trainable Parameter, so a checkpoint of the cell captures the window
mid-way and a resumed job finishes it bit-identically. The Parameter names are the checkpoint
format: ``accumulators.<weight name>``, ``accumulation.micro_step``, ``accumulation.items``,
``accumulation.window_steps``, ``accumulation.world_size``, ``accumulation.skipped_updates``,
``accumulation.skip_reason``, ``accumulation.loss_scale`` (since 0.2.0), then
``accumulation.loss_sum``, ``accumulation.window_loss``, ``accumulation.skips_by_reason`` and
``accumulation.reported_skips`` (0.3.0). A checkpoint without the last four loads too: they keep
their initial values (the window loss of a window resumed from it then counts only the
micro-batches after the resume).
"""

from __future__ import annotations

import enum

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

__all__ = ["SkipReason", "AccumulationState", "zeros_like_params"]


class SkipReason(enum.IntEnum):
    """``accumulation.skip_reason`` after a window end."""

    APPLIED = 0  # the update was applied
    NONFINITE = 1  # a non-finite value in the window's gradient: skipped
    NO_ITEMS = 2  # the window's items summed to 0: skipped
    EMPTY = 3  # no micro-batch in the window (a flush of nothing, data parallel): nothing to do


# Plain ints for the compiled window end (MindSpore's graph compiler takes ints, not enum members).
APPLIED, NONFINITE, NO_ITEMS, EMPTY = (int(reason) for reason in SkipReason)


def zeros_like_params(params, prefix: str):
    """Non-trainable float32 zero Parameters shaped like ``params``, named ``<prefix>.<name>``."""
    return ms.ParameterTuple(
        Parameter(initializer("zeros", p.shape, ms.float32), name=f"{prefix}.{p.name}", requires_grad=False)
        for p in params
    )


def _counter(name: str, value: int, dtype) -> Parameter:
    return Parameter(Tensor(value, dtype), name=name, requires_grad=False)


class AccumulationState(nn.Cell):
    """The window's accumulators and counters (a Cell only to hold Parameters; it computes nothing
    by itself: its methods are parts of the cell's micro-step and window-end graphs).

    * ``accumulators``: float32, one per weight, the window's weighted gradient sum. The first
      micro-batch of a window writes them, later ones add, so they are never zeroed.
    * ``micro_step`` (int32): micro-batches accumulated in the current window.
    * ``items`` (int64): items (samples or tokens) in the current window, on this worker.
    * ``window_steps``, ``window_world_size`` (int32): the ``accumulation_steps`` and world size
      the pending window was accumulated under (a resumed job checks them).
    * ``skipped_updates`` (int32): windows skipped so far; ``skip_reason`` (int32): a
      :class:`SkipReason`, of the last window end.
    * ``loss_scale`` (float32): the current loss scale.
    * ``loss_sum`` (float32): the window's loss summed over its items, on this worker (for the
      window loss; not scaled by the loss scale).
    * ``window_loss`` (float32): the item-weighted mean loss of the last non-empty window end,
      over all workers -- the loss of the large batch (0 before the first window end; nan when
      no loss was given).
    * ``skips_by_reason`` (int32, shape (2,)): windows skipped so far for a non-finite gradient,
      and for zero items; ``reported_skips`` (same shape): how many of them the host has reported.
      A window end inside a compiled graph cannot warn or raise: the next host-side call reports
      the difference (see ``report_skipped``). Only the host writes ``reported_skips`` (a
      compiled graph keeps the buffer of a Parameter whose data Python replaces).
    """

    def __init__(self, weights, accumulation_steps: int, world_size: int, loss_scale: float, accumulators=None):
        super().__init__()
        # Created in this order: a checkpoint lists them so (as before the state was one object).
        # ``accumulators``: given by a window that shards them (shard="gradients").
        self.accumulators = zeros_like_params(weights, "accumulators") if accumulators is None else accumulators
        self.micro_step = _counter("accumulation.micro_step", 0, ms.int32)
        self.items = _counter("accumulation.items", 0, ms.int64)
        self.window_steps = _counter("accumulation.window_steps", accumulation_steps, ms.int32)
        self.window_world_size = _counter("accumulation.world_size", world_size, ms.int32)
        self.skipped_updates = _counter("accumulation.skipped_updates", 0, ms.int32)
        self.skip_reason = _counter("accumulation.skip_reason", APPLIED, ms.int32)
        self.loss_scale = Parameter(Tensor(loss_scale, ms.float32), name="accumulation.loss_scale", requires_grad=False)
        # 0.3.0: after the 0.2 Parameters, so a 0.2 checkpoint lists a prefix of them
        self.loss_sum = _counter("accumulation.loss_sum", 0.0, ms.float32)
        self.window_loss = _counter("accumulation.window_loss", 0.0, ms.float32)
        self.skips_by_reason = _counter("accumulation.skips_by_reason", np.zeros(2, np.int32), ms.int32)
        self.reported_skips = _counter("accumulation.reported_skips", np.zeros(2, np.int32), ms.int32)

    # ---- parts of the compiled graphs; each returns ``out`` kept after its writes
    def count_micro_batch(self, out, items, loss_sum, accumulation_steps, world_size):
        """After a micro-batch was accumulated: counts it, its items and its loss (summed over its
        items), and records the setting the window is accumulated under (``accumulation_steps``
        None: a schedule, whose steps the cell records when the window starts)."""
        out = ops.depend(out, ops.assign_add(self.items, items))
        out = ops.depend(out, ops.assign_add(self.loss_sum, ops.cast(ops.reshape(loss_sum, ()), ms.float32)))
        if accumulation_steps is not None:
            out = ops.depend(out, ops.assign(self.window_steps, Tensor(accumulation_steps, ms.int32)))
        out = ops.depend(out, ops.assign(self.window_world_size, Tensor(world_size, ms.int32)))
        return ops.depend(out, ops.assign_add(self.micro_step, Tensor(1, ms.int32)))

    def close_window(self, out, finite, items, micro_batches, loss_sum):
        """After a window end: records why it skipped (or not) and the window loss (``loss_sum``
        over all workers / ``items``), counts a skipped window (also as not yet reported), starts
        the next window. (The next micro-step writes the accumulators, so they need no zeroing.)"""
        reason = ops.select(
            finite,
            ops.select(items > 0, Tensor(APPLIED, ms.int32), Tensor(NO_ITEMS, ms.int32)),
            Tensor(NONFINITE, ms.int32),
        )
        reason = ops.select(micro_batches > 0, reason, Tensor(EMPTY, ms.int32))
        skipped = ops.cast(ops.logical_and(reason != APPLIED, reason != EMPTY), ms.int32)
        out = ops.depend(out, ops.assign(self.skip_reason, reason))
        out = ops.depend(out, ops.assign_add(self.skipped_updates, skipped))
        by_reason = ops.cast(ops.stack([reason == NONFINITE, reason == NO_ITEMS]), ms.int32)
        out = ops.depend(out, ops.assign_add(self.skips_by_reason, by_reason))
        mean = ops.cast(loss_sum, ms.float32) / ops.cast(ops.maximum(items, 1), ms.float32)
        out = ops.depend(out, ops.assign(self.window_loss, ops.select(micro_batches > 0, mean, self.window_loss)))
        out = ops.depend(out, ops.assign(self.loss_sum, Tensor(0.0, ms.float32)))
        out = ops.depend(out, ops.assign(self.items, Tensor(0, ms.int64)))
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    # ---- read from Python (each reads one value back from the device)
    def pending(self) -> int:
        """Micro-batches accumulated since the last window end."""
        return int(self.micro_step.asnumpy())

    def last_skip_reason(self) -> SkipReason:
        return SkipReason(int(self.skip_reason.asnumpy()))

    def take_unreported_skips(self):
        """(non-finite, zero-item) windows skipped and not reported yet; marks them reported."""
        skipped = self.skips_by_reason.asnumpy()
        nonfinite, no_items = (int(v) for v in skipped - self.reported_skips.asnumpy())
        if nonfinite or no_items:
            self.reported_skips.set_data(Tensor(skipped.astype(np.int32)))
        return max(nonfinite, 0), max(no_items, 0)
