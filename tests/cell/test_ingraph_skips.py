"""Windows skipped inside a compiled graph are never silent (issue 24).

Inside a user's ``@ms.jit`` train step (or dataset sink mode) MindSpore inlines the cell's /
accumulator's ``construct``: a window end there cannot warn or raise. The skip is recorded in the
state and the next host-side call reports it -- ``report_skipped()``, ``flush()``, the next call
from Python, ``window_loss`` -- as the warning or FloatingPointError of the eager path, once.
These tests run the real in-graph path: a ``@ms.jit`` function calling the cell / accumulator.
"""

import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindspore_accum import FusedMomentum, GradAccumCell, GradAccumulator
from tests.cell.accum_models import Mlp

STEPS = 2


def micro(seed, poison=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    if poison:
        x[1, 2] = np.nan
    return Tensor(x), Tensor(rng.integers(0, 3, (4,)).astype(np.int32))


def cell_and_step(nonfinite):
    net = Mlp()
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    cell = GradAccumCell(loss, FusedMomentum(net.trainable_params(), 0.1, 0.9), STEPS, nonfinite=nonfinite)
    cell.set_train()

    @ms.jit
    def train_step(x, y):
        return cell(x, y)

    return cell, train_step


def accumulator_and_step(nonfinite):
    net = Mlp()
    acc = GradAccumulator(FusedMomentum(net.trainable_params(), 0.1, 0.9), STEPS, nonfinite=nonfinite)
    ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(x, y):
        return ce(net(x), y)

    grad_fn = ms.value_and_grad(forward, None, net.trainable_params())

    @ms.jit
    def train_step(x, y):
        loss, grads = grad_fn(x, y)
        return ops.depend(loss, acc(grads, x.shape[0]))

    return acc, train_step


FRONT_ENDS = {"GradAccumCell": cell_and_step, "GradAccumulator": accumulator_and_step}


def run_in_graph(step, windows):
    """Runs ``windows`` (lists of micro-batches) through the jitted step: nothing may warn or
    raise there (the graph cannot)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for window in windows:
            for x, y in window:
                step(x, y)


def windows(poisoned_windows, n=3):
    return [[micro(10 * w + j, poison=(w in poisoned_windows and j == 0)) for j in range(STEPS)] for w in range(n)]


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_raise_surfaces_at_the_next_host_call(mode, front_end):
    owner, step = FRONT_ENDS[front_end]("raise")
    run_in_graph(step, windows({1}))
    assert int(owner.skipped_updates.asnumpy()) == 1  # the graph skipped it ...
    with pytest.raises(FloatingPointError, match="non-finite"):  # ... and the host says so
        owner.report_skipped()
    assert owner.report_skipped() == 0  # once
    run_in_graph(step, windows({0}, n=1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        owner.flush()


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_skip_warns_at_the_next_host_call(mode, front_end):
    owner, step = FRONT_ENDS[front_end]("skip")
    run_in_graph(step, windows({0, 2}))
    with pytest.warns(RuntimeWarning, match=r"2 accumulation windows were skipped .*\(2 with a non-finite") as caught:
        assert owner.flush() is False  # nothing pending: the report is all it does
    assert caught[0].filename == __file__  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert owner.report_skipped() == 0


def test_the_next_python_call_of_the_cell_raises_before_running(mode):
    cell, step = cell_and_step("raise")
    run_in_graph(step, windows({0}, n=1))
    with pytest.raises(FloatingPointError, match=r"non-finite.*\(1 window\(s\) skipped so far\)"):
        cell(*micro(99))
    assert cell.pending == 0  # the micro-batch did not run


def test_a_zero_item_window_in_a_graph_is_reported(mode):
    acc, _ = accumulator_and_step("skip")
    net_params = acc.weights

    @ms.jit
    def empty_step():
        grads = tuple(ops.zeros_like(p) for p in net_params)
        return acc(grads, 0, "sum")

    empty_step()
    empty_step()
    with pytest.warns(RuntimeWarning, match="zero items"):
        assert acc.report_skipped() == 1


def test_an_unreported_skip_survives_a_checkpoint(mode, tmp_path):
    cell, step = cell_and_step("skip")
    run_in_graph(step, windows({0}, n=1))
    path = str(tmp_path / "skipped.ckpt")
    ms.save_checkpoint(cell, path)
    resumed, _ = cell_and_step("skip")
    ms.load_checkpoint(path, net=resumed)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert resumed.report_skipped() == 1


class _SinkGraph(nn.Cell):
    """What dataset sink mode runs on GPU/Ascend: one compiled graph whose construct calls the
    training cell, so MindSpore inlines the cell's construct (on CPU, Model's sink mode falls back
    to calls from Python, so the graph is built here directly)."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)  # the cell's Parameter names stay as they are
        self.cell = cell

    def construct(self, x, y):
        return self.cell(x, y)


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_skip_inside_an_outer_graph_cell_is_reported_as_in_sink_mode(nonfinite):
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        cell, _ = cell_and_step(nonfinite)
        graph = _SinkGraph(cell)
        graph.set_train()
        run_in_graph(graph, windows({1}))
        assert int(cell.skipped_updates.asnumpy()) == 1
        if nonfinite == "raise":
            with pytest.raises(FloatingPointError, match="non-finite"):
                cell.flush()  # what FlushAtEpochEnd calls at the epoch's end
        else:
            with pytest.warns(RuntimeWarning, match="non-finite"):
                cell.flush()
    finally:
        ms.set_context(mode=before)
