"""GradAccumulator: gradient accumulation for MindSpore 2.x's functional training step.

The front end for gradients the user computed (``ms.value_and_grad``); the window -- state,
window end, reporting -- is _window.AccumulationWindow, shared with GradAccumCell.
"""

from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import Tensor, ops

from ._window import AccumulationWindow

__all__ = ["GradAccumulator"]

REDUCTIONS = ("mean", "sum")
# num_items counts items: an integer (a float one is most likely another quantity, e.g. a metric)
_INTEGER_TYPES = (ms.int8, ms.int16, ms.int32, ms.int64, ms.uint8, ms.uint16, ms.uint32, ms.uint64)


class GradAccumulator(AccumulationWindow):
    """Accumulates the gradients of a functional training step; every ``accumulation_steps``-th
    call applies one update with the window's gradient, exactly the large batch's.

    ::

        accumulator = GradAccumulator(optimizer, accumulation_steps=4, clip_global_norm=1.0)
        grad_fn = ms.value_and_grad(forward_fn, None, optimizer.parameters, has_aux=True)

        @ms.jit
        def train_step(x, y):
            (loss, logits), grads = grad_fn(x, y)
            return ops.depend(loss, accumulator(grads, x.shape[0], loss=loss))

    ``accumulator(grads, num_items, reduction="mean", loss=None)`` adds one micro-batch:

    * ``reduction="mean"``: ``grads`` are of a **mean** loss over ``num_items`` items (samples):
      weighted by ``num_items``, so micro-batches of 8, 8, 8 and 5 give the update of the batch of 29;
    * ``reduction="sum"``: ``grads`` are of a **sum** loss over ``num_items`` items (e.g. the
      non-padding tokens of a language-model batch): the update is the token mean of the window.

    The update is the sum of the weighted gradients over the sum of the items, over the window
    and all data-parallel workers (one all-reduce per window). ``num_items`` is a Python int or
    an integer tensor (zero items: the micro-batch adds nothing; a window of zero items is
    skipped). ``loss`` (optional): the micro-batch's loss, not scaled -- its mean loss for
    ``"mean"``, its loss sum for ``"sum"`` -- for :attr:`window_loss`, the loss of the large batch.
    A call returns a boolean tensor: True when it applied an update.

    It works inside the user's ``@ms.jit`` (one compiled graph: ``construct`` inlines) and called
    from Python (PYNATIVE or GRAPH mode: the micro-step and the window end run as compiled graphs).
    Inside a graph a skipped window (non-finite, zero items) cannot warn or raise: it is recorded
    and reported by the next host-side call -- :meth:`report_skipped`, :meth:`flush`,
    :attr:`window_loss`, or a call from Python.

    Args:
        optimizer: the optimizer whose ``parameters`` the gradients are of, in that order (any
            ``nn.Optimizer`` built with ``loss_scale=1``, or a ``mint.optim`` / ``experimental.optim``
            optimizer); the accumulator calls it once per
            window. :class:`FusedMomentum`, :class:`FusedAdamW`, :class:`FusedLAMB` and
            :class:`FusedLARS` average, clip and step in one pass.
        accumulation_steps: micro-batches per update (>= 1), or a schedule as in
            :class:`GradAccumCell` (then only called from Python).
        clip_global_norm: clip the window's mean gradient to this global L2 norm.
        loss_scale: None, a float (static), or a loss-scale update cell / amp manager (dynamic).
            Multiply the loss you differentiate by :attr:`loss_scale` (a Parameter), e.g.
            ``return loss * accumulator.loss_scale, (loss, logits)``; the window is unscaled once.
            A non-finite window is skipped (and lowers a dynamic scale).
        nonfinite: ``"skip"`` (warn, unless a dynamic loss scale expects overflows) or ``"raise"``
            (``FloatingPointError``) for a skipped window.
        backend: ``"auto"``, ``"kernels"`` or ``"native"`` (as :class:`GradAccumCell`).
        shard: ``None``, ``"optimizer"`` or ``"gradients"``: the optimizer state (and the
            accumulators) split over data-parallel workers, as :class:`GradAccumCell`.

    Checkpoints: ``ms.save_checkpoint(accumulator, path)`` holds the weights the optimizer
    updates, the optimizer's state and the window (accumulators and counters, the loss scale);
    ``ms.load_checkpoint(path, net=accumulator)`` resumes mid-window bit-identically. Save the
    network too if it has Parameters the optimizer does not update (BatchNorm statistics).
    """

    def __init__(
        self,
        optimizer,
        accumulation_steps,
        *,
        clip_global_norm: Optional[float] = None,
        loss_scale=None,
        nonfinite: str = "skip",
        backend: str = "auto",
        shard: Optional[str] = None,
    ):
        super().__init__()
        weights, update_cell = self._init_window(
            optimizer,
            accumulation_steps,
            clip_global_norm=clip_global_norm,
            loss_scale=loss_scale,
            nonfinite=nonfinite,
            backend=backend,
            shard=shard,
        )
        self._attach_optimizer(optimizer, weights, update_cell)
        self._false = Tensor(False, ms.bool_)
        self._nan = Tensor(float("nan"), ms.float32)

    def __call__(self, grads, num_items, reduction="mean", loss=None):
        # From Python: the micro-step as one compiled graph, then the window end as another when
        # the window is full. `construct` is the in-graph composition (inside the user's @ms.jit).
        _check_reduction(reduction)
        grads = tuple(grads)
        self._check_grads(grads)
        items = _items_tensor(num_items)
        if loss is not None:
            _check_loss(loss)
        pending = self._before_micro_step()
        self._graph_accumulate(grads, items, reduction, loss)
        applied = self._finish_window() if self._window_full(pending + 1) else False
        return Tensor(applied, ms.bool_)

    def construct(self, grads, num_items, reduction="mean", loss=None):
        """One micro-batch and, every ``accumulation_steps``-th call, the window end, in the
        caller's graph. Returns True (a bool tensor) when this call applied an update."""
        self._refuse_schedule_in_graph()
        out = self._micro_step(grads, num_items, reduction, loss)
        applied = self._false
        if self._window_full(self.state.micro_step):
            applied = self._applied(self._window_end())
        return ops.depend(applied, out)

    @ms.jit
    def _graph_accumulate(self, grads, items, reduction, loss):
        return self._micro_step(grads, items, reduction, loss)

    def _micro_step(self, grads, num_items, reduction, loss):
        _check_reduction(reduction)
        self._check_grads(grads)
        items = _graph_items(num_items)
        if reduction == "mean":
            weight = ops.cast(items, ms.float32)
        else:
            weight = self._one
        if loss is None:
            loss_sum = self._nan  # no loss given: the window loss is nan
        else:
            _check_loss(loss)
            loss_sum = ops.cast(ops.reshape(loss, ()), ms.float32)
            if reduction == "mean":
                loss_sum = loss_sum * weight
        return self._accumulate(tuple(grads), weight, items, ops.stop_gradient(loss_sum))

    def _check_grads(self, grads):
        if not isinstance(grads, (tuple, list)) or len(grads) != len(self.weights):
            raise TypeError(
                f"GradAccumulator: grads must be a tuple of {len(self.weights)} gradients, one per Parameter "
                "of optimizer.parameters in that order, as ms.value_and_grad(fn, None, optimizer.parameters) "
                "returns them"
            )


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            "GradAccumulator: reduction must be 'mean' (grads of a mean loss over num_items items) or 'sum' "
            "(grads of a loss summed over num_items items)"
        )


