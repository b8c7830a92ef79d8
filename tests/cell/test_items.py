"""Items weighting (issue 12): micro-batches of different sizes, and losses that are a mean over
a varying number of tokens, give exactly the update of the large batch.

References are MindSpore's own nn.TrainOneStepCell on the concatenated batch (or a hand-written
MindSpore step with clipping), or NumPy written here: nothing in them calls mindspore_accum.
"""

import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindspore_accum import FusedMomentum, GradAccumCell
from tests.cell.accum_models import (
    DenseCE,
    assert_weights_close,
    clip_by_norm_numpy,
    max_rel_diff,
    np_dense_ce_grads,
    np_momentum_step,
    weights,
)

SIZES = (8, 8, 8, 5)
LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
RTOL = 1e-5


def make_optimizer(name, params, backend="auto"):
    if name == "FusedMomentum":
        return FusedMomentum(params, LR, MOMENTUM, weight_decay=WD, backend=backend)
    return nn.Momentum(params, LR, MOMENTUM, weight_decay=WD)


def dense_problem(seed, windows, total, features=12, classes=5):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, features)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    x = rng.standard_normal((windows, total, features)).astype(np.float32)
    y = rng.integers(0, classes, (windows, total)).astype(np.int32)
    return w, b, x, y


def split(x, y, sizes):
    bounds = np.cumsum((0,) + tuple(sizes))
    return [(Tensor(x[lo:hi]), Tensor(y[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]


# ====================================================================== mean losses, unequal sizes


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_micro_batches_of_8_8_8_5_equal_the_batch_of_29(mode, backend, opt_name):
    w, b, x, y = dense_problem(0, 3, sum(SIZES))
    ref = DenseCE(w, b)
    step = nn.TrainOneStepCell(ref, make_optimizer("Momentum", ref.trainable_params()))
    for i in range(3):
        step(Tensor(x[i]), Tensor(y[i]))

    net = DenseCE(w, b)
    cell = GradAccumCell(net, make_optimizer(opt_name, net.trainable_params(), backend), 4, backend=backend)
    for i in range(3):
        for xb, yb in split(x[i], y[i], SIZES):
            cell(xb, yb)
    assert int(cell.optimizer.global_step.asnumpy().item()) == 3
    assert_weights_close(weights(net), weights(ref), RTOL, "8, 8, 8, 5 vs the batch of 29")
    # the old mean of means is measurably different on this problem: the test can tell them apart
    assert max_rel_diff(weights(net), _mean_of_means_numpy(w, b, x, y)) > 1e-3


def _mean_of_means_numpy(w, b, x, y):
    """NumPy (float64): each update's gradient is the mean of the micro-batches' mean gradients."""
    params = [w.astype(np.float64), b.astype(np.float64)]
    moments = [np.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        bounds = np.cumsum((0,) + SIZES)
        grads = [
            np_dense_ce_grads(params[0], params[1], x[i][lo:hi].astype(np.float64), y[i][lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        mean = [np.mean([g[k] for g in grads], axis=0) for k in range(2)]
        np_momentum_step(params, moments, mean, lr=LR, momentum=MOMENTUM, weight_decay=[WD, WD], nesterov=False)
    return {"dense.weight": params[0], "dense.bias": params[1]}


def test_equal_weighting_reproduces_the_mean_of_micro_batch_means(mode, backend):
    w, b, x, y = dense_problem(0, 3, sum(SIZES))
    net = DenseCE(w, b)
    cell = GradAccumCell(
        net,
        make_optimizer("FusedMomentum", net.trainable_params(), backend),
        4,
        micro_batch_weight="equal",
        backend=backend,
    )
    for i in range(3):
        for xb, yb in split(x[i], y[i], SIZES):
            cell(xb, yb)
    assert_weights_close(weights(net), _mean_of_means_numpy(w, b, x, y), RTOL, "micro_batch_weight='equal'")


# ====================================================================== (loss_sum, num_items)

PAD, VOCAB, DIM, SEQ = 0, 11, 6, 7


class TinyLM(nn.Cell):
    """A causal token model: embedding -> mean of the embeddings up to each position -> dense.
    Returns (cross-entropy summed over the positions whose target is not PAD, their count)."""

    def __init__(self, emb, w, b, mean_loss=False):
        super().__init__()
        self.emb = Parameter(Tensor(emb), name="emb")
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")
        causal = np.tril(np.ones((SEQ, SEQ), np.float32))
        self.causal = Tensor(causal / causal.sum(axis=1, keepdims=True))
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="none")
        self.mean_loss = mean_loss

    def construct(self, tokens, targets):
        h = ops.matmul(self.causal, ops.gather(self.emb, tokens, 0))  # (B, SEQ, DIM)
        logits = ops.matmul(h, self.w.T) + self.b  # (B, SEQ, VOCAB)
        ce = self.ce(logits.reshape(-1, VOCAB), targets.reshape(-1))
        mask = ops.cast(targets.reshape(-1) != PAD, ms.float32)
        loss_sum, count = (ce * mask).sum(), ops.cast(mask.sum(), ms.int32)
        if self.mean_loss:  # the large batch's loss: the mean over all its real tokens
            return loss_sum / ops.cast(count, ms.float32)
        return loss_sum, count


def lm_init(seed=0):
    rng = np.random.default_rng(seed)
    return (
        (rng.standard_normal((VOCAB, DIM)) * 0.5).astype(np.float32),
        (rng.standard_normal((VOCAB, DIM)) * 0.3).astype(np.float32),
        (rng.standard_normal(VOCAB) * 0.1).astype(np.float32),
    )


def lm_batches(seed, windows, lengths):
    """Per window, one padded micro-batch per entry of `lengths` (a list of per-sequence real
    lengths); a sequence of length L has L real targets followed by PAD."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(windows):
        window = []
        for seq_lengths in lengths:
            tokens = rng.integers(1, VOCAB, (len(seq_lengths), SEQ)).astype(np.int32)
            targets = rng.integers(1, VOCAB, (len(seq_lengths), SEQ)).astype(np.int32)
            for r, length in enumerate(seq_lengths):
                targets[r, length:] = PAD
            window.append((tokens, targets))
        out.append(window)
    return out


# four micro-batches of 3 sequences: 15, 7, 0 (all padding) and 19 real tokens
LENGTHS = [(7, 5, 3), (1, 2, 4), (0, 0, 0), (7, 6, 6)]


def reference_lm_step(windows, clip=None):
    """The large batch: one step per window on the concatenated micro-batches with the loss
    sum over all real tokens / their count (nn.TrainOneStepCell; with clip, the same step with
    the clip computed in NumPy)."""
    net = TinyLM(*lm_init(), mean_loss=True)
    opt = nn.Momentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WD)
    if clip is None:
        step = nn.TrainOneStepCell(net, opt)
    else:
        grad_fn = ms.value_and_grad(net, None, opt.parameters)

        def step(tokens, targets):
            _, grads = grad_fn(tokens, targets)
            opt(clip_by_norm_numpy(grads, clip))

    for window in windows:
        step(Tensor(np.concatenate([t for t, _ in window])), Tensor(np.concatenate([g for _, g in window])))
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


@pytest.mark.parametrize("clip", [None, 0.05])
def test_loss_sum_and_num_items_equal_the_token_mean_of_the_large_batch(mode, backend, clip):
    windows = lm_batches(1, 3, LENGTHS)
    expected = reference_lm_step(windows, clip)
    net = TinyLM(*lm_init())
    cell = GradAccumCell(
        net,
        FusedMomentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WD, backend=backend),
        4,
        clip_global_norm=clip,
        backend=backend,
    )
    for window in windows:
        losses = [cell(Tensor(t), Tensor(g)) for t, g in window]
        # the cell returns each micro-batch's token mean (0 for the all-padding one)
        assert float(losses[2].asnumpy()) == 0.0 and float(losses[0].asnumpy()) > 0.0
    got = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    assert_weights_close(got, expected, RTOL, f"(loss_sum, num_items), clip={clip}")
    if clip is not None:  # the clip really acted: the unclipped training is elsewhere
        assert max_rel_diff(got, reference_lm_step(windows, None)) > 1e-3


def test_a_window_with_zero_items_is_skipped_with_a_warning(mode, backend):
    net = TinyLM(*lm_init())
    cell = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM, backend=backend), 2, backend=backend)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    (empty,) = lm_batches(2, 1, [(0, 0, 0), (0, 0, 0)])
    with pytest.warns(RuntimeWarning, match="zero items"):
        for tokens, targets in empty:
            cell(Tensor(tokens), Tensor(targets))
    assert int(cell.skipped_updates.asnumpy()) == 1 and cell.pending == 0
    for p in net.trainable_params():
        assert np.array_equal(p.asnumpy(), before[p.name]), p.name
    assert np.isfinite(np.concatenate([p.asnumpy().ravel() for p in net.trainable_params()])).all()

    strict = GradAccumCell(
        net, FusedMomentum(net.trainable_params(), LR, MOMENTUM, backend=backend), 2, nonfinite="raise", backend=backend
    )
    strict(Tensor(empty[0][0]), Tensor(empty[0][1]))
    with pytest.raises(FloatingPointError, match="zero items"):
        strict(Tensor(empty[1][0]), Tensor(empty[1][1]))
    assert strict.pending == 0


class BadOutput(nn.Cell):
    def __init__(self, kind):
        super().__init__()
        self.w = Parameter(Tensor(np.ones(3, np.float32)), name="w")
        self.kind = kind

    def construct(self, x):
        s = (self.w * x).sum()
        if self.kind == "triple":
            return s, ops.ones((), ms.int32), s
        if self.kind == "vector_count":
            return s, ops.ones((3,), ms.int32)
        return self.w * x  # "vector_loss"


@pytest.mark.parametrize(
    "kind, match", [("triple", "tuple of 3"), ("vector_count", "two scalars"), ("vector_loss", "scalar mean loss")]
)
def test_a_wrong_network_output_names_the_contract(mode, kind, match):
    net = BadOutput(kind)
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 2)
    with pytest.raises(TypeError, match=match) as info:
        cell(Tensor(np.ones(3, np.float32)))
    assert "(loss_sum, num_items)" in str(info.value)
    assert cell.pending == 0


def test_a_wrong_output_in_pynative_does_not_break_later_graphs():
    """The contract error raised inside PyNative's backward leaves MindSpore's grad executor
    mid-graph unless the cell resets it; the next GRAPH-mode cell then failed to compile
    ("For 'AddN', input shape must be same")."""
    before = ms.get_context("mode")
    try:
        ms.set_context(mode=ms.PYNATIVE_MODE)
        bad = BadOutput("triple")
        with pytest.raises(TypeError, match="tuple of 3"):
            GradAccumCell(bad, nn.SGD(bad.trainable_params(), 0.1), 2)(Tensor(np.ones(3, np.float32)))
        ms.set_context(mode=ms.GRAPH_MODE)
        w, b, x, y = dense_problem(5, 2, sum(SIZES))
        ref = DenseCE(w, b)
        step = nn.TrainOneStepCell(ref, make_optimizer("Momentum", ref.trainable_params()))
        net = DenseCE(w, b)
        cell = GradAccumCell(net, make_optimizer("FusedMomentum", net.trainable_params()), 4)
        for i in range(2):
            step(Tensor(x[i]), Tensor(y[i]))
            for xb, yb in split(x[i], y[i], SIZES):
                cell(xb, yb)
        assert_weights_close(weights(net), weights(ref), RTOL, "GRAPH after a PyNative contract error")
    finally:
        ms.set_context(mode=before)


def test_mid_window_checkpoint_with_unequal_micro_batches_resumes_bit_identically(mode, backend, tmp_path):
    w, b, x, y = dense_problem(3, 2, sum(SIZES))
    micro = [mb for i in range(2) for mb in split(x[i], y[i], SIZES)]

    def make():
        net = DenseCE(w, b)
        return GradAccumCell(net, make_optimizer("FusedMomentum", net.trainable_params(), backend), 4, backend=backend)

    full = make()
    for xb, yb in micro:
        full(xb, yb)
    expected = {p.name: p.asnumpy().copy() for p in full.get_parameters()}

    first = make()
    for xb, yb in micro[:7]:  # a window of 8, 8, 8, 5 and then 8, 8, 8 of the next: 24 items pending
        first(xb, yb)
    path = str(tmp_path / "mid.ckpt")
    ms.save_checkpoint(first, path)
    resumed = make()
    ms.load_param_into_net(resumed, ms.load_checkpoint(path))
    assert resumed.pending == 3 and int(resumed.items.asnumpy()) == 24
    for xb, yb in micro[7:]:
        resumed(xb, yb)
    for p in resumed.get_parameters():
        assert np.array_equal(p.asnumpy(), expected[p.name]), f"{p.name} differs after resume"


class ScaledLinear(nn.Cell):
    """(K * <w, x>, K) with K = 2**24 + 1: the item count is beyond float32's exact integers."""

    K = 2**24 + 1

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.zeros(4, np.float32)), name="w")

    def construct(self, x):
        return (self.w * x).sum() * float(self.K), Tensor(self.K, ms.int64)


def test_item_counts_beyond_2_to_the_24_are_exact(mode, backend):
    net = ScaledLinear()
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 1.0), 4, backend=backend)
    xs = [np.array([1.0, 2.0, -1.0, 0.5], np.float32) * (i + 1) for i in range(3)]
    for x in xs:
        cell(Tensor(x))
    assert int(cell.items.asnumpy()) == 3 * ScaledLinear.K  # 50,331,651: not a float32 value
    cell.flush()
    np.testing.assert_allclose(net.w.asnumpy(), -np.mean(xs, axis=0), rtol=1e-6)


def test_size_weighting_needs_a_batch_dimension(mode):
    class Scalar(nn.Cell):
        def __init__(self):
            super().__init__()
            self.w = Parameter(Tensor(np.ones(1, np.float32)), name="w")

        def construct(self, x):
            return (self.w * x).sum()

    net = Scalar()
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 2)
    with pytest.raises(TypeError, match="leading dimension"):
        cell(Tensor(2.0, ms.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        equal = GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 2, micro_batch_weight="equal")
        equal(Tensor(2.0, ms.float32))
    assert equal.pending == 1
