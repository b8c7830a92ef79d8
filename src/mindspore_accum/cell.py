"""GradAccumCell: gradient accumulation over micro-batches as a MindSpore training cell.

The front end for a loss Cell: its micro-step is the backward of the network's loss (the loss
contract: a mean loss, or ``(loss_sum, num_items)``) followed by the window's accumulate; the
window itself -- state, window end, reporting -- is _window.AccumulationWindow, shared with the
functional front end (accumulator.GradAccumulator).

Called from Python in GRAPH mode, the micro-step runs as one compiled graph (a top-level Cell),
then the window end as another when the window is full. In PYNATIVE, each call runs ``construct``
-- the micro-step and the conditional window end composed -- as one ``ms.jit`` graph (one
compile, as inside a user's ``@ms.jit`` or dataset sink mode); with ``jit_micro_step=False``, an
``accumulation_steps`` schedule or data parallelism, the micro-step runs on its own (eager, or
compiled) and the window end as a second graph.
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops

from . import _compat
from ._window import AccumulationWindow
from .callbacks import FlushAtEpochEnd  # defined there; importable from here as before

__all__ = ["GradAccumCell", "FlushAtEpochEnd"]

WEIGHTS = ("size", "equal")


class GradAccumCell(AccumulationWindow):
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

    :meth:`flush` applies a partial window; :attr:`pending` tells how many micro-batches wait;
    :attr:`window_loss` is the loss of the last window (its items' mean, over all workers);
    :meth:`report_skipped` reports windows skipped inside a compiled graph (see there).

    Args:
        network_with_loss: a Cell returning a scalar mean loss or ``(loss_sum, num_items)``
            (e.g. ``nn.WithLossCell(network, loss_fn)``), followed by extra outputs if ``has_aux``.
        optimizer: any ``nn.Optimizer`` built with ``loss_scale=1``, or a ``mindspore.mint.optim`` /
            ``mindspore.experimental.optim`` optimizer. With :class:`FusedMomentum`, :class:`FusedAdamW`,
            :class:`FusedLAMB` or :class:`FusedLARS` the averaging, clipping and step are one pass.
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
        shard: ``None`` (every worker holds all state), ``"optimizer"`` (ZeRO-1: each of the W
            data-parallel workers keeps the optimizer state for its 1/W of the flattened weights;
            micro-steps unchanged; per window one full-size reduction, one small all-reduce and
            one all-gather of the weights) or ``"gradients"`` (ZeRO-2: also the accumulators;
            one full-size reduction per micro-step, and every worker must run the same number
            of micro-steps per window). With FusedAdamW, FusedMomentum, FusedLAMB or FusedLARS
            (the last two own whole tensors: docs/sharding.md) only; no-op on one worker.
            Checkpoints: see :mod:`mindspore_accum.sharding.checkpoint`.
        jit_micro_step: in PYNATIVE mode, run each call from Python -- the micro-step and, every
            ``accumulation_steps``-th call, the window end -- as one compiled graph (``ms.jit``;
            the default) -- the speed of a ``@ms.jit`` train step. False runs the micro-step
            eagerly (e.g. to debug the network with prints). GRAPH mode always compiles it.

    All state (accumulators, micro-step, item and loss counters, loss scale, skip counters, the
    optimizer's moments and step) lives in non-trainable Parameters: checkpoints capture it and
    resume mid-window bit-identically, across backends too.
    """

    def __init__(
        self,
        network_with_loss: nn.Cell,
        optimizer,
        accumulation_steps: int,
        *,
        clip_global_norm: Optional[float] = None,
        loss_scale=None,
        nonfinite: str = "skip",
        micro_batch_weight: str = "size",
        backend: str = "auto",
        shard: Optional[str] = None,
        has_aux: bool = False,
        jit_micro_step: bool = True,
    ):
        super().__init__()
        _check_network(network_with_loss)
        if micro_batch_weight not in WEIGHTS:
            raise ValueError(f"micro_batch_weight must be 'size' or 'equal', got {micro_batch_weight!r}")
        for name, flag in (("has_aux", has_aux), ("jit_micro_step", jit_micro_step)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.has_aux = has_aux
        self.jit_micro_step = jit_micro_step
        self.micro_batch_weight = micro_batch_weight
        # The state first: its Parameters then follow the weights in parameters_dict() and in
        # checkpoints, where the cell's own Parameters were before the state was one object.
        weights, update_cell = self._init_window(
            optimizer,
            accumulation_steps,
            clip_global_norm=clip_global_norm,
            loss_scale=loss_scale,
            nonfinite=nonfinite,
            backend=backend,
            shard=shard,
        )
        self.network = network_with_loss
        self._attach_optimizer(optimizer, weights, update_cell)
        self._grad_fn = ms.value_and_grad(self._scaled_loss, None, self.weights, has_aux=True)
        # Not a child cell (object.__setattr__), as the window end's (see _attach_optimizer).
        object.__setattr__(self, "_micro_step_graph", _MicroStepGraph(self))

    # ------------------------------------------------------------------ calls
    def __call__(self, *inputs):
        # Calls from Python: the host-side checks, then one graph (PYNATIVE) or the micro-step
        # and, when the window is full, the window end as two (see the module's docstring).
        pending = self._before_micro_step()
        graph_mode = ms.get_context("mode") == ms.GRAPH_MODE
        if self.jit_micro_step and not graph_mode and not self._scheduled and not self.distributed:
            # PYNATIVE: micro-step and conditional window end as ONE compiled graph (as in a
            # user's @ms.jit): one compile instead of two. Its window end writes only after
            # every stage that can fail, so a failure there leaves this micro-batch in a full,
            # pending window, which the next call ends first (_before_micro_step). Data parallel
            # keeps the window's AllReduce in a graph of its own, out of control flow.
            out = self._graph_step(*inputs)
            if self._window_full(pending + 1):
                self.report_skipped(stacklevel=3)  # the window ended in the graph
            return out
        if graph_mode:
            loss = self._micro_step_graph(*inputs)
        elif self.jit_micro_step:  # with a schedule: the steps change between windows
            loss = self._graph_micro_step(*inputs)
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

    def construct(self, *inputs):
        """Micro-step and (every ``accumulation_steps``-th call) window end as one graph."""
        self._refuse_schedule_in_graph()
        out = self._micro_step(*inputs)
        if self._window_full(self.state.micro_step):
            if self.has_aux:
                return ops.depend(out[0], self._window_end()), out[1]
            out = ops.depend(out, self._window_end())
        return out

    @ms.jit
    def _graph_step(self, *inputs):  # PYNATIVE: construct's composition, compiled once
        return self.construct(*inputs)

    @ms.jit
    def _graph_micro_step(self, *inputs):  # PYNATIVE (a Cell would run eagerly there)
        return self._micro_step(*inputs)

    def _dispatch_graphs(self):
        return (self._window_end_graph, self._micro_step_graph)

    # ------------------------------------------------------------------ the micro-step
    def _micro_step(self, *inputs):
        values, grads = self._grad_fn(*inputs)
        loss, items, weight, loss_sum = values[1], values[2], values[3], values[4]
        out = self._accumulate(grads, weight, items, loss_sum)
        if self.has_aux:
            return ops.depend(loss, out), values[5]
        return ops.depend(loss, out)

    def _scaled_loss(self, *inputs):
        """(loss * loss_scale, the micro-batch's loss, its items, the weight of its gradient in
        the window sum, its loss summed over its items[, aux]): the loss contract, checked when
        the graph is built."""
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
            scaled = total * ops.cast(self.state.loss_scale, total.dtype)
            return scaled, loss, items, self._one, ops.stop_gradient(total)
        _check_mean_loss(out)
        scaled = ops.reshape(out, ()) * ops.cast(self.state.loss_scale, out.dtype)
        if self.micro_batch_weight == "equal":
            return scaled, out, Tensor(1, ms.int64), self._one, ops.stop_gradient(ops.reshape(out, ()))
        if len(inputs) == 0 or inputs[0].ndim == 0:
            raise TypeError(
                "GradAccumCell: micro_batch_weight='size' weighs a mean loss by the leading dimension of "
                "the first input, which has none; return (loss_sum, num_items) or use 'equal'"
            )
        size = inputs[0].shape[0]
        loss_sum = ops.stop_gradient(ops.reshape(out, ()) * float(size))
        return scaled, out, Tensor(size, ms.int64), Tensor(float(size), ms.float32), loss_sum


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


# ---------------------------------------------------------------------- construction helpers


def _check_network(network_with_loss) -> None:
    if not isinstance(network_with_loss, nn.Cell):
        how = (
            "wrap the function in an nn.Cell whose construct calls it, e.g. class LossCell(nn.Cell) with "
            "self.net = net and construct(self, x, y): return loss_fn(self.net(x), y) (the weights must be "
            "Parameters of that cell or its children); or, for a functional training step with "
            "ms.value_and_grad, use mindspore_accum.GradAccumulator"
            if callable(network_with_loss)
            else "pass a Cell returning the loss, e.g. nn.WithLossCell(network, loss_fn)"
        )
        raise TypeError(f"network_with_loss must be an nn.Cell, got {type(network_with_loss).__name__}: {how}")
    _check_not_an_update(network_with_loss)


# Cells that apply an update themselves: inside GradAccumCell every micro-batch would update twice.
_UPDATERS = (nn.TrainOneStepCell, nn.Optimizer, AccumulationWindow)  # GradAccumCell, GradAccumulator
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
