"""GradAccumulator (issue 24): MindSpore 2.x's functional training step, against the big batch.

The training step is the tutorials' (``ms.value_and_grad(forward, None, params, has_aux=True)``)
with the accumulator called on its gradients, three ways: called from Python in PYNATIVE
("eager"), inside ``@ms.jit`` in PYNATIVE ("jit"), and inside ``@ms.jit`` in GRAPH mode.
The reference is a big-batch run written here: MindSpore's value_and_grad on the whole window,
then MindSpore's own optimizer (nn.Momentum for FusedMomentum, nn.AdamWeightDecay for FusedAdamW),
clipping in NumPy. Nothing in the references calls mindspore_accum.

Adding an optimizer is one entry of OPTIMIZERS: (ours, the reference's), each made from the params.
"""

import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.experimental import optim as experimental_optim

from mindspore_accum import FusedAdamW, FusedMomentum, GradAccumulator
from tests.cell.accum_models import Mlp, assert_weights_close, clip_by_norm_numpy

IN, HIDDEN, OUT = 6, 8, 3
SIZES = (8, 8, 8, 5)  # one window: a big batch of 29
STEPS = len(SIZES)
RTOL = 1e-5


def _momentum(p):
    return nn.Momentum(p, 0.1, 0.9, weight_decay=1e-3)


OPTIMIZERS = {
    "Momentum": (_momentum, _momentum),
    "FusedMomentum": (lambda p: FusedMomentum(p, 0.1, 0.9, weight_decay=1e-3), _momentum),
    "FusedAdamW": (
        lambda p: FusedAdamW(p, 1e-2, weight_decay=0.01),
        lambda p: nn.AdamWeightDecay(p, 1e-2, weight_decay=0.01),
    ),
    "Adam": (lambda p: nn.Adam(p, 1e-2), lambda p: nn.Adam(p, 1e-2)),
    "experimental.AdamW": (
        lambda p: experimental_optim.AdamW(p, lr=1e-2, weight_decay=0.01),
        lambda p: experimental_optim.AdamW(p, lr=1e-2, weight_decay=0.01),
    ),
}
# (context mode, how the step runs): called from Python, or inside @ms.jit
CALLS = [("PYNATIVE", "eager"), ("PYNATIVE", "jit"), ("GRAPH", "jit")]


@pytest.fixture(params=CALLS, ids=["-".join(c) for c in CALLS])
def call(request):
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param[0] == "GRAPH" else ms.PYNATIVE_MODE)
    yield request.param[1]
    ms.set_context(mode=before)


def make_net(seed=0):
    net = Mlp(IN, HIDDEN, OUT)
    rng = np.random.default_rng(seed)
    for p in net.trainable_params():
        p.set_data(Tensor((rng.standard_normal(p.shape) * 0.5).astype(np.float32)))
    return net


def make_data(seed, n):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, IN)).astype(np.float32), rng.integers(0, OUT, n).astype(np.int32)


def split(x, y, sizes=SIZES):
    edges = np.cumsum((0,) + tuple(sizes))
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def weights(net):
    return {p.name: p.asnumpy().copy() for p in net.trainable_params()}


def build(opt_name, steps=STEPS, **kwargs):
    net = make_net()
    opt = OPTIMIZERS[opt_name][0](net.trainable_params())
    return net, GradAccumulator(opt, steps, **kwargs)


def mean_step(net, acc, call):
    """The tutorial's step with a mean loss: returns (loss, applied)."""
    ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(x, y):
        logits = net(x)
        loss = ce(logits, y)
        return loss * acc.loss_scale, (loss, logits)

    grad_fn = ms.value_and_grad(forward, None, net.trainable_params(), has_aux=True)

    def step(x, y):
        (_, (loss, _)), grads = grad_fn(x, y)
        return loss, acc(grads, x.shape[0], loss=loss)

    return ms.jit(step) if call == "jit" else step


def masked_sum_step(net, acc, call):
    """A token-style sum loss: labels < 0 are ignored; num_items = the valid labels (a tensor)."""
    ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="none")

    def forward(x, y):
        mask = ops.cast(y >= 0, ms.float32)
        loss_sum = (ce(net(x), ops.maximum(y, 0)) * mask).sum()
        return loss_sum * acc.loss_scale, (loss_sum, ops.cast(mask.sum(), ms.int32))

    grad_fn = ms.value_and_grad(forward, None, net.trainable_params(), has_aux=True)

    def step(x, y):
        (_, (loss_sum, items)), grads = grad_fn(x, y)
        return loss_sum, acc(grads, items, "sum", loss_sum)

    return ms.jit(step) if call == "jit" else step


