"""The window loss (issue 24): after each update, ``window_loss`` (and the Parameter
``accumulation.window_loss``) is the item-weighted mean loss of the window -- the large batch's
loss, computed here in NumPy from the weights before the update. Called from Python and inside
a user's ``@ms.jit``, in both modes, for both loss contracts of GradAccumCell.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindspore_accum import FusedMomentum, GradAccumCell

IN, OUT = 5, 4
SIZES = (8, 8, 8, 5)


def np_ce(w, b, x, y, mask=None):
    """Softmax cross-entropy per sample of x @ w.T + b, averaged over the unmasked samples (float64)."""
    logits = x.astype(np.float64) @ w.T.astype(np.float64) + b
    logits -= logits.max(axis=1, keepdims=True)
    per = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), np.maximum(y, 0)]
    mask = np.ones(len(y)) if mask is None else mask
    return float((per * mask).sum() / mask.sum())


class MeanLoss(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(IN, OUT)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, y):
        return self.ce(self.dense(x), y)


class TokenLoss(MeanLoss):
    """(loss_sum, num_items) over the labels >= 0."""

    def __init__(self):
        super().__init__()
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="none")

    def construct(self, x, y):
        mask = ops.cast(y >= 0, ms.float32)
        return (self.ce(self.dense(x), ops.maximum(y, 0)) * mask).sum(), ops.cast(mask.sum(), ms.int32)


def data(seed, masked):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sum(SIZES), IN)).astype(np.float32)
    y = rng.integers(0, OUT, sum(SIZES)).astype(np.int32)
    if masked:
        y[rng.random(len(y)) < 0.4] = -1
    return x, y


@pytest.mark.parametrize("in_graph", [False, True], ids=["python", "jit"])
@pytest.mark.parametrize("contract", ["mean", "pair"])
def test_window_loss_is_the_big_batch_loss(mode, contract, in_graph):
    loss_net = MeanLoss() if contract == "mean" else TokenLoss()
    cell = GradAccumCell(loss_net, FusedMomentum(loss_net.trainable_params(), 0.1, 0.9), len(SIZES))
    cell.set_train()
    call = ms.jit(lambda x, y: cell(x, y)) if in_graph else cell
    edges = np.cumsum((0,) + SIZES)
    for window in range(2):
        x, y = data(window, masked=contract == "pair")
        w, b = loss_net.dense.weight.asnumpy(), loss_net.dense.bias.asnumpy()
        expected = np_ce(w, b, x, y, None if contract == "mean" else (y >= 0).astype(np.float64))
        for a, z in zip(edges[:-1], edges[1:]):
            call(Tensor(x[a:z]), Tensor(y[a:z]))
        assert cell.pending == 0
        assert abs(cell.window_loss - expected) <= 1e-5 * abs(expected), (cell.window_loss, expected)
        assert float(cell.state.window_loss.asnumpy()) == cell.window_loss  # the Parameter a callback reads
        assert not np.array_equal(loss_net.dense.bias.asnumpy(), b)  # the window was applied
