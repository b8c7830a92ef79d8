"""PYNATIVE at compiled speed (issue 24): a GradAccumCell called from Python in PYNATIVE runs its
micro-step as one compiled graph by default; ``jit_micro_step=False`` runs it eagerly.

Whether the network's ``construct`` runs as Python on every call (eager) or once per compile
(the traced graph) is observed with a Python-side counter in it. Both give the big batch's update,
computed here with nn.TrainOneStepCell + nn.Momentum on the whole batch.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import FusedMomentum, GradAccumCell
from tests.cell.accum_models import assert_weights_close

SIZES = (8, 8, 8, 8)


class CountingLoss(nn.Cell):
    """A mean loss whose construct counts how often Python runs it (with has_aux: (loss, logits))."""

    def __init__(self, has_aux=False):
        super().__init__()
        self.dense = nn.Dense(6, 3)
        rng = np.random.default_rng(0)
        self.dense.weight.set_data(Tensor(rng.standard_normal((3, 6)).astype(np.float32)))
        self.dense.bias.set_data(Tensor(np.zeros(3, np.float32)))
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        self.has_aux = has_aux
        self.python_runs = 0

    def construct(self, x, y):
        self.python_runs += 1
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


@pytest.mark.parametrize("has_aux", [False, True])
@pytest.mark.parametrize("jit_micro_step", [True, False])
def test_micro_step_compiled_by_default_and_exact_both_ways(pynative, jit_micro_step, has_aux):
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
        out = cell(Tensor(xs), Tensor(ys))
        if has_aux:
            micro_loss, logits = out
            assert logits.shape == (8, 3)
            # the aux output is the network's logits at the weights of this micro-step (no update yet)
            w, b = loss.dense.weight.asnumpy(), loss.dense.bias.asnumpy()
            np.testing.assert_allclose(logits.asnumpy(), xs @ w.T + b, rtol=1e-5, atol=1e-6)
        else:
            micro_loss = out
        assert micro_loss.shape == ()
    assert cell.pending == 0
    got = {p.name: p.asnumpy() for p in loss.trainable_params()}
    assert_weights_close(got, expected, 1e-5, f"jit_micro_step={jit_micro_step}")
    if jit_micro_step:
        assert loss.python_runs < len(SIZES), "the micro-step ran as Python every call: not compiled"
    else:
        assert loss.python_runs >= len(SIZES), "jit_micro_step=False must run the network eagerly"


def test_jit_micro_step_must_be_a_bool():
    loss = CountingLoss()
    with pytest.raises(TypeError, match="jit_micro_step"):
        GradAccumCell(loss, FusedMomentum(loss.trainable_params(), 0.1, 0.9), 2, jit_micro_step="yes")