def run(step, batches):
    """Every micro-batch through ``step``; returns the applied flags."""
    return [bool(step(Tensor(x), Tensor(y))[1].asnumpy()) for x, y in batches]


def reference(opt_name, windows, *, clip=None, masked=False):
    """Big-batch steps with MindSpore's own optimizer (PYNATIVE); returns (weights, losses)."""
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = make_net()
        params = net.trainable_params()
        opt = OPTIMIZERS[opt_name][1](params)
        ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="none")

        def forward(x, y):
            per_sample = ce(net(x), ops.maximum(y, 0))
            mask = ops.cast(y >= 0, ms.float32) if masked else ops.ones_like(per_sample)
            return (per_sample * mask).sum() / mask.sum()

        grad_fn = ms.value_and_grad(forward, None, params)
        losses = []
        for x, y in windows:
            loss, grads = grad_fn(Tensor(x), Tensor(y))
            if clip is not None:
                grads = clip_by_norm_numpy(grads, clip)
            opt(tuple(grads))
            losses.append(float(loss.asnumpy()))
        return weights(net), losses
    finally:
        ms.set_context(mode=before)


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_micro_batches_8_8_8_5_equal_one_step_on_29(call, opt_name):
    x, y = make_data(1, 2 * sum(SIZES))
    windows = [(x[:29], y[:29]), (x[29:], y[29:])]
    expected, losses = reference(opt_name, windows)
    net, acc = build(opt_name)
    step = mean_step(net, acc, call)
    applied = []
    window_losses = []
    for wx, wy in windows:
        applied += run(step, split(wx, wy))
        window_losses.append(acc.window_loss)
    assert applied == [False, False, False, True] * 2
    assert acc.pending == 0 and int(acc.skipped_updates.asnumpy()) == 0
    assert_weights_close(weights(net), expected, RTOL, f"{opt_name} {call}")
    # the window loss is the big batch's loss (before its update)
    np.testing.assert_allclose(window_losses, losses, rtol=1e-5)


def test_sum_contract_with_ignored_labels(call):
    """reduction="sum": the update is the mean over the valid labels of the whole window, also
    with a micro-batch holding none (it adds nothing)."""
    x, y = make_data(2, 2 * sum(SIZES))
    rng = np.random.default_rng(3)
    y[rng.random(len(y)) < 0.3] = -1  # ignored labels
    y[8:16] = -1  # the second micro-batch of the first window: no valid label at all
    windows = [(x[:29], y[:29]), (x[29:], y[29:])]
    expected, losses = reference("FusedMomentum", windows, masked=True)
    net, acc = build("FusedMomentum")
    step = masked_sum_step(net, acc, call)
    window_losses = []
    for wx, wy in windows:
        assert run(step, split(wx, wy)) == [False, False, False, True]
        window_losses.append(acc.window_loss)
    assert_weights_close(weights(net), expected, RTOL, f"sum contract {call}")
    np.testing.assert_allclose(window_losses, losses, rtol=1e-5)


@pytest.mark.parametrize("opt_name", ["Momentum", "FusedAdamW"])
def test_clipping_equals_the_clipped_big_batch(call, opt_name):
    clip = 0.05
    x, y = make_data(4, 2 * sum(SIZES))
    windows = [(x[:29], y[:29]), (x[29:], y[29:])]
    expected, _ = reference(opt_name, windows, clip=clip)
    unclipped, _ = reference(opt_name, windows)
    net, acc = build(opt_name, clip_global_norm=clip)
    step = mean_step(net, acc, call)
    for wx, wy in windows:
        run(step, split(wx, wy))
    assert_weights_close(weights(net), expected, RTOL, f"clipped {opt_name} {call}")
    # the clip was active: without it the weights differ far beyond the tolerance
    diff = max(float(np.abs(unclipped[k] - expected[k]).max()) for k in expected)
    assert diff > 100 * RTOL * max(float(np.abs(v).max()) for v in expected.values())


