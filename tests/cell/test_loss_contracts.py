"""Loss contracts (issue 24): explicit, and forgiving where that is safe.

Single-element losses of shape (1,) (as MindFormers' models return them) give the update of the
scalar form; a float num_items, a cell that already updates weights, a bare network and a plain
function are refused with a message saying what to do; has_aux=True returns extra outputs.
References: MindSpore's nn.TrainOneStepCell on the concatenated batch of 29 (nothing in them calls
mindspore_accum), and NumPy for the aux logits.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindspore_accum import FusedMomentum, GradAccumCell
from tests.cell.accum_models import DenseCE, assert_weights_close, weights

SIZES = (8, 8, 8, 5)
LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
RTOL = 1e-5
WINDOWS = 2


def problem(seed=3, features=12, classes=5):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, features)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    x = rng.standard_normal((WINDOWS, sum(SIZES), features)).astype(np.float32)
    y = rng.integers(0, classes, (WINDOWS, sum(SIZES))).astype(np.int32)
    return w, b, x, y


def split(x, y):
    bounds = np.cumsum((0,) + SIZES)
    return [(Tensor(x[lo:hi]), Tensor(y[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]


def big_batch_reference(w, b, x, y):
    """nn.TrainOneStepCell + nn.Momentum, one step per window on its 29 samples."""
    ref = DenseCE(w, b)
    step = nn.TrainOneStepCell(ref, nn.Momentum(ref.trainable_params(), LR, MOMENTUM, weight_decay=WD))
    for i in range(WINDOWS):
        step(Tensor(x[i]), Tensor(y[i]))
    return weights(ref)


def accumulate(net, backend, x, y, **kwargs):
    """Runs the windows through a GradAccumCell; returns (cell, every call's output)."""
    opt = FusedMomentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WD, backend=backend)
    cell = GradAccumCell(net, opt, len(SIZES), backend=backend, **kwargs)
    outs = [cell(xb, yb) for i in range(WINDOWS) for xb, yb in split(x[i], y[i])]
    assert int(opt.global_step.asnumpy().item()) == WINDOWS
    return cell, outs


class Dense(nn.Cell):
    def __init__(self, w, b):
        super().__init__()
        self.dense = nn.Dense(w.shape[1], w.shape[0])
        self.dense.weight.set_data(Tensor(w))
        self.dense.bias.set_data(Tensor(b))

    def construct(self, x):
        return self.dense(x)


class Contract(nn.Cell):
    """A dense softmax-CE model returning its loss in one of the contract's forms."""

    def __init__(self, w, b, form, sum_shape=(), count_shape=()):
        super().__init__()
        self.dense = Dense(w, b).dense  # named as DenseCE's, the reference
        self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="none")
        self.form, self.sum_shape, self.count_shape = form, sum_shape, count_shape

    def construct(self, x, y):
        logits = self.dense(x)
        ce = self.ce(logits, y)
        mean = ce.mean()
        if self.form == "mean1":  # MindFormers: a mean loss of shape (1,)
            return ops.reshape(mean, (1,))
        count = ops.cast(ops.ones_like(y).sum(), ms.int32)
        pair = (ops.reshape(ce.sum(), self.sum_shape), ops.reshape(count, self.count_shape))
        if self.form == "pair":
            return pair
        accuracy = ops.cast(ops.equal(ops.argmax(logits, dim=1), y), ms.float32).mean()
        if self.form == "mean_accuracy":  # a pair of scalars that is not (loss_sum, num_items)
            return mean, accuracy
        if self.form == "aux_mean":
            return mean, logits
        if self.form == "aux_pair":
            return pair, logits, accuracy
        raise ValueError(self.form)


# ====================================================================== 1. shape (1,) accepted


@pytest.mark.parametrize(
    "form, sum_shape, count_shape",
    [("mean1", (), ()), ("pair", (1,), ()), ("pair", (), (1,)), ("pair", (1,), (1,))],
)
def test_single_element_losses_update_as_the_scalar_form(mode, backend, form, sum_shape, count_shape):
    w, b, x, y = problem()
    net = Contract(w, b, form, sum_shape, count_shape)
    _, outs = accumulate(net, backend, x, y)
    assert_weights_close(weights(net), big_batch_reference(w, b, x, y), RTOL, f"{form} {sum_shape} {count_shape}")
    first = DenseCE(w, b)(*split(x[0], y[0])[0]).asnumpy()
    np.testing.assert_allclose(np.asarray(outs[0].asnumpy()).reshape(()), first, rtol=1e-6)


# ====================================================================== 2. num_items an integer


def test_a_float_num_items_is_refused_with_what_to_do(mode, backend):
    """(mean loss, accuracy) was read as (loss_sum, num_items): 1.9e-2 off, silently."""
    w, b, x, y = problem()
    net = Contract(w, b, "mean_accuracy")
    cell = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM, backend=backend), 4, backend=backend)
    xb, yb = split(x[0], y[0])[0]
    with pytest.raises(TypeError, match="num_items must be an integer tensor") as info:
        cell(xb, yb)
    assert "has_aux=True" in str(info.value) and "Float32" in str(info.value)
    assert cell.pending == 0


# ====================================================================== 3. extra outputs: has_aux


