"""GradAccumCell: gradient accumulation over micro-batches as a MindSpore training cell.

One micro-step and one window end, each written once (see docs/design.md):

    micro-step:  backward -> weigh -> accumulate -> count
    window end:  sum (all-reduce across workers) -> check -> normalise (+clip) -> update -> count

GRAPH mode compiles each into one graph dispatched from Python (each held by a small top-level
Cell, see _MicroStepGraph); PYNATIVE runs the micro-step eagerly and compiles the window end
(``@ms.jit``); ``construct`` composes both into one graph when MindSpore inlines the cell (dataset
sink mode). The window's state is one object (_state.AccumulationState); the backend -- our fused
kernels or MindSpore's own operators (backends/) -- is the only thing that varies inside the stages.
"""

from __future__ import annotations

import warnings
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from . import _compat, _optimizers, backends
from ._state import AccumulationState, SkipReason
from .backends import choose_backend
from .callbacks import FlushAtEpochEnd  # defined there; importable from here as before
from .optim import FusedOptimizer

__all__ = ["GradAccumCell", "FlushAtEpochEnd"]

WEIGHTS = ("size", "equal")
# The window's item count travels through the float32 all-reduce as hi * 4096 + lo: both parts
# stay exact integers in float32 up to 2**24 (items < 6.8e10, fewer than 4096 workers).
_ITEMS_SPLIT = 4096


