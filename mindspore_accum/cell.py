"""GradAccumCell: gradient accumulation over micro-batches as a MindSpore training cell."""
from __future__ import annotations

import warnings
from typing import Optional, Union

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication.management import GlobalComm
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_device_num, _get_parallel_mode
from mindspore.train.callback import Callback

from . import kernels
from .optim import FusedMomentum, ParameterTuple_zeros

__all__ = ["GradAccumCell", "FlushAtEpochEnd"]


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
        nonfinite: what a skipped window does besides counting: ``"skip"`` (default) warns
            (``RuntimeWarning``) unless a loss-scale cell is expected to overflow now and then;
            ``"raise"`` raises ``FloatingPointError`` after resetting the window. (When MindSpore
            inlines the cell into a bigger graph, e.g. dataset sink mode, it can only count.)

    State (accumulators, micro-step counter, loss scale, skip counter, and the optimizer's
    moments and step) lives in Parameters, so checkpoints capture it and resume mid-window.

    Execution: in PYNATIVE mode on CPU the kernels run on zero-copy NumPy views of the tensors'
    memory, after the gradients are known to be computed; in GRAPH mode (and on GPU) they run as
    ``ops.Custom`` AOT operators ordered with ``ops.depend``.
    """

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, accumulation_steps: int, *,
                 clip_global_norm: Optional[float] = None, loss_scale=None, nonfinite: str = "skip"):
        super().__init__(auto_prefix=False)
        if not isinstance(network_with_loss, nn.Cell):
            raise TypeError(f"network_with_loss must be an nn.Cell, got {type(network_with_loss).__name__}")
        if not isinstance(optimizer, nn.Optimizer):
            raise TypeError(f"optimizer must be an nn.Optimizer, got {type(optimizer).__name__}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, (int, np.integer)) \
                or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}")
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
        if clip_global_norm is not None and not (float(clip_global_norm) > 0.0):
            raise ValueError(f"clip_global_norm must be a positive number or None, got {clip_global_norm!r}")
        self.network = network_with_loss
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.accumulation_steps = int(accumulation_steps)
        self.nonfinite = nonfinite
        self.clip_global_norm = None if clip_global_norm is None else float(clip_global_norm)
        self.fused = isinstance(optimizer, FusedMomentum)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        # Data parallelism: the window's sum is all-reduced once per update, as one flat buffer
        # (one AllReduce launch) that also carries each worker's micro-batch count.
        self.distributed = _get_parallel_mode() in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL)
        if self.distributed:
            self.world_size = _get_device_num()
            self._allreduce = ops.AllReduce(ops.ReduceOp.SUM, GlobalComm.WORLD_COMM_GROUP)
            self._sizes = tuple(int(np.prod(w.shape)) for w in self.weights)
            self._offsets = tuple(int(o) for o in np.cumsum((0,) + self._sizes)[:-1])

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
        # The window-end check (non-finite values, the global norm for clipping) is one kernel over
        # all tensors: as 322 x (cast, square, sum) MindSpore ops it took 434 ms per ResNet50 update
        # on a 2-core CPU (27 ms now) and 7 s to compile; one concat + matmul cost 0.9 GiB of memory.
        self._squares_op = kernels.sum_of_squares_op()
        self._one = Tensor([1.0], ms.float32)

    # ------------------------------------------------------------------ public API
    @property
    def pending(self) -> int:
        """Micro-batches accumulated since the last update."""
        return int(self.micro_step.asnumpy())

    def __call__(self, *inputs):
        # Calls from Python are dispatched here, one straight-line graph (or host kernel call)
        # per phase. `construct` below is the in-graph equivalent, used only when MindSpore
        # inlines this cell into a bigger graph (e.g. dataset sink mode).
        if self._host_path():
            return self._host_micro_step(*inputs)
        count = self.pending + 1
        # One forward/backward graph for every micro-step (compiling the network twice, once
        # with the accumulation fused in, doubled the start-up time on ResNet50).
        loss, grads = self._graph_backward(*inputs)
        # mutable: a tuple of tensors passed to a jit function is otherwise a compile-time constant
        # (one recompilation per call).
        grads = ms.mutable(grads)
        if count < self.accumulation_steps:
            self._graph_accumulate_counted(grads)
        else:
            self._finish_window(count, grads)
        return loss

    def flush(self) -> bool:
        """Applies the pending partial window (mean over the micro-batches it holds).

        A no-op on an empty window. Returns True when an update was applied, False when the
        window was empty or skipped for non-finite gradients.
        """
        count = self.pending
        # Data parallel: every worker joins the window's all-reduce, even with nothing pending
        # (otherwise one worker's flush would pair with another worker's next reduction).
        if count == 0 and not self.distributed:
            return False
        if self._host_path():
            return self._host_finish(count, None)
        return self._finish_window(count, None)

    # ------------------------------------------------------------------ GRAPH mode and GPU
    def _finish_window(self, count: int, grads) -> bool:
        """End of a window; ``grads`` is the last micro-batch's gradient, not yet accumulated."""
        if grads is not None and (self.distributed or not self.fused or self.clip_global_norm is not None):
            self._graph_accumulate(grads)
            grads = None
        if self.distributed:
            reduced, total = self._graph_reduce(Tensor(float(count), ms.float32))
            reduced = ms.mutable(reduced)
            count = float(total.asnumpy())  # micro-batches of all workers in this window
            if count == 0:  # a flush with every worker's window empty
                return False
            squares = self._graph_squares_of(reduced)
        else:
            squares = self._graph_squares() if grads is None else self._graph_squares_with(grads)
        # The window's gradients carry the scale in force now; the update cell may change it.
        loss_scale = float(self.loss_scale.asnumpy())
        proceed = bool(self._overflow_update(ops.isfinite(squares)).asnumpy())
        if not proceed:
            self._graph_discard()
            self._report_skipped()
            return False
        grad_scale = self._grad_scale(count, float(squares.asnumpy()), loss_scale)
        if self.distributed:
            if self.fused:
                self._graph_fused_update_reduced(reduced, grad_scale)
            else:
                self._graph_optimizer_update_reduced(reduced, grad_scale)
        elif not self.fused:
            self._graph_optimizer_update(grad_scale)
        elif grads is None:
            self._graph_fused_update_acc(grad_scale)
        else:
            self._graph_fused_update(grads, grad_scale)
        return True

    def _report_skipped(self) -> None:
        """A window was skipped for non-finite gradients (state already reset): warn or raise."""
        skipped = int(self.skipped_updates.asnumpy())
        message = (f"GradAccumCell: non-finite gradient in the accumulation window; the update was skipped, "
                   f"accumulators reset and weights left unchanged ({skipped} window(s) skipped so far)")
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        if self.scale_update_cell is None:  # with a dynamic loss scale, overflows are routine
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _grad_scale(self, count: int, squares: float, loss_scale: float) -> Tensor:
        """1 / (micro-batches * loss scale), times the clip factor of the window's mean gradient.

        ``loss_scale`` is the scale the window's gradients were computed with, read before the
        loss-scale update cell runs (it raises the scale after ``scale_window`` good windows)."""
        grad_scale = 1.0 / (count * loss_scale)
        if self.clip_global_norm is not None:
            norm = float(np.sqrt(squares)) * grad_scale
            grad_scale *= min(1.0, self.clip_global_norm / max(norm, 1e-30))
        return Tensor(grad_scale, ms.float32)

    def _backward(self, inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, 1.0) * ops.cast(self.loss_scale, loss.dtype)
        return loss, self.grad(self.network, self.weights)(*inputs, sens)

    @ms.jit
    def _graph_accumulate_counted(self, grads):
        out = self._accumulate_op(self._one, *self.accumulators, *grads)
        return ops.depend(out, ops.assign_add(self.micro_step, Tensor(1, ms.int32)))

    @ms.jit
    def _graph_backward(self, *inputs):
        return self._backward(inputs)

    @ms.jit
    def _graph_accumulate(self, grads):
        return self._accumulate_op(self._one, *self.accumulators, *grads)

    def _squares(self, *tensors):
        """sum(x * x) over every element of ``tensors``, as a float32 scalar (one kernel)."""
        total, _workspace = self._squares_op(*tensors)
        return ops.reshape(total, ())

    @ms.jit
    def _graph_squares(self):
        return self._squares(*self.accumulators)

    @ms.jit
    def _graph_squares_with(self, grads):
        return self._squares(*self.accumulators, *grads)

    def _reduce_window(self, count):
        """One AllReduce of [all accumulators..., count]: the sum over workers, and the total
        number of micro-batches (so uneven partial windows still average exactly)."""
        flat = ops.concat([ops.reshape(a, (-1,)) for a in self.accumulators] + [ops.reshape(count, (1,))])
        flat = self._allreduce(flat)
        # Slices, not ops.split: in GRAPH mode ops.split unrolls a Python loop over the sections
        # and exceeds MindSpore's function call depth limit (1000) from ~100 tensors (ResNet50: 161).
        reduced = tuple(ops.reshape(flat[o:o + n], w.shape)
                        for o, n, w in zip(self._offsets, self._sizes, self.weights))
        total = sum(self._sizes)
        return reduced, flat[total:total + 1].reshape(())

    @ms.jit
    def _graph_reduce(self, count):
        return self._reduce_window(count)

    @ms.jit
    def _graph_squares_of(self, tensors):
        return self._squares(*tensors)

    @ms.jit
    def _graph_fused_update_reduced(self, reduced, grad_scale):
        out = self.optimizer.fused_update(None, reduced, grad_scale)
        out = self._zero_op(*ops.depend(self.accumulators, out))
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    @ms.jit
    def _graph_optimizer_update_reduced(self, reduced, grad_scale):
        mean_grads = tuple(ops.cast(g * grad_scale, w.dtype) for g, w in zip(reduced, self.weights))
        out = self._zero_op(*ops.depend(self.accumulators, self.optimizer(mean_grads)))
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    @ms.jit
    def _graph_fused_update(self, grads, grad_scale):
        out = self.optimizer.fused_update(self.accumulators, grads, grad_scale)
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    @ms.jit
    def _graph_fused_update_acc(self, grad_scale):
        out = self.optimizer.fused_update(self.accumulators, None, grad_scale)
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    @ms.jit
    def _graph_optimizer_update(self, grad_scale):
        mean_grads = tuple(ops.cast(a * grad_scale, w.dtype) for a, w in zip(self.accumulators, self.weights))
        out = self._zero_op(*ops.depend(self.accumulators, self.optimizer(mean_grads)))
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    @ms.jit
    def _graph_discard(self):
        out = self._zero_op(*self.accumulators)
        out = ops.depend(out, ops.assign_add(self.skipped_updates, Tensor(1, ms.int32)))
        return ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))

    def _overflow_update(self, finite):
        """Feeds the loss-scale cell; returns whether the window's update may proceed."""
        overflow = ops.logical_not(finite)
        if self.scale_update_cell is not None:
            overflow = self.scale_update_cell(self.loss_scale, overflow)
        return ops.logical_not(overflow)

    # ------------------------------------------------------------------ inlined into a graph
    def construct(self, *inputs):
        """The same semantics as a call from Python, as one graph with control flow (used when
        MindSpore inlines the cell, e.g. dataset sink mode; MindSpore 2.10 then keeps far more
        memory alive than the straight-line graphs used otherwise)."""
        loss, grads = self._backward(inputs)
        count = self.micro_step + 1
        if count >= self.accumulation_steps:
            fuse_last = self.fused and self.clip_global_norm is None and not self.distributed
            total = ops.cast(count, ms.float32)
            if fuse_last:
                squares = self._squares(*self.accumulators, *grads)
                after = self._one
            else:
                after = self._accumulate_op(self._one, *self.accumulators, *grads)
                squares = self._squares(*ops.depend(self.accumulators, after))
            sources = self.accumulators
            if self.distributed:  # one all-reduce of the whole window, as in the dispatched path
                sources, total = self._reduce_window(ops.depend(total, after))
                squares = self._squares(*sources)
            # before the loss-scale cell updates the scale: the window was computed with this one
            grad_scale = 1.0 / (total * self.loss_scale)
            proceed = self._overflow_update(ops.isfinite(squares))
            if self.clip_global_norm is not None:
                norm = ops.sqrt(squares) * grad_scale
                grad_scale = grad_scale * ops.minimum(
                    Tensor(1.0, ms.float32), self.clip_global_norm / ops.maximum(norm, Tensor(1e-30, ms.float32)))
            if proceed:
                if fuse_last:
                    out = self.optimizer.fused_update(self.accumulators, grads, grad_scale)
                elif self.fused and not self.distributed:
                    out = self.optimizer.fused_update(ops.depend(self.accumulators, after), None, grad_scale)
                elif self.fused:
                    out = self.optimizer.fused_update(None, sources, grad_scale)
                    out = self._zero_op(*ops.depend(self.accumulators, out))
                else:
                    sources = ops.depend(sources, after)
                    mean_grads = tuple(ops.cast(a * grad_scale, w.dtype) for a, w in zip(sources, self.weights))
                    out = self._zero_op(*ops.depend(self.accumulators, self.optimizer(mean_grads)))
            else:
                out = self._zero_op(*ops.depend(self.accumulators, after))
                out = ops.depend(out, ops.assign_add(self.skipped_updates, Tensor(1, ms.int32)))
            out = ops.depend(out, ops.assign(self.micro_step, Tensor(0, ms.int32)))
        else:
            out = self._accumulate_op(self._one, *self.accumulators, *grads)
            out = ops.depend(out, ops.assign(self.micro_step, count))
        return ops.depend(loss, out)

    # ------------------------------------------------------------------ PyNative CPU path
    def _host_path(self) -> bool:
        return ms.get_context("mode") == ms.PYNATIVE_MODE and ms.get_context("device_target") == "CPU"

    def _host_micro_step(self, *inputs):
        loss, grads = self._backward(inputs)
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
        if grad_views is not None and (self.distributed or not self.fused or self.clip_global_norm is not None):
            kernels.accumulate(acc_views, grad_views, 1.0)
            grad_views = None
        update_views, fused_acc = acc_views, True  # what the update reads; whether it is the accumulators
        if self.distributed:
            reduced, total = self._reduce_window(Tensor(float(count), ms.float32))
            count = float(total.asnumpy())
            if count == 0:  # a flush with every worker's window empty
                return False
            update_views, fused_acc = [r.asnumpy() for r in reduced], False
        with np.errstate(over="ignore"):  # rounded to float32 as the GRAPH-mode op's result: overflow is inf
            squares = float(np.float32(kernels.sum_of_squares(update_views + (grad_views or []))))
        loss_scale = float(self.loss_scale.asnumpy())  # before the update cell may change it
        proceed = bool(self._overflow_update(Tensor(np.isfinite(squares))).asnumpy())
        if proceed:
            grad_scale = float(self._grad_scale(count, squares, loss_scale).asnumpy())
            if self.fused:
                self.optimizer.host_update(update_views if fused_acc else None,
                                           grad_views if fused_acc else update_views, grad_scale)
            else:
                sources = self.accumulators if fused_acc else reduced
                mean_grads = tuple(ops.cast(a * grad_scale, w.dtype) for a, w in zip(sources, self.weights))
                self.optimizer(mean_grads)
                _ = self.weights[0].asnumpy()  # the optimizer has run before the accumulators are reset
        else:
            self.skipped_updates.asnumpy()[...] += 1
        if not (proceed and self.fused and fused_acc):  # else the fused kernel has already reset them
            for view in acc_views:
                view[...] = 0.0
        self.micro_step.asnumpy()[...] = 0
        if not proceed:
            self._report_skipped()
        return proceed


class FlushAtEpochEnd(Callback):
    """``mindspore.train`` callback: applies a GradAccumCell's partial window at every epoch end,
    so no micro-batch of an epoch is carried into the next one."""

    def __init__(self, cell: GradAccumCell):
        super().__init__()
        self.cell = cell

    def on_train_epoch_end(self, run_context):
        self.cell.flush()