@pytest.mark.parametrize("form", ["aux_mean", "aux_pair"])
def test_has_aux_returns_the_extra_outputs_and_the_same_update(mode, backend, form):
    w, b, x, y = problem()
    net = Contract(w, b, form, (1,), ())
    _, outs = accumulate(net, backend, x, y, has_aux=True)
    assert_weights_close(weights(net), big_batch_reference(w, b, x, y), RTOL, form)
    # the first micro-batch runs on the initial weights: its logits are x @ w.T + b (NumPy)
    loss, aux = outs[0]
    x0, y0 = split(x[0], y[0])[0]
    logits = aux if form == "aux_mean" else aux[0]
    np.testing.assert_allclose(logits.asnumpy(), x0.asnumpy() @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(loss.asnumpy()).reshape(()), DenseCE(w, b)(x0, y0).asnumpy(), rtol=1e-6)
    if form == "aux_pair":
        accuracy = float(np.mean(np.argmax(logits.asnumpy(), axis=1) == y0.asnumpy()))
        assert float(aux[1].asnumpy()) == pytest.approx(accuracy)
    assert len(outs) == WINDOWS * len(SIZES) and all(len(o) == 2 for o in outs)


def test_has_aux_with_a_single_output_says_what_to_return(mode):
    w, b, x, y = problem()
    net = DenseCE(w, b)
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 4, has_aux=True)
    with pytest.raises(TypeError, match=r"has_aux=True.*\(loss, aux\.\.\.\)"):
        cell(*split(x[0], y[0])[0])


def test_a_triple_without_has_aux_points_to_it(mode):
    w, b, x, y = problem()
    net = Contract(w, b, "aux_pair")
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 4)
    with pytest.raises(TypeError, match="tuple of 3.*has_aux=True"):
        cell(*split(x[0], y[0])[0])


# ====================================================================== 4. cells that update weights


class HoldsOptimizer(nn.Cell):
    def __init__(self, net, opt):
        super().__init__()
        self.net, self.opt = net, opt

    def construct(self, x, y):
        return self.net(x, y)


def _updaters(w, b):
    def loss():
        return DenseCE(w, b)

    def momentum(net):
        return nn.Momentum(net.trainable_params(), LR, MOMENTUM)

    one, two, three, four = loss(), loss(), loss(), loss()
    return {
        "TrainOneStepCell": nn.TrainOneStepCell(one, momentum(one)),
        "TrainOneStepWithLossScaleCell": nn.TrainOneStepWithLossScaleCell(two, momentum(two), Tensor(1.0)),
        "GradAccumCell": GradAccumCell(three, momentum(three), 2),
        "holds an optimizer": HoldsOptimizer(four, momentum(four)),
    }


@pytest.mark.parametrize(
    "kind", ["TrainOneStepCell", "TrainOneStepWithLossScaleCell", "GradAccumCell", "holds an optimizer"]
)
def test_a_cell_that_updates_weights_is_refused(kind):
    """Accepted before: two updates per micro-batch, 4.4e-1 off the big batch."""
    w, b, _, _ = problem()
    wrapped = _updaters(w, b)[kind]
    with pytest.raises(TypeError, match="updates the weights itself") as info:
        GradAccumCell(wrapped, nn.Momentum(wrapped.trainable_params(), LR, MOMENTUM), 4)
    assert "nn.WithLossCell(net, loss_fn), optimizer" in str(info.value)


# ====================================================================== 5. bare networks, functions


def test_a_bare_network_is_refused_naming_the_contract(mode, backend):
    w, b, x, y = problem()
    net = Dense(w, b)
    cell = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM, backend=backend), 4, backend=backend)
    with pytest.raises(TypeError, match=r"shape \(8, 5\).*nn\.WithLossCell\(network, loss_fn\)") as info:
        cell(split(x[0], y[0])[0][0])
    assert "scalar mean loss or a pair (loss_sum, num_items)" in str(info.value)
    assert cell.pending == 0


def test_a_plain_function_is_refused_saying_how_to_wrap_it():
    w, b, _, _ = problem()
    net = DenseCE(w, b)

    def forward_fn(x, y):
        return net(x, y)

    with pytest.raises(TypeError, match="got function: wrap the function in an nn.Cell whose construct calls it"):
        GradAccumCell(forward_fn, nn.SGD(net.trainable_params(), 0.1), 4)


@pytest.mark.parametrize("form", ["aux_mean", "aux_pair"])
def test_has_aux_inside_a_compiled_graph(mode, backend, form):
    """construct (a user's @ms.jit around the cell, dataset sink mode) returns (loss, aux) too."""
    w, b, x, y = problem()
    net = Contract(w, b, form)
    opt = FusedMomentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WD, backend=backend)
    cell = GradAccumCell(net, opt, len(SIZES), backend=backend, has_aux=True)

    @ms.jit
    def step(xb, yb):
        return cell(xb, yb)

    outs = [step(xb, yb) for i in range(WINDOWS) for xb, yb in split(x[i], y[i])]
    assert int(opt.global_step.asnumpy().item()) == WINDOWS
    assert_weights_close(weights(net), big_batch_reference(w, b, x, y), RTOL, f"{form} in @ms.jit")
    x0 = split(x[0], y[0])[0][0].asnumpy()
    logits = outs[0][1] if form == "aux_mean" else outs[0][1][0]
    np.testing.assert_allclose(logits.asnumpy(), x0 @ w.T + b, rtol=1e-5, atol=1e-6)
