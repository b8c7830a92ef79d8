"""Large batches: the linear scaling rule with gradual warm-up, as a learning-rate schedule.

Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour"
(arXiv:1706.02677), section 2: *when the minibatch size is multiplied by k, multiply the
learning rate by k* (2.1), and to survive the first updates of a large batch, a *gradual
warm-up*: start from the small batch's rate and raise it by a constant amount every update until
it reaches k times that rate (5 epochs in the paper), then continue with the usual schedule
(2.2). With accumulation, the batch is ``micro-batch size x accumulation_steps x workers``.

:class:`WarmupLinearScaling` is a ``LearningRateSchedule`` (``mindspore.nn.learning_rate_schedule``):
pass it as ``learning_rate`` to any optimizer here (:class:`~mindspore_accum.FusedMomentum`,
:class:`~mindspore_accum.FusedAdamW`, :class:`~mindspore_accum.FusedLAMB`,
:class:`~mindspore_accum.FusedLARS`) or MindSpore's own; it
is evaluated at the optimizer's ``global_step``, i.e. once per update (per window inside
:class:`~mindspore_accum.GradAccumCell`).
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import Tensor, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule

__all__ = ["linear_scaling_rule", "WarmupLinearScaling"]


def linear_scaling_rule(base_lr: float, base_batch_size: int, batch_size: int) -> float:
    """``base_lr * batch_size / base_batch_size`` (Goyal et al. 2017, 2.1): the learning rate for
    ``batch_size`` when ``base_lr`` was tuned for ``base_batch_size``."""
    for name, value in (("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"linear_scaling_rule: {name} must be an int >= 1, got {value!r}")
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)) or not 0.0 <= base_lr < float("inf"):
        raise ValueError(f"linear_scaling_rule: base_lr must be a finite float >= 0, got {base_lr!r}")
    return float(base_lr) * batch_size / base_batch_size


class WarmupLinearScaling(LearningRateSchedule):
    """The linear scaling rule with gradual warm-up (Goyal et al. 2017), per update ``t`` from 0::

        peak = base_lr * batch_size / base_batch_size
        lr(t) = start + (peak - start) * t / warmup_steps     for t < warmup_steps
        lr(t) = peak                     (or after(t), when ``after`` is given)   afterwards

    ``start`` defaults to ``base_lr`` (the paper: the small batch's rate); ``after`` is any
    ``LearningRateSchedule`` taking over after the warm-up (built with ``peak``, e.g. a cosine
    decay; it is called with the same global step). ``warmup_steps=0`` is the rule without
    warm-up.
    """

    def __init__(
        self,
        base_lr: float,
        base_batch_size: int,
        batch_size: int,
        warmup_steps: int,
        *,
        start: Optional[float] = None,
        after: Optional[LearningRateSchedule] = None,
    ):
        super().__init__()
        self.peak = linear_scaling_rule(base_lr, base_batch_size, batch_size)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"WarmupLinearScaling: warmup_steps must be an int >= 0, got {warmup_steps!r}")
        start = float(base_lr) if start is None else start
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 <= start < float("inf"):
            raise ValueError(f"WarmupLinearScaling: start must be a finite float >= 0, got {start!r}")
        if after is not None and not isinstance(after, LearningRateSchedule):
            raise TypeError(
                f"WarmupLinearScaling: after must be a LearningRateSchedule or None, got {type(after).__name__}"
            )
        self.start, self.warmup_steps, self.after = float(start), warmup_steps, after
        self._start = Tensor(self.start, ms.float32)
        self._peak = Tensor(self.peak, ms.float32)
        self._slope = Tensor((self.peak - self.start) / max(warmup_steps, 1), ms.float32)
        self._warmup = Tensor(float(warmup_steps), ms.float32)

    def construct(self, global_step):
        t = ops.cast(global_step, ms.float32)
        warm = self._start + self._slope * t
        later = self._peak if self.after is None else ops.cast(self.after(global_step), ms.float32)
        return ops.select(t < self._warmup, warm, ops.broadcast_to(later, warm.shape))