def _check_loss(loss):
    if not isinstance(loss, Tensor) or not (loss.ndim == 0 or (loss.ndim == 1 and loss.shape[0] == 1)):
        raise TypeError(
            "GradAccumulator: loss must be the micro-batch's loss as a scalar tensor (its mean loss for "
            "reduction='mean', its loss sum for 'sum'), for window_loss"
        )


_NUM_ITEMS_HELP = (
    "GradAccumulator: num_items must be the number of items the loss covers, a Python int or an integer "
    "tensor (e.g. x.shape[0], or ops.cast(mask.sum(), ms.int32) for tokens)"
)


def _items_tensor(num_items):
    """num_items from Python as an int64 scalar tensor (one compiled graph for every value)."""
    if isinstance(num_items, bool) or not isinstance(num_items, (int, Tensor)):
        raise TypeError(f"{_NUM_ITEMS_HELP}; got {type(num_items).__name__}")
    if isinstance(num_items, int):
        if num_items < 0:
            raise ValueError(f"GradAccumulator: num_items must be >= 0, got {num_items}")
        return Tensor(num_items, ms.int64)
    _check_items_tensor(num_items)
    return num_items


def _check_items_tensor(num_items):
    if num_items.dtype not in _INTEGER_TYPES:
        raise TypeError(f"{_NUM_ITEMS_HELP}; got a tensor of dtype {num_items.dtype}")
    if not (num_items.ndim == 0 or (num_items.ndim == 1 and num_items.shape[0] == 1)):
        raise TypeError(f"{_NUM_ITEMS_HELP}; got a tensor of shape {num_items.shape}")


def _graph_items(num_items):
    """num_items inside a graph (an int constant or an integer tensor) as an int64 scalar."""
    if isinstance(num_items, Tensor):
        _check_items_tensor(num_items)
        return ops.cast(ops.reshape(num_items, ()), ms.int64)
    if isinstance(num_items, bool) or not isinstance(num_items, int):
        raise TypeError(_NUM_ITEMS_HELP)
    return Tensor(num_items, ms.int64)
