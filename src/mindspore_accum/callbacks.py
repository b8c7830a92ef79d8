"""``mindspore.train`` callbacks for accumulation cells.

:class:`FlushAtEpochEnd` applies the partial window of an epoch at the end of the epoch's last
step, so that a ``ModelCheckpoint`` placed after it in the callback list -- which saves at that
step's end, and not again at the epoch's or the training's end -- writes the flushed state: the
weights after the epoch's last update and no pending micro-batch. Resuming from that checkpoint
(``Model.train(..., initial_epoch=k)``) then continues exactly as the uninterrupted run.
"""

from __future__ import annotations

from mindspore.train.callback import Callback, ModelCheckpoint

__all__ = ["FlushAtEpochEnd"]


class FlushAtEpochEnd(Callback):
    """``mindspore.train`` callback: applies a GradAccumCell's partial window at the end of every
    epoch's last step, so no micro-batch of an epoch is carried into the next one, and checkpoints
    of that step hold the flushed state.

    Put it **before** ``ModelCheckpoint`` in the callback list (callbacks run in list order; the
    checkpoint of an epoch's last step would otherwise hold the pending micro-batches and the
    weights before the epoch's last update); training refuses the other order with a ValueError.

    ``Model.train`` counts steps in ``cb_params.cur_step_num`` and an epoch's steps in
    ``cb_params.batch_num`` (the dataset's size; in dataset sink mode the sink size, with one step
    end per sink), so an epoch's last step is the one where ``cur_step_num`` is a multiple of
    ``batch_num`` (also when resuming with ``initial_epoch``). An epoch stopped early
    (``run_context.request_stop()``) is flushed at its end instead.
    """

    def __init__(self, cell):
        super().__init__()
        if not callable(getattr(cell, "flush", None)):
            raise TypeError(
                f"FlushAtEpochEnd takes the accumulation cell that Model trains (a GradAccumCell), got "
                f"{type(cell).__name__}: FlushAtEpochEnd(cell) with Model(cell)"
            )
        self.cell = cell
        self._flushed_at = None  # (epoch, step) of the last flush: the epoch end does not repeat it

    def on_train_begin(self, run_context):
        callbacks = list(getattr(run_context.original_args(), "list_callback", None) or [])
        mine = next((i for i, cb in enumerate(callbacks) if cb is self), None)
        if mine is None:
            return
        early = [type(cb).__name__ for cb in callbacks[:mine] if isinstance(cb, ModelCheckpoint)]
        if early:
            raise ValueError(
                f"FlushAtEpochEnd comes after {early[0]} in the callback list: callbacks run in list order, so "
                "the checkpoint of each epoch's last step would hold the pending micro-batches and the weights "
                "before the epoch's last update. Put FlushAtEpochEnd first, e.g. "
                "callbacks=[FlushAtEpochEnd(cell), ModelCheckpoint(...)]"
            )

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        batch_num = int(getattr(params, "batch_num", 0) or 0)
        step = int(params.cur_step_num)
        if batch_num > 0 and step > 0 and step % batch_num == 0:  # the epoch's last step
            self._flush(params)

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        if self._flushed_at != (params.cur_epoch_num, params.cur_step_num):
            self._flush(params)

    def _flush(self, params):
        # flush() first reports the windows skipped inside compiled graphs (sink mode, @ms.jit)
        self.cell.flush()
        self._flushed_at = (params.cur_epoch_num, params.cur_step_num)