def test_dynamic_loss_scale_skips_an_overflow_and_lowers_the_scale(call):
    x, y = make_data(5, 3 * sum(SIZES))
    windows = [(x[i * 29 : (i + 1) * 29], y[i * 29 : (i + 1) * 29]) for i in range(3)]
    expected, _ = reference("FusedMomentum", [windows[0], windows[2]])
    scale_cell = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**12, scale_factor=2, scale_window=1000)
    net, acc = build("FusedMomentum", loss_scale=scale_cell)
    step = mean_step(net, acc, call)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # overflows under a dynamic scale are routine: no warning
        assert run(step, split(*windows[0]))[-1]
        before = weights(net)
        poisoned = split(*windows[1])
        poisoned[2][0][1, 1] = np.inf
        assert run(step, poisoned) == [False] * 4
        assert all(np.array_equal(before[k], v) for k, v in weights(net).items()), "the overflow changed weights"
        assert float(acc.loss_scale.asnumpy()) == 2.0**11
        assert run(step, split(*windows[2]))[-1]
    assert int(acc.skipped_updates.asnumpy()) == 1
    assert_weights_close(weights(net), expected, RTOL, f"dynamic loss scale {call}")


def _state(acc):
    return {p.name: p.asnumpy().copy() for p in acc.get_parameters()}


@pytest.mark.parametrize("opt_name", ["FusedAdamW", "Adam", "experimental.AdamW"])
def test_mid_window_checkpoint_resumes_bit_identically(call, opt_name, tmp_path):
    """ms.save_checkpoint(accumulator) holds weights, optimizer state and window: a fresh
    accumulator (new network, optimizer) loaded from it continues bit-identically."""
    x, y = make_data(6, 2 * sum(SIZES))
    batches = split(x[:29], y[:29]) + split(x[29:], y[29:])
    net, acc = build(opt_name)
    step = mean_step(net, acc, call)
    run(step, batches[:6])  # one window and two micro-batches of the next
    assert acc.pending == 2
    path = str(tmp_path / "mid.ckpt")
    ms.save_checkpoint(acc, path)
    run(step, batches[6:])
    uninterrupted = _state(acc)

    net2, acc2 = build(opt_name)
    assert {p.name for p in acc2.get_parameters()} == set(uninterrupted)
    ms.load_checkpoint(path, net=acc2)
    assert acc2.pending == 2
    run(mean_step(net2, acc2, call), batches[6:])
    resumed = _state(acc2)
    for name, value in uninterrupted.items():
        assert resumed[name].tobytes() == value.tobytes(), f"{name} differs after the resume"


def test_flush_applies_a_partial_window(call):
    x, y = make_data(7, 16)
    expected, _ = reference("FusedMomentum", [(x, y)])
    net, acc = build("FusedMomentum")
    step = mean_step(net, acc, call)
    assert run(step, split(x, y, (8, 8))) == [False, False]
    assert acc.pending == 2
    assert acc.flush() is True
    assert acc.flush() is False  # nothing pending
    assert_weights_close(weights(net), expected, RTOL, "flush")


def test_schedule_inside_a_graph_is_refused():
    net = make_net()
    acc = GradAccumulator(FusedMomentum(net.trainable_params(), 0.1, 0.9), [(0, 2), (1, 4)])
    step = mean_step(net, acc, "jit")
    x, y = make_data(8, 8)
    with pytest.raises(RuntimeError, match="schedule"):
        step(Tensor(x), Tensor(y))


def test_bad_arguments_are_refused_with_what_to_do():
    net = make_net()
    params = net.trainable_params()
    acc = GradAccumulator(FusedMomentum(params, 0.1, 0.9), 2)
    grads = tuple(ops.zeros_like(p) for p in params)
    with pytest.raises(TypeError, match="num_items must be .* integer"):
        acc(grads, 8.0)
    with pytest.raises(TypeError, match="num_items must be .* integer"):
        acc(grads, Tensor(8.0, ms.float32))
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        acc(grads, 8, reduction="avg")
    with pytest.raises(TypeError, match="tuple of 4 gradients"):
        acc(grads[:3], 8)
    with pytest.raises(TypeError, match="optimizer"):
        GradAccumulator(net, 2)
    with pytest.raises(ValueError, match="accumulation_steps"):
        GradAccumulator(FusedMomentum(params, 0.1, 0.9), 0)
    assert acc.pending == 0  # nothing was accumulated by the refused calls
