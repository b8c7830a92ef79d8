"""GradAccumCell: gradient accumulation over micro-batches as a MindSpore training cell."""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.train.callback import Callback

from . import kernels
from .optim import FusedMomentum, ParameterTuple_zeros

__all__ = ["GradAccumCell", "FlushAtEpochEnd"]


def _sum_of_squares(tensors):
    """sum over all tensors of sum(x * x), in float32: finite iff every element is (and not huge)."""
    total = Tensor(0.0, ms.float32)
    for x in tensors:
        x32 = ops.cast(x, ms.float32)
        total = total + (x32 * x32).sum()
    return total


class GradAccumCell(nn.Cell):
    """Accumulates gradients over ``accumulation_steps`` micro-batches, then updates once.

    Like ``nn.TrainOneStepCell``: ``cell(*inputs)`` runs one micro-batch (forward, backward,
    accumulation with the fused kernel) and returns its loss. Every ``accumulation_steps``-th call
    applies the update with the mean gradient of the window -- exactly the update of one batch of
    ``accumulation_steps`` times the micro-batch (equal micro-batch sizes, no BatchNorm) -- and
    resets the accumulators. :meth:`flush` applies a partial window, dividing by the number of
    micro-batches it holds; :attr:`pending` tells how many are waiting.

    Args:
        network_with_loss: a Cell returning the (mean) loss of a micro-batch.
        optimizer: any ``nn.Optimizer``. With :class:`FusedMomentum` the last micro-batch's add, the
            average, weight decay, momentum and the reset are one kernel pass; any other optimizer
            is called once per window on the averaged gradient.
        accumulation_steps: micro-batches per update (>= 1).
        clip_global_norm: if set, the averaged gradient of the whole window is clipped to this
            global L2 norm (after accumulation, before weight decay and momentum).
        loss_scale: None (no scaling), a float (static scale), or a loss-scale update cell /
            manager (``nn.DynamicLossScaleUpdateCell``, ``nn.FixedLossScaleUpdateCell``,
            ``amp.DynamicLossScaleManager``, ``amp.FixedLossScaleManager``). Gradients are unscaled
            once per window. In every case a non-finite value anywhere in the window skips that
            update (the accumulators are reset, weights and momenta untouched, and a dynamic scale
            is lowered); :attr:`skipped_updates` counts such windows.

    State (accumulators, micro-step counter, loss scale, skip counter, and the optimizer's
    moments and step) lives in Parameters, so checkpoints capture it and resume mid-window.

    Execution: in PYNATIVE mode on CPU the kernels run on zero-copy NumPy views of the tensors'
    memory, after the gradients are known to be computed; in GRAPH mode (and on GPU) they run as
    ``ops.Custom`` AOT operators ordered with ``ops.depend``.
    """

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, accumulation_steps: int, *,
                 clip_global_norm: Optional[float] = None, loss_scale=None):
        super().__init__(auto_prefix=False)
        if not isinstance(network_with_loss, nn.Cell):
            raise TypeError(f"network_with_loss must be an nn.Cell, got {type(network_with_loss).__name__}")
        if not isinstance(optimizer, nn.Optimizer):
            raise TypeError(f"optimizer must be an nn.Optimizer, got {type(optimizer).__name__}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, (int, np.integer)) \
                or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
        if clip_global_norm is not None and not (float(clip_global_norm) > 0.0):
            raise ValueError(f"clip_global_norm must be a positive number or None, got {clip_global_norm!r}")
        self.network = network_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.accumulation_steps = int(accumulation_steps)
        self.clip_global_norm = None if clip_global_norm is None else float(clip_global_norm)
        self.fused = isinstance(optimizer, FusedMomentum)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

        self.accumulators = ParameterTuple_zeros(self.weights, "accumulators")
        self.micro_step = Parameter(Tensor(0, ms.int32), name="accumulation.micro_step", requires_grad=False)
        self.skipped_updates = Parameter(Tensor(0, ms.int32), name="accumulation.skipped_updates",
                                         requires_grad=False)
        self.scale_update_cell = None
        scale_value = 1.0
        if loss_scale is not None:
            if hasattr(loss_scale, "get_update_cell"):  # an amp loss-scale manager
                update_cell = loss_scale.get_update_cell()
                scale_value = float(loss_scale.get_loss_scale())
                if update_cell is None and hasattr(loss_scale, "get_drop_overflow_update") \
                        and not loss_scale.get_drop_overflow_update():
                    warnings.warn("GradAccumCell always skips windows with non-finite gradients; "
                                  "drop_overflow_update=False is not honoured", stacklevel=2)
                self.scale_update_cell = update_cell
            elif isinstance(loss_scale, nn.Cell):
                self.scale_update_cell = loss_scale
                scale_value = float(loss_scale.get_loss_scale())
            elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
                scale_value = float(loss_scale)
            else:
                raise TypeError("loss_scale must be None, a float, a loss-scale update cell or an amp loss-scale "
                                f"manager, got {type(loss_scale).__name__}")
            if not scale_value > 0.0:
                raise ValueError(f"loss_scale must be positive, got {scale_value}")
        self.loss_scale = Parameter(Tensor(scale_value, ms.float32), name="accumulation.loss_scale",
                                    requires_grad=False)
        self._accumulate_op = kernels.custom_op("MsAccumAccumulate")
        self._zero_op = kernels.custom_op("MsAccumZero")
        self._one = Tensor([1.0], ms.float32)

    # ------------------------------------------------------------------ public API
    @property
    def pending(self) -> int:
        """Micro-batches accumulated since the last update."""
        return int(self.micro_step.asnumpy())

    def __call__(self, *inputs):
        if self._host_path():
            return self._host_micro_step(*inputs)
        return super().__call__(*inputs)

    def flush(self) -> bool:
        """Applies the pending partial window (mean over the micro-batches it holds).

        A no-op on an empty window. Returns True when an update was applied.
        """
        count = self.pending
        if count == 0:
            return False
        if self._host_path():
            return self._host_finish(count, None)
        if not hasattr(self, "_flush_graph"):
            self._flush_graph = ms.jit(self._finish_window_graph_acc_only)
        finite = bool(self._flush_graph().asnumpy())
        return finite

    # ------------------------------------------------------------------ GRAPH / GPU path
    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.loss_scale
        sens = ops.cast(ops.fill(loss.dtype, loss.shape, 1.0), loss.dtype) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        count = self.micro_step + 1
        if count >= self.accumulation_steps:
            if self.fused and self.clip_global_norm is None:
                done = self._finish_window_fused(grads, count)
            else:
                out = self._accumulate_op(self._one, *self.accumulators, *grads)
                done = self._finish_window_acc(count, out)
            loss = ops.depend(loss, done)
        else:
            out = self._accumulate_op(self._one, *self.accumulators, *grads)
            loss = ops.depend(loss, out)
            loss = ops.depend(loss, ops.assign(self.micro_step, count))
        return loss

    def _overflow_update(self, finite):
        """Feeds the loss-scale cell; returns whether the window's update may proceed."""
        overflow = ops.logical_not(finite)
        if self.scale_update_cell is not None:
            overflow = self.scale_update_cell(self.loss_scale, overflow)
        return ops.logical_not(overflow)

    def _finish_window_fused(self, grads, count):
        """Last micro-batch with FusedMomentum: check, then add + average + momentum + reset in one pass."""
        accumulators = self.accumulators
        finite = ops.isfinite(_sum_of_squares(accumulators) + _sum_of_squares(grads))
        proceed = self._overflow_update(finite)
        grad_scale = 1.0 / (ops.cast(count, ms.float32) * self.loss_scale)
        if proceed:
            out = self.optimizer.fused_update(accumulators, grads, grad_scale)
        else:
            out = self._zero_op(*accumulators)
            out = ops.depend(out, ops.assign_add(self.skipped_updates, Tensor(1, ms.int32)))
        out = ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))
        return ops.depend(proceed, out)

    def _finish_window_acc(self, count, after_accumulate):
        """The window's whole sum is in the accumulators: check, clip, update, reset."""
        accumulators = ops.depend(self.accumulators, after_accumulate)
        squares = _sum_of_squares(accumulators)
        proceed = self._overflow_update(ops.isfinite(squares))
        grad_scale = 1.0 / (ops.cast(count, ms.float32) * self.loss_scale)
        if self.clip_global_norm is not None:
            norm = ops.sqrt(squares) * grad_scale
            grad_scale = grad_scale * ops.minimum(Tensor(1.0, ms.float32),
                                                  self.clip_global_norm / ops.maximum(norm, Tensor(1e-30, ms.float32)))
        if proceed:
            if self.fused:
                out = self.optimizer.fused_update(accumulators, None, grad_scale)
            else:
                mean_grads = tuple(ops.cast(a * grad_scale, w.dtype) for a, w in zip(accumulators, self.weights))
                out = self.optimizer(mean_grads)
                out = self._zero_op(*ops.depend(accumulators, out))
        else:
            out = self._zero_op(*accumulators)
            out = ops.depend(out, ops.assign_add(self.skipped_updates, Tensor(1, ms.int32)))
        out = ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))
        return ops.depend(proceed, out)

    def _finish_window_graph_acc_only(self):
        return self._finish_window_acc(self.micro_step, self._one)

    # ------------------------------------------------------------------ PyNative CPU path
    def _host_path(self) -> bool:
        return ms.get_context("mode") == ms.PYNATIVE_MODE and ms.get_context("device_target") == "CPU"

    def _host_micro_step(self, *inputs):
        loss = self.network(*inputs)
        scale = float(self.loss_scale.asnumpy())
        sens = ops.fill(loss.dtype, loss.shape, scale)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        # asnumpy() waits for each gradient's producer: the kernel never reads a gradient early.
        grad_views = [g.asnumpy() for g in grads]
        count = self.pending + 1
        if count >= self.accumulation_steps:
            self._host_finish(count, grad_views)
        else:
            kernels.accumulate([a.asnumpy() for a in self.accumulators], grad_views, 1.0)
            self.micro_step.asnumpy()[...] = count
        return loss

    def _host_finish(self, count: int, grad_views) -> bool:
        """End of a window on the host. ``grad_views``: the last micro-batch, not yet accumulated."""
        acc_views = [a.asnumpy() for a in self.accumulators]
        fuse_last = grad_views is not None and self.fused and self.clip_global_norm is None
        if grad_views is not None and not fuse_last:
            kernels.accumulate(acc_views, grad_views, 1.0)
            grad_views = None
        squares = _host_sum_of_squares(acc_views) + (_host_sum_of_squares(grad_views) if grad_views else 0.0)
        proceed = bool(self._overflow_update(Tensor(np.isfinite(squares))).asnumpy())
        grad_scale = 1.0 / (count * float(self.loss_scale.asnumpy()))
        if proceed and self.clip_global_norm is not None:
            norm = float(np.sqrt(squares)) * grad_scale
            grad_scale *= min(1.0, self.clip_global_norm / max(norm, 1e-30))
        if proceed and self.fused:
            self.optimizer.host_update(acc_views, grad_views, grad_scale)
        elif proceed:
            mean_grads = tuple(ops.cast(a * grad_scale, w.dtype) for a, w in zip(self.accumulators, self.weights))
            self.optimizer(mean_grads)
            _ = self.weights[0].asnumpy()  # the optimizer has run before the accumulators are reset
            for view in acc_views:
                view[...] = 0.0
        else:
            for view in acc_views:
                view[...] = 0.0
            self.skipped_updates.asnumpy()[...] += 1
        self.micro_step.asnumpy()[...] = 0
        return proceed


def _host_sum_of_squares(views) -> float:
    total = np.float32(0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        for v in views:
            flat = v.reshape(-1).astype(np.float32, copy=False)
            total = total + np.float32(np.dot(flat, flat))
    return float(total)


class FlushAtEpochEnd(Callback):
    """``mindspore.train`` callback: applies a GradAccumCell's partial window at every epoch end,
    so no micro-batch of an epoch is carried into the next one."""

    def __init__(self, cell: GradAccumCell):
        super().__init__()
        self.cell = cell

    def on_train_epoch_end(self, run_context):
        self.cell.flush()