class GradAccumCell(nn.Cell):
    """Accumulates gradients over ``accumulation_steps`` micro-batches, then updates once.

    Like ``nn.TrainOneStepCell``: ``cell(*inputs)`` runs one micro-batch and returns its loss;
    every ``accumulation_steps``-th call applies one update with the window's gradient and starts
    a new window. The update is exactly the one of the large batch (no BatchNorm), also when the
    micro-batches differ in size:

    * a network returning a **mean** loss: each micro-batch is weighted by its number of samples,
      the leading dimension of the first input (``micro_batch_weight="size"``, the default), so
      micro-batches of 8, 8, 8 and 5 give the update of the batch of 29.
      ``micro_batch_weight="equal"`` averages the micro-batch means instead (the behaviour before
      0.2.0, and of optax, Lightning and Accelerate).
    * a network returning **(loss_sum, num_items)** -- a sum-reduced loss and the number of items
      it covers (samples, or non-padding tokens): the update is sum of gradients / sum of items
      over the window and over all workers (token-exact for language models); the cell returns
      ``loss_sum / num_items`` of the micro-batch.

    A loss of shape ``(1,)`` counts as a scalar (in both contracts); ``num_items`` must be an
    integer tensor. Extra outputs: with ``has_aux=True`` the network returns ``(loss, aux...)`` or
    ``((loss_sum, num_items), aux...)``; only the loss is differentiated and every call returns
    ``(loss, aux)`` -- ``aux`` the second output when there are two, else the tuple of the outputs
    after the first. A cell that already updates weights (``nn.TrainOneStepCell``, anything holding
    an optimizer) is refused: pass its loss cell and optimizer instead.

    :meth:`flush` applies a partial window; :attr:`pending` tells how many micro-batches wait.

    Args:
        network_with_loss: a Cell returning a scalar mean loss or ``(loss_sum, num_items)``
            (e.g. ``nn.WithLossCell(network, loss_fn)``), followed by extra outputs if ``has_aux``.
        optimizer: any ``nn.Optimizer`` built with ``loss_scale=1``. With :class:`FusedMomentum`
            or :class:`FusedAdamW` the averaging, clipping scale and optimizer step are one pass.
        accumulation_steps: micro-batches per update (>= 1), or a schedule of it -- a list of
            ``(from_update, steps)`` pairs (the first from update 0, increasing) or a callable
            ``update_index -> steps`` -- the batch-size ramp of large-model training, or a
            growing batch in place of learning-rate decay (Smith et al. 2017, "Don't Decay the
            Learning Rate, Increase the Batch Size"). ``update_index`` is the optimizer's
            ``global_step`` (updates applied so far, checkpointed with it); the value changes
            only at window boundaries, and a resumed job continues the schedule exactly. A
            schedule needs the cell called from Python: inside @ms.jit or dataset sink mode it raises.
        clip_global_norm: clip the window's gradient to this global L2 norm (after
            accumulation and unscaling, before weight decay and the optimizer).
        loss_scale: None, a float (static), or a loss-scale update cell / amp manager. Gradients
            are unscaled once per window. A non-finite value anywhere in the window skips the
            update (and lowers a dynamic scale); :attr:`skipped_updates` counts such windows.
        nonfinite: ``"skip"`` (warn, unless a loss-scale cell expects overflows) or ``"raise"``
            (``FloatingPointError``) for a skipped window -- non-finite, or holding zero items.
        micro_batch_weight: ``"size"`` or ``"equal"`` (mean-loss networks only, see above).
        backend: ``"auto"``, ``"kernels"`` (our fused kernels, CPU/GPU) or ``"native"``
            (MindSpore's operators: every device, e.g. Ascend). Same math, state and checkpoints.
        has_aux: the network returns extra outputs after the loss (see above), as in
            ``ms.value_and_grad(..., has_aux=True)``; the cell then returns ``(loss, aux)``.

    All state (accumulators, micro-step and item counters, loss scale, skip counter, the
    optimizer's moments and step) lives in non-trainable Parameters: checkpoints capture it and
    resume mid-window bit-identically, across backends too.
    """

    def __init__(
        self,
        network_with_loss: nn.Cell,
        optimizer: nn.Optimizer,
        accumulation_steps: int,
        *,
        clip_global_norm: Optional[float] = None,
        loss_scale=None,
        nonfinite: str = "skip",
        micro_batch_weight: str = "size",
        backend: str = "auto",
        has_aux: bool = False,
    ):
        super().__init__(auto_prefix=False)
        _check_arguments(
            network_with_loss, optimizer, accumulation_steps, clip_global_norm, nonfinite, micro_batch_weight
        )
        if not isinstance(has_aux, bool):
            raise TypeError(f"has_aux must be True or False, got {has_aux!r}")
        self.has_aux = has_aux
        # A schedule: read at the start of every window (Python dispatch), see _start_window.
        self._schedule = _steps_schedule(accumulation_steps)
        self._scheduled = self._schedule is not None
        self.accumulation_steps = (
            int(accumulation_steps) if self._schedule is None else self._schedule(_optimizers.update_index(optimizer))
        )
        self.clip_global_norm = None if clip_global_norm is None else float(clip_global_norm)
        self.nonfinite = nonfinite
        self.micro_batch_weight = micro_batch_weight
        self.backend, self.backend_reason = choose_backend(backend, owner="GradAccumCell")
        self.fused = isinstance(optimizer, FusedOptimizer)
        self.world_size = _data_parallel_world_size()
        self.distributed = self.world_size > 1
        update_cell, scale_value = _loss_scale_cell(loss_scale)
        # The state first: its Parameters then follow the weights in parameters_dict() and in
        # checkpoints, where the cell's own Parameters were before the state was one object.
        weights = _optimizers.weights(optimizer)
        self.state = AccumulationState(weights, self.accumulation_steps, self.world_size, scale_value)
        self.network = network_with_loss
        self.optimizer = optimizer
        self.weights = weights
        self.scale_update_cell = update_cell
        self._ops = backends.make(self.backend)
        self._grad_fn = ms.value_and_grad(self._scaled_loss, None, self.weights, has_aux=True)
        if self.distributed:
            self._allreduce = ops.AllReduce(ops.ReduceOp.SUM)
            self._sizes = tuple(int(np.prod(w.shape)) for w in self.weights)
            self._offsets = tuple(int(o) for o in np.cumsum((0,) + self._sizes)[:-1])
        self._one = Tensor(1.0, ms.float32)
        self._done = Tensor([0.0], ms.float32)  # what a window end returns when nothing ran
        # Not child cells (object.__setattr__): they hold this cell, not the other way round, so
        # checkpoints, parameters and set_train of this cell are unaffected by them.
        object.__setattr__(self, "_micro_step_graph", _MicroStepGraph(self))
        object.__setattr__(self, "_window_end_graph", _WindowEndGraph(self))

    # ------------------------------------------------------------------ public API
    @property
    def pending(self) -> int:
        """Micro-batches accumulated since the last update."""
        return self.state.pending()

    # The state's Parameters, also as attributes of the cell (as in 0.2; read them, do not rebind).
    accumulators = property(lambda self: self.state.accumulators, doc="The window's gradient sums (float32).")
    micro_step = property(lambda self: self.state.micro_step, doc="Micro-batches in the window (int32 Parameter).")
    items = property(lambda self: self.state.items, doc="Items in the window on this worker (int64 Parameter).")
    window_steps = property(
        lambda self: self.state.window_steps, doc="accumulation_steps of the pending window (int32 Parameter)."
    )
    window_world_size = property(
        lambda self: self.state.window_world_size, doc="World size of the pending window (int32 Parameter)."
    )
    skipped_updates = property(lambda self: self.state.skipped_updates, doc="Windows skipped so far (int32 Parameter).")
    skip_reason = property(
        lambda self: self.state.skip_reason, doc="A SkipReason, of the last window end (int32 Parameter)."
    )
    loss_scale = property(lambda self: self.state.loss_scale, doc="The current loss scale (float32 Parameter).")

    def __call__(self, *inputs):
        # Calls from Python run the micro-step as one graph (GRAPH mode) or eagerly (PYNATIVE),
        # then the window end as one graph when the window is full. `construct` is the in-graph
        # composition, used only when MindSpore inlines this cell (e.g. dataset sink mode).
        pending, must_end = self._pending_window()
        if must_end:
            self._finish_window()
            pending = 0
        if pending == 0 and self._scheduled:
            self._start_window()
        if ms.get_context("mode") == ms.GRAPH_MODE:
            loss = self._micro_step_graph(*inputs)
        else:
            try:
                loss = self._micro_step(*inputs)
            except BaseException:
                # An exception inside PyNative's backward leaves its grad executor mid-graph, and
                # the next graph compiled in this process inherits it; reset it.
                _compat.reset_pynative_grad()
                raise
        if self._window_full(pending + 1):
            self._finish_window()
        return loss

    def flush(self) -> bool:
        """Applies the pending partial window (its items' mean gradient). A no-op on an empty
        window. Returns True when an update was applied."""
        # Data parallel: every worker joins the window's all-reduce, even with nothing pending
        # (otherwise one worker's flush would pair with another worker's next reduction).
        pending, _ = self._pending_window()
        if pending == 0 and not self.distributed:
            return False
        return self._finish_window()

    def construct(self, *inputs):
        """Micro-step and (every ``accumulation_steps``-th call) window end as one graph."""
        if self._scheduled:  # a compiled graph keeps the steps it was compiled with
            raise RuntimeError(
                "GradAccumCell: an accumulation_steps schedule changes between windows, which a compiled graph "
                "cannot follow; call the cell from Python (not inside @ms.jit or dataset sink mode), or pass an int"
            )
        out = self._micro_step(*inputs)
        if self._window_full(self.state.micro_step):
            if self.has_aux:
                return ops.depend(out[0], self._window_end()), out[1]
            out = ops.depend(out, self._window_end())
        return out

    def _window_full(self, micro_batches):
        """Whether a window of ``micro_batches`` (an int from Python, a Tensor in a graph) is full."""
        return micro_batches >= self.accumulation_steps

    # ------------------------------------------------------------------ the micro-step
    def _micro_step(self, *inputs):
        values, grads = self._grad_fn(*inputs)
        loss, items, weight = values[1], values[2], values[3]
        first = ops.equal(self.state.micro_step, 0)  # the first micro-batch writes its accumulator
        out = self._ops.accumulate(self.state.accumulators, grads, weight, first)
        # With a schedule, Python records the window's steps when it starts (_start_window): a
        # compiled graph would keep the value it was compiled with.
        steps = None if self._scheduled else self.accumulation_steps
        out = self.state.count_micro_batch(out, items, steps, self.world_size)
        if self.has_aux:
            return ops.depend(loss, out), values[4]
        return ops.depend(loss, out)

    def _scaled_loss(self, *inputs):
        """(loss * loss_scale, the micro-batch's loss, its items, the weight of its gradient in
        the window sum[, aux]): the loss contract, checked when the graph is built."""
        out = self.network(*inputs)
        if self.has_aux:
            out, aux = _split_aux(out)
            return self._contract(out, inputs) + (aux,)
        return self._contract(out, inputs)

    def _contract(self, out, inputs):
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise TypeError(
                    f"GradAccumCell: the network must return a scalar mean loss or a pair (loss_sum, "
                    f"num_items); it returned a tuple of {len(out)}. To return extra outputs (logits, "
                    "metrics), build the cell with has_aux=True and return (loss, aux...) or "
                    "((loss_sum, num_items), aux...)"
                )
            loss_sum, items = out
            _check_pair(loss_sum, items)
            items = ops.cast(ops.reshape(items, ()), ms.int64)
            total = ops.reshape(loss_sum, ())
            loss = ops.reshape(total / ops.cast(ops.maximum(items, 1), total.dtype), loss_sum.shape)
            return total * ops.cast(self.state.loss_scale, total.dtype), loss, items, self._one
        _check_mean_loss(out)
        scaled = ops.reshape(out, ()) * ops.cast(self.state.loss_scale, out.dtype)
        if self.micro_batch_weight == "equal":
            return scaled, out, Tensor(1, ms.int64), self._one
        if len(inputs) == 0 or inputs[0].ndim == 0:
            raise TypeError(
                "GradAccumCell: micro_batch_weight='size' weighs a mean loss by the leading dimension of "
                "the first input, which has none; return (loss_sum, num_items) or use 'equal'"
            )
        size = inputs[0].shape[0]
        return scaled, out, Tensor(size, ms.int64), Tensor(float(size), ms.float32)

    # ------------------------------------------------------------------ the window end
    def _window_end(self):
        """One window end: every write comes after every step that can fail, so an error leaves
        the state of before the window end (see docs/design.md)."""
        sources, items, micro_batches = self._window_sum()
        squares = self._ops.sum_of_squares(sources)
        finite = ops.isfinite(squares)
        # the scale the window was computed with, read before the loss-scale cell may change it
        grad_scale = self._normalise(items, squares)
        proceed = ops.logical_and(finite, items > 0)
        if proceed:
            out = self._update(sources, grad_scale)
        else:
            out = self._done
        return self._count_window(out, finite, items, micro_batches)

    def _window_sum(self):
        """(tensors holding the window's gradient sum, total items, micro-batches): the local
        accumulators, or one AllReduce over workers of [accumulators..., items, micro-batches]."""
        items, micro_batches = self.state.items, ops.cast(self.state.micro_step, ms.float32)
        if not self.distributed:
            return self.state.accumulators, items, micro_batches
        hi = ops.cast(items // _ITEMS_SPLIT, ms.float32)
        lo = ops.cast(items % _ITEMS_SPLIT, ms.float32)
        counts = ops.stack([hi, lo, micro_batches])
        flat = ops.concat([ops.reshape(a, (-1,)) for a in self.state.accumulators] + [counts])
        flat = self._allreduce(flat)
        # Slices, not ops.split: in GRAPH mode ops.split unrolls a Python loop over the sections
        # and exceeds MindSpore's function call depth limit (1000) from ~100 tensors (ResNet50: 161).
        sums = tuple(ops.reshape(flat[o : o + n], w.shape) for o, n, w in zip(self._offsets, self._sizes, self.weights))
        total = sum(self._sizes)
        items = ops.cast(flat[total], ms.int64) * _ITEMS_SPLIT + ops.cast(flat[total + 1], ms.int64)
        return sums, items, flat[total + 2]

    def _normalise(self, items, squares):
        """1 / (items * loss scale), times the clip factor of the window's mean gradient."""
        grad_scale = 1.0 / (ops.cast(ops.maximum(items, 1), ms.float32) * self.state.loss_scale)
        if self.clip_global_norm is not None:
            norm = ops.sqrt(squares) * grad_scale
            grad_scale = grad_scale * ops.minimum(self._one, self.clip_global_norm / ops.maximum(norm, 1e-30))
        return grad_scale

    def _update(self, sources, grad_scale):
        if self.fused:
            return self.optimizer.window_update(sources, grad_scale)
        mean_grads = tuple(ops.cast(s * grad_scale, w.dtype) for s, w in zip(sources, self.weights))
        return ops.depend(self._done, _optimizers.apply(self.optimizer, mean_grads))

    def _count_window(self, out, finite, items, micro_batches):
        """Feeds the loss-scale cell, then the state counts the window and starts the next one."""
        if self.scale_update_cell is not None:
            out = ops.depend(out, self.scale_update_cell(self.state.loss_scale, ops.logical_not(finite)))
        return self.state.close_window(out, finite, items, micro_batches)

    # ------------------------------------------------------------------ dispatch from Python
    def set_train(self, mode=True):
        super().set_train(mode)
        for graph in (self._micro_step_graph, self._window_end_graph):  # their compile cache is keyed by it
            graph.set_train(mode)
        return self

    @ms.jit
    def _graph_window_end(self):  # PYNATIVE (a Cell would run eagerly there)
        return self._window_end()

    def _finish_window(self) -> bool:
        """Runs the window end and reports a skipped window; True when an update was applied."""
        if ms.get_context("mode") == ms.GRAPH_MODE:
            self._window_end_graph()
        else:
            self._graph_window_end()
        reason = self.state.last_skip_reason()
        if reason in (SkipReason.NONFINITE, SkipReason.NO_ITEMS):
            self._report_skipped(reason)
        return reason == SkipReason.APPLIED

    def _report_skipped(self, reason: SkipReason) -> None:
        skipped = int(self.state.skipped_updates.asnumpy())
        what = (
            "a non-finite gradient in the accumulation window"
            if reason == SkipReason.NONFINITE
            else "the accumulation window holds zero items (num_items summed to 0)"
        )
        message = (
            f"GradAccumCell: {what}; the update was skipped and weights left unchanged "
            f"({skipped} window(s) skipped so far)"
        )
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        if (
            reason == SkipReason.NO_ITEMS or self.scale_update_cell is None
        ):  # with a dynamic scale, overflows are routine
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _start_window(self) -> None:
        """A scheduled cell: the steps of the window that starts now, recorded in the state."""
        self.accumulation_steps = self._schedule(_optimizers.update_index(self.optimizer))
        self.state.window_steps.set_data(Tensor(self.accumulation_steps, ms.int32))

    def _pending_window(self):
        """(micro-batches pending, whether that window must end before the next micro-batch).
        A window whose end was interrupted is full; one loaded from a checkpoint accumulated under
        another ``accumulation_steps`` ends early, as a flush (with a warning); one from another
        world size cannot be finished correctly and raises."""
        pending = self.pending
        if pending == 0:
            return 0, False
        stored_world = int(self.state.window_world_size.asnumpy())
        if stored_world != self.world_size:
            raise ValueError(
                f"GradAccumCell: the pending window ({pending} micro-batches) was accumulated by "
                f"{stored_world} worker(s) and this job has {self.world_size}; its sum cannot be "
                "finished correctly under another world size. Resume with the original world size, "
                "or save checkpoints at window boundaries (after flush())."
            )
        stored_steps = int(self.state.window_steps.asnumpy())
        if self._scheduled:  # the steps the schedule gives this window (global_step is checkpointed)
            self.accumulation_steps = self._schedule(_optimizers.update_index(self.optimizer))
        if stored_steps != self.accumulation_steps:
            warnings.warn(
                f"GradAccumCell: the pending window ({pending} micro-batches) was accumulated with "
                f"accumulation_steps={stored_steps}, this cell has {self.accumulation_steps}; it is "
                "applied now as a partial window (the mean over the items it holds), then "
                "accumulation continues with the new setting",
                RuntimeWarning,
                stacklevel=3,
            )
            return pending, True
        return pending, self._window_full(pending)


# ---------------------------------------------------------------------- GRAPH-mode dispatch


class _MicroStepGraph(nn.Cell):
    """The micro-step as the graph of a top-level Cell (GRAPH mode). MindSpore launches a
    Cell's compiled graph with less host work than an ``ms.jit`` method's: ResNet50-CIFAR
    micro-step 3.76 s via a Cell vs 5.43 s via ``@ms.jit`` (docs/bench_overhead.md)."""

    def __init__(self, owner: GradAccumCell):
        super().__init__(auto_prefix=False)  # the owner's parameter names stay as they are
        self.owner = owner

    def construct(self, *inputs):
        return self.owner._micro_step(*inputs)


class _WindowEndGraph(nn.Cell):
    """The window end as the graph of a top-level Cell (GRAPH mode); see _MicroStepGraph."""

    def __init__(self, owner: GradAccumCell):
        super().__init__(auto_prefix=False)
        self.owner = owner

    def construct(self):
        return self.owner._window_end()


# ---------------------------------------------------------------------- construction helpers


def _check_arguments(
    network_with_loss, optimizer, accumulation_steps, clip_global_norm, nonfinite, micro_batch_weight
) -> None:
    if not isinstance(network_with_loss, nn.Cell):
        how = (
            "wrap the function in an nn.Cell whose construct calls it, e.g. class LossCell(nn.Cell) with "
            "self.net = net and construct(self, x, y): return loss_fn(self.net(x), y) (the weights must be "
            "Parameters of that cell or its children)"
            if callable(network_with_loss)
            else "pass a Cell returning the loss, e.g. nn.WithLossCell(network, loss_fn)"
        )
        raise TypeError(f"network_with_loss must be an nn.Cell, got {type(network_with_loss).__name__}: {how}")
    _check_not_an_update(network_with_loss)
    _optimizers.check_optimizer(optimizer, owner="GradAccumCell")
    if isinstance(accumulation_steps, (list, tuple)) or callable(accumulation_steps):
        pass  # a schedule, checked by _steps_schedule
    elif (
        isinstance(accumulation_steps, bool)
        or not isinstance(accumulation_steps, (int, np.integer))
        or accumulation_steps < 1
    ):
        raise ValueError(f"accumulation_steps must be an integer >= 1 or a schedule, got {accumulation_steps!r}")
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
    if micro_batch_weight not in WEIGHTS:
        raise ValueError(f"micro_batch_weight must be 'size' or 'equal', got {micro_batch_weight!r}")
    if clip_global_norm is not None and not (float(clip_global_norm) > 0.0):
        raise ValueError(f"clip_global_norm must be a positive number or None, got {clip_global_norm!r}")


# Cells that apply an update themselves: inside GradAccumCell every micro-batch would update twice.
_UPDATERS = (nn.TrainOneStepCell, nn.Optimizer, GradAccumCell)
try:  # mindspore.experimental.optim / mint.optim optimizers are Cells too (MindSpore >= 2.2)
    from mindspore.experimental.optim import Optimizer as _ExperimentalOptimizer

    _UPDATERS += (_ExperimentalOptimizer,)
except ImportError:  # pragma: no cover - older MindSpore
    pass


def _check_not_an_update(network_with_loss) -> None:
    for name, cell in network_with_loss.cells_and_names():
        if isinstance(cell, _UPDATERS):
            where = "is" if not name else f"holds at '{name}'"
            raise TypeError(
                f"GradAccumCell: network_with_loss {where} a {type(cell).__name__}, which updates the weights "
                "itself (every micro-batch would then update them twice). Pass the loss cell and the optimizer "
                "separately: GradAccumCell(nn.WithLossCell(net, loss_fn), optimizer, accumulation_steps) -- for "
                "a TrainOneStepCell, its .network and .optimizer"
            )


# num_items counts items: an integer tensor (a float one is most likely another quantity, e.g. a metric)
_INTEGER_TYPES = (ms.int8, ms.int16, ms.int32, ms.int64, ms.uint8, ms.uint16, ms.uint32, ms.uint64)


def _is_single(x) -> bool:
    """A scalar or a single-element tensor of shape (1,) (MindFormers' models return those)."""
    return x.ndim == 0 or (x.ndim == 1 and x.shape[0] == 1)


def _check_pair(loss_sum, items) -> None:
    """The pair contract (loss_sum, num_items), checked when the graph is built."""
    if not isinstance(loss_sum, Tensor) or not isinstance(items, Tensor):
        raise TypeError(
            "GradAccumCell: (loss_sum, num_items) must be two tensors; return num_items as an integer "
            "tensor, e.g. ops.cast(mask.sum(), ms.int32)"
        )
    if not _is_single(loss_sum) or not _is_single(items):
        raise TypeError(
            f"GradAccumCell: (loss_sum, num_items) must be two scalars (or tensors of shape (1,)); got shapes "
            f"{loss_sum.shape} and {items.shape}"
        )
    if items.dtype not in _INTEGER_TYPES:
        raise TypeError(
            f"GradAccumCell: the network returned a pair whose second output has dtype {items.dtype}; a pair is "
            "read as (loss_sum, num_items), and num_items must be an integer tensor (the count of items "
            "loss_sum sums over, e.g. ops.cast(mask.sum(), ms.int32)). To return a mean loss with extra "
            "outputs (accuracy, logits), build the cell with has_aux=True and return (loss, aux...)"
        )


def _check_mean_loss(out) -> None:
    """The mean-loss contract: a single-element tensor, checked when the graph is built."""
    if not isinstance(out, Tensor):
        raise TypeError(
            "GradAccumCell: the network must return a scalar mean loss or a pair (loss_sum, num_items) of "
            "tensors; wrap the network and its loss in a Cell, e.g. nn.WithLossCell(network, loss_fn)"
        )
    if not _is_single(out):
        raise TypeError(
            f"GradAccumCell: the network must return a scalar mean loss or a pair (loss_sum, num_items); it "
            f"returned a tensor of shape {out.shape} -- network outputs, not a loss? Pass the network with its "
            "loss, e.g. nn.WithLossCell(network, loss_fn), or a Cell whose construct returns the loss"
        )


def _split_aux(out):
    """has_aux=True: (loss part, aux) of a network returning (loss, aux...) or ((loss_sum, num_items), aux...);
    aux is the second output alone or the tuple of the outputs after the first."""
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        raise TypeError(
            "GradAccumCell(has_aux=True): the network must return (loss, aux...) or ((loss_sum, num_items), "
            "aux...); it returned a single output. Return the extra outputs after the loss, or build the cell "
            "with has_aux=False"
        )
    if len(out) == 2:
        return out[0], out[1]
    return out[0], tuple(out[1:])


def _is_count(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low


def _steps_schedule(accumulation_steps):
    """None for an int; else ``update_index -> steps`` from a list of (from_update, steps) pairs
    or a callable, whose values are checked when used."""
    if not isinstance(accumulation_steps, (list, tuple)) and not callable(accumulation_steps):
        return None
    if callable(accumulation_steps):
        fn = accumulation_steps
    else:
        pairs = [tuple(p) if isinstance(p, (list, tuple)) else p for p in accumulation_steps]
        if not pairs or any(not isinstance(p, tuple) or len(p) != 2 for p in pairs):
            raise ValueError(
                "accumulation_steps as a schedule must be a non-empty list of (from_update, steps) "
                f"pairs, got {accumulation_steps!r}"
            )
        starts = [p[0] for p in pairs]
        if (
            starts[0] != 0
            or any(not _is_count(a, 0) for a in starts)
            or any(b <= a for a, b in zip(starts, starts[1:]))
        ):
            raise ValueError(
                "accumulation_steps: the schedule's from_update values must be ints, the first 0, "
                f"strictly increasing; got {starts}"
            )
        for _, steps in pairs:
            if not _is_count(steps, 1):
                raise ValueError(
                    f"accumulation_steps: every steps value of the schedule must be an int >= 1, got {steps!r}"
                )
        table = [(int(a), int(b)) for a, b in pairs]

        def fn(update):
            return next(steps for start, steps in reversed(table) if update >= start)

    def checked(update: int) -> int:
        steps = fn(update)
        if not _is_count(steps, 1):
            raise ValueError(
                f"accumulation_steps: the schedule gave {steps!r} for update {update}; it must give an int >= 1"
            )
        return int(steps)

    return checked


def _data_parallel_world_size() -> int:
    """Workers whose windows are summed: 1 stand-alone, the device count in data parallel; other
    parallel modes shard the network in ways a separately compiled window cannot follow."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    if mode in ("stand_alone", None, ""):
        return 1
    if mode == "data_parallel":
        from mindspore.communication import get_group_size

        return int(get_group_size())
    raise ValueError(
        f"GradAccumCell supports stand-alone and data-parallel training, not parallel_mode={mode!r}: "
        "in (semi-)auto and hybrid parallel the gradients of our separately compiled window are "
        "neither sharded nor reduced by MindSpore. Use parallel_mode='data_parallel', or MindSpore's "
        "own accumulation for those modes (set_auto_parallel_context(grad_accumulation_step=...))."
    )


def _loss_scale_cell(loss_scale):
    """(update cell or None, initial scale) from GradAccumCell's loss_scale argument."""
    if loss_scale is None:
        return None, 1.0
    update_cell = None
    if hasattr(loss_scale, "get_update_cell"):  # an amp loss-scale manager
        update_cell = loss_scale.get_update_cell()
        value = float(loss_scale.get_loss_scale())
        if (
            update_cell is None
            and hasattr(loss_scale, "get_drop_overflow_update")
            and not loss_scale.get_drop_overflow_update()
        ):
            warnings.warn(
                "GradAccumCell always skips windows with non-finite gradients; "
                "drop_overflow_update=False is not honoured",
                stacklevel=3,
            )
    elif isinstance(loss_scale, nn.Cell):
        update_cell, value = loss_scale, float(loss_scale.get_loss_scale())
    elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        value = float(loss_scale)
    else:
        raise TypeError(
            "loss_scale must be None, a float, a loss-scale update cell or an amp loss-scale manager, "
            f"got {type(loss_scale).__name__}"
        )
    if not value > 0.0:
        raise ValueError(f"loss_scale must be positive, got {value}")
    return update_cell, value
