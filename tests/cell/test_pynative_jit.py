"""PYNATIVE at compiled speed (issue 24): a GradAccumCell called from Python in PYNATIVE runs each
call -- its micro-step and, when the window is full, the window end -- as one compiled graph by
default; ``jit_micro_step=False`` runs the micro-step eagerly.

Whether the micro-step runs compiled is observed at MindSpore's JIT executor (the class that
runs ``ms.jit`` functions, patched here to count runs by function name). Both ways give the big
batch's update, computed here with nn.TrainOneStepCell + nn.Momentum on the whole batch.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import FusedMomentum, GradAccumCell
from tests.cell.accum_models import assert_weights_close

SIZES = (8, 8, 8, 8)


class CountingLoss(nn.Cell):
    """A mean loss (with has_aux: (loss, logits))."""

    def __init__(self, has_aux=False):
        super().__init__()
        self.dense = nn.Dense(6, 3)
        rng = np.random.default_rng(0)
        self.dense.weight.set_data(Tensor(rng.standard_normal((3, 6)).astype(np.float32)))
        self.dense.bias.set_data(Tensor(np.zeros(3, np.float32)))
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        self.has_aux = has_aux

    def construct(self, x, y):
        logits = self.dense(x)
        loss = self.ce(logits, y)
        if self.has_aux:
            return loss, logits
        return loss


def batch():
    rng = np.random.default_rng(1)
    return rng.standard_normal((sum(SIZES), 6)).astype(np.float32), rng.integers(0, 3, sum(SIZES)).astype(np.int32)


def big_batch_weights():
    loss = CountingLoss()
    step = nn.TrainOneStepCell(loss, nn.Momentum(loss.trainable_params(), 0.1, 0.9))
    x, y = batch()
    step(Tensor(x), Tensor(y))
    return {p.name: p.asnumpy() for p in loss.trainable_params()}


@pytest.fixture
def pynative():
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=before)


@pytest.fixture
def jit_runs(monkeypatch):
    """{function name: runs} of every ms.jit function run while the test runs."""
    from mindspore_accum import _compat

    runs = {}
    executor = _compat.jit_executor_class()
    original = executor.__call__

    def counting(self, *args, **kwargs):
        name = getattr(self.fn, "__name__", "?")
        runs[name] = runs.get(name, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(executor, "__call__", counting)
    return runs


@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("jit_micro_step", [True, False])
def test_micro_step_compiled_by_default_and_exact_both_ways(pynative, jit_runs, jit_micro_step, has_aux):
    expected = big_batch_weights()
    loss = CountingLoss(has_aux)
    cell = GradAccumCell(
        loss,
        FusedMomentum(loss.trainable_params(), 0.1, 0.9),
        len(SIZES),
        has_aux=has_aux,
        jit_micro_step=jit_micro_step,
    )
    x, y = batch()
    for i in range(len(SIZES)):
        xs, ys = x[8 * i : 8 * (i + 1)], y[8 * i : 8 * (i + 1)]
        w, b = loss.dense.weight.asnumpy().copy(), loss.dense.bias.asnumpy().copy()
        out = cell(Tensor(xs), Tensor(ys))
        if has_aux:
            micro_loss, logits = out
            assert logits.shape == (8, 3)
            # the aux output is the network's logits at the weights of this micro-step
            np.testing.assert_allclose(logits.asnumpy(), xs @ w.T + b, rtol=1e-5, atol=1e-6)
        else:
            micro_loss = out
        assert micro_loss.shape == ()
    assert cell.pending == 0
    got = {p.name: p.asnumpy() for p in loss.trainable_params()}
    assert_weights_close(got, expected, 1e-5, f"jit_micro_step={jit_micro_step}")
    # compiled: every call ran ONE graph, micro-step and (at the N-th call) window end together,
    # and nothing else; eager: no micro-step graph, the window end compiled on its own
    assert jit_runs.get("_graph_step", 0) == (len(SIZES) if jit_micro_step else 0), jit_runs
    assert jit_runs.get("_graph_micro_step", 0) == 0, jit_runs
    assert jit_runs.get("_graph_window_end", 0) == (0 if jit_micro_step else 1), jit_runs


def test_jit_micro_step_must_be_a_bool():
    loss = CountingLoss()
    with pytest.raises(TypeError, match="jit_micro_step"):
        GradAccumCell(loss, FusedMomentum(loss.trainable_params(), 0.1, 0.9), 2, jit_micro_step="yes")
