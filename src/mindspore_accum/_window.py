"""The accumulation window, written once for every front end (GradAccumCell, GradAccumulator).

    micro-step (after the front end's backward):  weigh -> accumulate -> count (items, loss)
    window end:  sum (one all-reduce across workers) -> check -> normalise (+clip) -> update -> count

:class:`AccumulationWindow` holds the window's state (_state.AccumulationState), the optimizer
and the backend, and runs both stages: inside the front end's compiled graph (``construct``,
inlined in a user's ``@ms.jit`` or dataset sink mode), or dispatched from Python, where the window
end runs as one compiled graph (a top-level Cell in GRAPH mode, an ``ms.jit`` method in
PYNATIVE) and its outcome is reported on the host. A skipped window (non-finite, or zero items)
is recorded in the state, so one ended inside a compiled graph -- where nothing can warn or
raise -- is reported at the next host-side call (:meth:`AccumulationWindow.report_skipped`).
"""

from __future__ import annotations

import warnings

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from . import _optimizers, backends
from ._state import APPLIED, AccumulationState, SkipReason
from .backends import choose_backend
from .optim import FusedOptimizer
from .sharding.layout import check_mode
from .sharding.window import ShardedWindow

__all__ = ["AccumulationWindow"]

# The window's item count travels through the float32 all-reduce as hi * 4096 + lo: both parts
# stay exact integers in float32 up to 2**24 (items < 6.8e10, fewer than 4096 workers).
_ITEMS_SPLIT = 4096


class AccumulationWindow(nn.Cell):
    """Base class of the front ends: the window's state, optimizer and both stages.

    A front end calls :meth:`_init_window` (checks, creates the state), assigns its own
    children, then :meth:`_attach_optimizer` with what the first returned; its micro-step ends
    with :meth:`_accumulate`; a window ends with :meth:`_window_end` (in a graph) or
    :meth:`_finish_window` (from Python)."""

    def __init__(self):
        super().__init__(auto_prefix=False)  # the weights' and the state's names stay as they are

    # ------------------------------------------------------------------ construction
    def _init_window(
        self, optimizer, accumulation_steps, *, clip_global_norm, loss_scale, nonfinite, backend, shard=None
    ):
        """Checks the window's arguments and creates its state (the Parameters' place in
        ``parameters_dict()`` follows the order of assignment: the state first)."""
        owner = type(self).__name__
        _optimizers.check_optimizer(optimizer, owner=owner)
        _check_window_arguments(accumulation_steps, clip_global_norm, nonfinite)
        check_mode(shard, owner)
        # A schedule: read at the start of every window (Python dispatch), see _start_window.
        self._schedule = _steps_schedule(accumulation_steps)
        self._scheduled = self._schedule is not None
        self.accumulation_steps = (
            int(accumulation_steps) if self._schedule is None else self._schedule(_optimizers.update_index(optimizer))
        )
        self.clip_global_norm = None if clip_global_norm is None else float(clip_global_norm)
        self.nonfinite = nonfinite
        self.backend, self.backend_reason = choose_backend(backend, owner=owner)
        self.fused = isinstance(optimizer, FusedOptimizer)
        self.world_size = _data_parallel_world_size(owner)
        self.distributed = self.world_size > 1
        update_cell, scale_value = _loss_scale_cell(loss_scale, owner)
        weights = _optimizers.weights(optimizer)
        # One worker holds everything: sharding is then the replicated window (same checkpoints).
        self.shard_mode = shard if self.distributed else None
        self._sharding = None
        accumulators = None
        if self.shard_mode is not None:  # before the state: the optimizer's full state is released first
            from mindspore.communication import get_rank

            self._sharding = ShardedWindow(shard, optimizer, weights, self.world_size, get_rank(), owner)
            if shard == "gradients":
                accumulators = self._sharding.make_accumulators()
        self.state = AccumulationState(weights, self.accumulation_steps, self.world_size, scale_value, accumulators)
        return weights, update_cell

    def _attach_optimizer(self, optimizer, weights, update_cell) -> None:
        """The optimizer, the loss-scale cell and the backend (after the front end's children)."""
        self.optimizer = optimizer
        self.weights = weights
        self.scale_update_cell = update_cell
        self._ops = backends.make(self.backend)
        if self.distributed:
            self._allreduce = ops.AllReduce(ops.ReduceOp.SUM)
            self._sizes = tuple(int(np.prod(w.shape)) for w in self.weights)
            self._offsets = tuple(int(o) for o in np.cumsum((0,) + self._sizes)[:-1])
        self._one = Tensor(1.0, ms.float32)
        self._done = Tensor([0.0], ms.float32)  # what a window end returns when nothing ran
        # Not a child cell (object.__setattr__): it holds this cell, not the other way round, so
        # checkpoints, parameters and set_train of this cell are unaffected by it.
        object.__setattr__(self, "_window_end_graph", _WindowEndGraph(self))

    # ------------------------------------------------------------------ public API
    @property
    def pending(self) -> int:
        """Micro-batches accumulated since the last update."""
        return self.state.pending()

    # The state's Parameters, also as attributes (as in 0.2; read them, do not rebind).
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

    @property
    def window_loss(self) -> float:
        """The item-weighted mean loss of the last window (over all its micro-batches and
        workers: the loss of the large batch), read from the ``accumulation.window_loss``
        Parameter; 0 before the first window end, nan when no loss was given. Reports windows
        skipped inside a compiled graph first (see :meth:`report_skipped`)."""
        self.report_skipped(stacklevel=3)
        return float(self.state.window_loss.asnumpy())

    def flush(self) -> bool:
        """Applies the pending partial window (its items' mean gradient). A no-op on an empty
        window. Returns True when an update was applied."""
        self.report_skipped(stacklevel=3)
        # Data parallel: every worker joins the window's all-reduce, even with nothing pending
        # (otherwise one worker's flush would pair with another worker's next reduction).
        pending, _ = self._pending_window()
        if pending == 0 and not self.distributed:
            return False
        # Its accumulators still hold the last window's sums, and it must add zeros ("gradients"
        # holds sums already reduced over every worker: they are this window's).
        if pending == 0 and self.shard_mode != "gradients":
            self._graph_zero_accumulators()
        return self._finish_window()

    def report_skipped(self, stacklevel: int = 2) -> int:
        """Reports the windows skipped since the last report -- a non-finite gradient, or zero
        items -- as a ``RuntimeWarning`` (``nonfinite="skip"``; not for overflows under a dynamic
        loss scale, which are routine) or a ``FloatingPointError`` (``nonfinite="raise"``).

        Calls from Python report each window as it ends; a window ended inside a compiled graph
        (a ``@ms.jit`` train step, dataset sink mode) is recorded in the state and reported by
        the next host-side call: the next call from Python, :meth:`flush`, :attr:`window_loss`,
        or this method (e.g. from a callback). Returns the number of windows reported."""
        nonfinite, no_items = self.state.take_unreported_skips()
        if not (nonfinite or no_items):
            return 0
        skipped = int(self.state.skipped_updates.asnumpy())
        owner = type(self).__name__
        if nonfinite + no_items == 1:
            what = (
                "a non-finite gradient in the accumulation window"
                if nonfinite
                else "the accumulation window holds zero items (num_items summed to 0)"
            )
            message = f"{owner}: {what}; the update was skipped and weights left unchanged"
        else:
            message = (
                f"{owner}: {nonfinite + no_items} accumulation windows were skipped inside a compiled graph "
                f"since the last report ({nonfinite} with a non-finite gradient, {no_items} holding zero items); "
                "weights left unchanged by them"
            )
        message += f" ({skipped} window(s) skipped so far)"
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        if no_items or self.scale_update_cell is None:  # with a dynamic scale, overflows are routine
            warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)
        return nonfinite + no_items

    # ------------------------------------------------------------------ the micro-step's end
    def _accumulate(self, grads, weight, items, loss_sum):
        """Adds ``weight * grads`` to the window (the first micro-batch writes) and counts the
        micro-batch, its ``items`` (int64) and ``loss_sum`` (its loss summed over its items)."""
        first = ops.equal(self.state.micro_step, 0)  # the first micro-batch writes its accumulator
        if self.shard_mode == "gradients":  # reduced into this worker's range first
            out = self._sharding.accumulate(self._ops, self.state.accumulators, grads, weight, first)
        else:
            out = self._ops.accumulate(self.state.accumulators, grads, weight, first)
        # With a schedule, Python records the window's steps when it starts (_start_window): a
        # compiled graph would keep the value it was compiled with.
        steps = None if self._scheduled else self.accumulation_steps
        return self.state.count_micro_batch(out, items, loss_sum, steps, self.world_size)

    def _window_full(self, micro_batches):
        """Whether a window of ``micro_batches`` (an int from Python, a Tensor in a graph) is full."""
        return micro_batches >= self.accumulation_steps

    def _refuse_schedule_in_graph(self):
        if self._scheduled:  # a compiled graph keeps the steps it was compiled with
            raise RuntimeError(
                "an accumulation_steps schedule changes between windows, which a compiled graph cannot "
                "follow; call it from Python (not inside @ms.jit or dataset sink mode), or pass an int"
            )

    # ------------------------------------------------------------------ the window end
    def _window_end(self):
        """One window end: every write comes after every step that can fail, so an error leaves
        the state of before the window end (see docs/design.md)."""
        if self.shard_mode is None:
            sources, items, micro_batches, loss_sum = self._window_sum()
            squares = self._ops.sum_of_squares(sources)
        else:  # this worker's pieces of the sum; squares over all workers
            sources, items, micro_batches, loss_sum, squares = self._sharding.window_sum(self.state, self._ops)
        finite = ops.isfinite(squares)
        # the scale the window was computed with, read before the loss-scale cell may change it
        grad_scale = self._normalise(items, squares)
        proceed = ops.logical_and(finite, items > 0)
        if self.shard_mode is None:
            if proceed:
                out = self._update(sources, grad_scale)
            else:
                out = self._done
        else:
            pieces = self._sharding.weight_pieces(self.weights)
            if proceed:
                pieces, out = self.optimizer._shard_update(pieces, sources, grad_scale)
            else:
                out = self._done
            out = self._sharding.gather(self.weights, pieces, out)
        if self.scale_update_cell is not None:
            out = ops.depend(out, self.scale_update_cell(self.state.loss_scale, ops.logical_not(finite)))
        return self.state.close_window(out, finite, items, micro_batches, loss_sum)

    def _window_sum(self):
        """(tensors holding the window's gradient sum, total items, micro-batches, loss sum): the
        local state, or one AllReduce over workers of [accumulators..., items, micro-batches, loss]."""
        items, micro_batches = self.state.items, ops.cast(self.state.micro_step, ms.float32)
        if not self.distributed:
            return self.state.accumulators, items, micro_batches, self.state.loss_sum
        hi = ops.cast(items // _ITEMS_SPLIT, ms.float32)
        lo = ops.cast(items % _ITEMS_SPLIT, ms.float32)
        counts = ops.stack([hi, lo, micro_batches, self.state.loss_sum])
        flat = ops.concat([ops.reshape(a, (-1,)) for a in self.state.accumulators] + [counts])
        flat = self._allreduce(flat)
        # Slices, not ops.split: in GRAPH mode ops.split unrolls a Python loop over the sections
        # and exceeds MindSpore's function call depth limit (1000) from ~100 tensors (ResNet50: 161).
        sums = tuple(ops.reshape(flat[o : o + n], w.shape) for o, n, w in zip(self._offsets, self._sizes, self.weights))
        total = sum(self._sizes)
        items = ops.cast(flat[total], ms.int64) * _ITEMS_SPLIT + ops.cast(flat[total + 1], ms.int64)
        return sums, items, flat[total + 2], flat[total + 3]

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

    # ------------------------------------------------------------------ dispatch from Python
    def set_train(self, mode=True):
        super().set_train(mode)
        for graph in self._dispatch_graphs():  # their compile cache is keyed by it
            graph.set_train(mode)
        return self

    def _dispatch_graphs(self):
        return (self._window_end_graph,)

    @ms.jit
    def _graph_window_end(self):  # PYNATIVE (a Cell would run eagerly there)
        return self._window_end()

    @ms.jit
    def _graph_zero_accumulators(self):
        """Zeroes the accumulators in a compiled graph (a host-side set_data would replace the
        buffers that the compiled graphs keep writing)."""
        out = self._one
        for acc in self.state.accumulators:
            out = ops.depend(out, ops.assign(acc, ops.zeros_like(acc)))
        return out

    def _finish_window(self) -> bool:
        """Runs the window end, reports a skipped window; True when an update was applied."""
        if ms.get_context("mode") == ms.GRAPH_MODE:
            self._window_end_graph()
        else:
            self._graph_window_end()
        reason = self.state.last_skip_reason()
        self.report_skipped(stacklevel=4)
        return reason == SkipReason.APPLIED

    def _start_window(self) -> None:
        """A scheduled front end: the steps of the window that starts now, recorded in the state."""
        self.accumulation_steps = self._schedule(_optimizers.update_index(self.optimizer))
        self.state.window_steps.set_data(Tensor(self.accumulation_steps, ms.int32))

    def _before_micro_step(self) -> int:
        """From Python, before a micro-step: reports windows skipped in a graph since the last
        call, ends a window that must end first; returns the micro-batches pending."""
        self.report_skipped(stacklevel=4)
        pending, must_end = self._pending_window()
        if must_end:
            self._finish_window()
            pending = 0
        if pending == 0 and self._scheduled:
            self._start_window()
        return pending

    def _pending_window(self):
        """(micro-batches pending, whether that window must end before the next micro-batch).
        A window whose end was interrupted is full; one loaded from a checkpoint accumulated under
        another ``accumulation_steps`` ends early, as a flush (with a warning); one from another
        world size cannot be finished correctly and raises."""
        owner = type(self).__name__
        if self._sharding is not None:
            self._sharding.check_loaded(owner)
        pending = self.pending
        if pending == 0:
            return 0, False
        stored_world = int(self.state.window_world_size.asnumpy())
        if stored_world != self.world_size:
            raise ValueError(
                f"{owner}: the pending window ({pending} micro-batches) was accumulated by "
                f"{stored_world} worker(s) and this job has {self.world_size}; its sum cannot be "
                "finished correctly under another world size. Resume with the original world size, "
                "or save checkpoints at window boundaries (after flush())."
            )
        stored_steps = int(self.state.window_steps.asnumpy())
        if self._scheduled:  # the steps the schedule gives this window (global_step is checkpointed)
            self.accumulation_steps = self._schedule(_optimizers.update_index(self.optimizer))
        if stored_steps != self.accumulation_steps:
            warnings.warn(
                f"{owner}: the pending window ({pending} micro-batches) was accumulated with "
                f"accumulation_steps={stored_steps}, this one has {self.accumulation_steps}; it is "
                "applied now as a partial window (the mean over the items it holds), then "
                "accumulation continues with the new setting",
                RuntimeWarning,
                stacklevel=4,
            )
            return pending, True
        return pending, self._window_full(pending)

    def _applied(self, done):
        """In a graph, after a window end: whether it applied an update (a bool scalar)."""
        return ops.depend(ops.equal(self.state.skip_reason, APPLIED), done)


class _WindowEndGraph(nn.Cell):
    """The window end as the graph of a top-level Cell (GRAPH mode). MindSpore launches a
    Cell's compiled graph with less host work than an ``ms.jit`` method's (docs/bench_overhead.md)."""

    def __init__(self, owner: AccumulationWindow):
        super().__init__(auto_prefix=False)  # the owner's parameter names stay as they are
        self.owner = owner

    def construct(self):
        return self.owner._window_end()


# ---------------------------------------------------------------------- construction helpers


def _check_window_arguments(accumulation_steps, clip_global_norm, nonfinite) -> None:
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
    if clip_global_norm is not None and not (float(clip_global_norm) > 0.0):
        raise ValueError(f"clip_global_norm must be a positive number or None, got {clip_global_norm!r}")


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


def _data_parallel_world_size(owner: str = "GradAccumCell") -> int:
    """Workers whose windows are summed: 1 stand-alone, the device count in data parallel; other
    parallel modes shard the network in ways a separately compiled window cannot follow."""
    mode = ms.get_auto_parallel_context("parallel_mode")
    if mode in ("stand_alone", None, ""):
        return 1
    if mode == "data_parallel":
        from mindspore.communication import get_group_size

        return int(get_group_size())
    raise ValueError(
        f"{owner} supports stand-alone and data-parallel training, not parallel_mode={mode!r}: "
        "in (semi-)auto and hybrid parallel the gradients of our separately compiled window are "
        "neither sharded nor reduced by MindSpore. Use parallel_mode='data_parallel', or MindSpore's "
        "own accumulation for those modes (set_auto_parallel_context(grad_accumulation_step=...))."
    )


def _loss_scale_cell(loss_scale, owner: str = "GradAccumCell"):
    """(update cell or None, initial scale) from the loss_scale argument."""
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
                f"{owner} always skips windows with non-finite gradients; drop_overflow_update=False is not honoured",
                stacklevel=4,
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
