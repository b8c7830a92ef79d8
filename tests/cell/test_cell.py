"""GradAccumCell (issue 3): equivalence with the large batch, the seven semantic points, Model +
callbacks + checkpoint resume, and ordering under asynchronous execution.

References are MindSpore's own nn.TrainOneStepCell on the large batch (nn.Momentum / nn.Adam) or
NumPy written in the tests. Most tests run in GRAPH_MODE and in PYNATIVE_MODE (`mode` fixture).
"""

import functools

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops
from mindspore.train import Model
from mindspore.train.callback import CheckpointConfig, LossMonitor, ModelCheckpoint, TimeMonitor

from mindspore_accum import FlushAtEpochEnd, FusedMomentum, GradAccumCell
from tests.cell.accum_models import (
    CNN_SHAPES,
    MODES,
    DenseCE,
    assert_weights_close,
    clip_by_norm_numpy,
    cnn_data,
    cnn_init,
    cnn_with_loss,
    max_rel_diff,
    micro_batches,
    np_dense_ce_grads,
    np_momentum_step,
    run_big_batch,
    weights,
)

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
RTOL = 1e-5  # acceptance: max|dw| <= 1e-5 * max|w|

OPTIMIZERS = {
    "Momentum": lambda params, backend="auto": nn.Momentum(params, LR, MOMENTUM, weight_decay=WD),
    "FusedMomentum": lambda params, backend="auto": FusedMomentum(
        params, LR, MOMENTUM, weight_decay=WD, backend=backend
    ),
    "Adam": lambda params, backend="auto": nn.Adam(params, learning_rate=1e-2, weight_decay=WD),
}
REFERENCE = {"Momentum": "Momentum", "FusedMomentum": "Momentum", "Adam": "Adam"}


def state(cell):
    """{name: numpy copy} of every Parameter of a cell (weights, moments, accumulators, counters)."""
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def accum_cell(init, opt_name, steps, float16=False, backend="auto", **kwargs):
    net = cnn_with_loss(init, float16=float16)
    cell = GradAccumCell(net, OPTIMIZERS[opt_name](net.trainable_params(), backend), steps, backend=backend, **kwargs)
    cell.set_train()
    return cell, net


def run_windows(cell, batches, steps):
    """Feeds each large batch as `steps` micro-batches; returns the loss Tensors (not synchronised)."""
    losses = []
    for x, y in batches:
        for xb, yb in micro_batches(x, y, steps):
            losses.append(cell(xb, yb))
    return losses


@functools.lru_cache(maxsize=None)
def big_batch_reference(mode_name, opt_name, seed, sizes):
    """Weights and optimizer state after nn.TrainOneStepCell on batches of `sizes` (cached)."""
    before = ms.get_context("mode")
    ms.set_context(mode=MODES[mode_name])
    x, y = cnn_data(seed, len(sizes))
    batches = [(x[i][:n], y[i][:n]) for i, n in enumerate(sizes)]
    net, opt = run_big_batch(cnn_init(0), batches, OPTIMIZERS[REFERENCE[opt_name]])
    ms.set_context(mode=before)
    return weights(net), moments_of(opt)


def step_of(opt):
    return int(opt.global_step.asnumpy().item())


def moments_of(opt):
    """{weight name: momentum buffer} of nn.Momentum / FusedMomentum ({} for other optimizers)."""
    return {p.name.split(".", 1)[1]: p.asnumpy().copy() for p in getattr(opt, "moments", ())}


# ====================================================================== acceptance 1: equivalence


@pytest.mark.parametrize("opt_name", ["Momentum", "FusedMomentum", "Adam"])
def test_three_updates_of_four_micro_batches_match_one_batch_of_32(mode, backend, opt_name):
    ref_w, ref_m = big_batch_reference(mode, opt_name, 1, (32, 32, 32))
    x, y = cnn_data(1, 3)
    cell, net = accum_cell(cnn_init(0), opt_name, 4, backend=backend)
    losses = run_windows(cell, zip(x, y), 4)
    assert len(losses) == 12 and all(np.isfinite(float(loss.asnumpy())) for loss in losses)
    assert_weights_close(weights(net), ref_w, RTOL, f"{opt_name} accumulated vs big batch")
    if ref_m:  # momentum buffers agree too (nn.Momentum's and FusedMomentum's start at zero)
        assert_weights_close(moments_of(cell.optimizer), ref_m, RTOL, "moments")
    assert step_of(cell.optimizer) == 3
    assert cell.pending == 0 and int(cell.items.asnumpy()) == 0


def nesterov_numpy_reference(w, b, batches, *, lr, momentum, weight_decay, sizes=None):
    """Whole-training NumPy (float64) reference: one nesterov step per large batch."""
    params = [w.astype(np.float64), b.astype(np.float64)]
    moments = [np.zeros_like(p) for p in params]
    for x, y in batches:
        grads = np_dense_ce_grads(params[0], params[1], x.astype(np.float64), y)
        np_momentum_step(
            params,
            moments,
            list(grads),
            lr=lr,
            momentum=momentum,
            weight_decay=[weight_decay, weight_decay],
            nesterov=True,
        )
    return {"dense.weight": params[0], "dense.bias": params[1]}


def dense_problem(seed, n_batches, batch=32, features=12, classes=5):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, features)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    x = rng.standard_normal((n_batches, batch, features)).astype(np.float32)
    y = rng.integers(0, classes, (n_batches, batch)).astype(np.int32)
    return w, b, x, y


def test_nesterov_accumulated_matches_numpy_reference(mode):
    w, b, x, y = dense_problem(3, 3)
    net = DenseCE(w, b)
    opt = FusedMomentum(net.trainable_params(), 0.5, 0.9, weight_decay=1e-2, nesterov=True)
    cell = GradAccumCell(net, opt, 4)
    run_windows(cell, zip(x, y), 4)
    expected = nesterov_numpy_reference(w, b, zip(x, y), lr=0.5, momentum=0.9, weight_decay=1e-2)
    assert_weights_close(weights(net), expected, RTOL, "nesterov vs NumPy")
    # the same training without nesterov is far away: the test can tell the two apart
    params = [w.astype(np.float64), b.astype(np.float64)]
    moments = [np.zeros_like(p) for p in params]
    for xb, yb in zip(x, y):
        np_momentum_step(
            params,
            moments,
            list(np_dense_ce_grads(params[0], params[1], xb.astype(np.float64), yb)),
            lr=0.5,
            momentum=0.9,
            weight_decay=[1e-2, 1e-2],
            nesterov=False,
        )
    plain = {"dense.weight": params[0], "dense.bias": params[1]}
    assert max_rel_diff(weights(net), plain) > 100 * RTOL


# ====================================================================== semantic 1: the mean


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_update_is_the_window_mean_whatever_the_accumulation_steps(mode, steps):
    """N micro-batches of 32/N give the update of one batch of 32 for every N (N=4 is above)."""
    ref_w, _ = big_batch_reference(mode, "FusedMomentum", 1, (32, 32, 32))
    x, y = cnn_data(1, 3)
    cell, net = accum_cell(cnn_init(0), "FusedMomentum", steps)
    run_windows(cell, zip(x, y), steps)
    assert_weights_close(weights(net), ref_w, RTOL, f"N={steps}")
    assert step_of(cell.optimizer) == 3


# ====================================================================== semantic 2: flush()


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_flush_divides_by_the_micro_batches_it_holds(mode, backend, opt_name):
    """A full window (32), 3 micro-batches + flush (24), a full window (32) == batches 32, 24, 32."""
    ref_w, ref_m = big_batch_reference(mode, opt_name, 2, (32, 24, 32))
    x, y = cnn_data(2, 3)
    cell, net = accum_cell(cnn_init(0), opt_name, 4, backend=backend)
    run_windows(cell, [(x[0], y[0])], 4)
    for xb, yb in micro_batches(x[1][:24], y[1][:24], 3):
        cell(xb, yb)
    assert cell.pending == 3
    assert cell.flush() is True
    assert cell.pending == 0
    assert step_of(cell.optimizer) == 2
    assert int(cell.items.asnumpy()) == 0

    before = state(cell)
    assert cell.flush() is False  # empty window: a no-op
    after = state(cell)
    for name in before:
        assert np.array_equal(before[name], after[name]), name

    run_windows(cell, [(x[2], y[2])], 4)
    assert step_of(cell.optimizer) == 3
    assert_weights_close(weights(net), ref_w, RTOL, "flush after 3 of 4")
    assert_weights_close(moments_of(cell.optimizer), ref_m, RTOL, "moments")


def test_flush_on_a_fresh_cell_is_a_no_op(mode):
    cell, _ = accum_cell(cnn_init(0), "FusedMomentum", 4)
    before = state(cell)
    assert cell.flush() is False
    assert cell.pending == 0
    after = state(cell)
    for name in before:
        assert np.array_equal(before[name], after[name]), name


# ====================================================================== semantic 3: schedules


SCHEDULED = {
    "FusedMomentum": lambda params: FusedMomentum(
        params, nn.ExponentialDecayLR(0.2, 0.5, 1), MOMENTUM, weight_decay=WD
    ),
    "Momentum": lambda params: nn.Momentum(params, nn.ExponentialDecayLR(0.2, 0.5, 1), MOMENTUM, weight_decay=WD),
}


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_lr_schedule_and_global_step_advance_once_per_update(mode, opt_name):
    """lr = 0.2 * 0.5**step changes every step: only one step per window matches the big batch."""
    x, y = cnn_data(4, 3)
    ref_net, ref_opt = run_big_batch(cnn_init(0), list(zip(x, y)), SCHEDULED["Momentum"])
    net = cnn_with_loss(cnn_init(0))
    cell = GradAccumCell(net, SCHEDULED[opt_name](net.trainable_params()), 4)
    steps_seen = []
    for i in range(3):
        for xb, yb in micro_batches(x[i], y[i], 4):
            cell(xb, yb)
            steps_seen.append(step_of(cell.optimizer))
    assert steps_seen == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert step_of(ref_opt) == 3
    assert_weights_close(weights(net), weights(ref_net), RTOL, "scheduled lr")


# ====================================================================== semantic 4: clipping


class LinearLoss(nn.Cell):
    """loss = <w, x[:4]> + <b, x[4:]>: the gradient of a micro-batch is exactly its input."""

    def __init__(self, w, b):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")

    def construct(self, x):
        return (self.w * x[:4]).sum() + (self.b * x[4:]).sum()


def clip_problem(mean_norm):
    """Two windows of two micro-batches a +- d: |a +- d| ~ 10 each, the window mean is a."""
    rng = np.random.default_rng(5)
    windows = []
    for _ in range(2):
        a = rng.standard_normal(7)
        a *= mean_norm / np.linalg.norm(a)
        d = rng.standard_normal(7)
        d *= 10.0 / np.linalg.norm(d)
        windows.append([(a + d).astype(np.float32), (a - d).astype(np.float32)])
    return windows


def numpy_clipped_momentum(w, b, windows, clip, lr, momentum, wd):
    params = [w.astype(np.float64), b.astype(np.float64)]
    moments = [np.zeros_like(p) for p in params]
    for window in windows:
        mean = np.mean([x.astype(np.float64) for x in window], axis=0)
        if clip is not None:
            mean = mean * min(1.0, clip / np.linalg.norm(mean))
        np_momentum_step(
            params, moments, [mean[:4], mean[4:]], lr=lr, momentum=momentum, weight_decay=[wd, wd], nesterov=False
        )
    return {"w": params[0], "b": params[1]}


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
@pytest.mark.parametrize("case", ["mean_below_clip", "mean_above_clip"])
def test_clip_global_norm_clips_the_window_mean(mode, backend, opt_name, case):
    """Every micro-batch's gradient has norm ~10 > clip = 1; the mean has norm 0.5 or 5."""
    windows = clip_problem(0.5 if case == "mean_below_clip" else 5.0)
    w0 = np.linspace(-1, 1, 4).astype(np.float32)
    b0 = np.linspace(2, 3, 3).astype(np.float32)
    lr, wd = 0.1, 0.5  # large weight decay: clipping after it would be visible

    def train(clip):
        net = LinearLoss(w0, b0)
        opt = (
            FusedMomentum(net.trainable_params(), lr, MOMENTUM, weight_decay=wd, backend=backend)
            if opt_name == "FusedMomentum"
            else nn.Momentum(net.trainable_params(), lr, MOMENTUM, weight_decay=wd)
        )
        cell = GradAccumCell(net, opt, 2, clip_global_norm=clip, micro_batch_weight="equal", backend=backend)
        for window in windows:
            for x in window:
                cell(Tensor(x))
        return weights(net)

    clipped = train(1.0)
    expected = numpy_clipped_momentum(w0, b0, windows, 1.0, lr, MOMENTUM, wd)
    assert_weights_close(clipped, expected, RTOL, "clipped vs NumPy")
    if case == "mean_below_clip":
        # the window mean is under the clip: exactly the unclipped training
        assert_weights_close(clipped, train(None), 1e-6, "clip inactive")
        assert_weights_close(clipped, numpy_clipped_momentum(w0, b0, windows, None, lr, MOMENTUM, wd), RTOL)
    else:
        assert max_rel_diff(clipped, numpy_clipped_momentum(w0, b0, windows, None, lr, MOMENTUM, wd)) > 1e-2


# ====================================================================== semantic 5: loss scaling


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_static_loss_scale_gives_the_unscaled_update(mode, backend, opt_name):
    ref_w, _ = big_batch_reference(mode, opt_name, 1, (32, 32, 32))
    x, y = cnn_data(1, 3)
    cell, net = accum_cell(cnn_init(0), opt_name, 4, loss_scale=2.0**10, backend=backend)
    run_windows(cell, zip(x, y), 4)
    assert_weights_close(weights(net), ref_w, RTOL, "static loss scale 1024")
    assert float(cell.loss_scale.asnumpy()) == 1024.0
    assert int(cell.skipped_updates.asnumpy()) == 0


@pytest.mark.parametrize("kind", ["update_cell", "manager"])
@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_dynamic_loss_scale_that_grows_still_unscales_correctly(mode, backend, opt_name, kind):
    """scale_window=1: the scale doubles after every window. The gradients of a window were scaled
    by the scale in force during that window; unscaling them by the new one would halve them."""
    ref_w, _ = big_batch_reference(mode, opt_name, 1, (32, 32, 32))
    x, y = cnn_data(1, 3)
    if kind == "update_cell":
        loss_scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**10, scale_factor=2, scale_window=1)
    else:
        loss_scale = ms.amp.DynamicLossScaleManager(init_loss_scale=2.0**10, scale_factor=2, scale_window=1)
    cell, net = accum_cell(cnn_init(0), opt_name, 4, loss_scale=loss_scale, backend=backend)
    run_windows(cell, zip(x, y), 4)
    assert float(cell.loss_scale.asnumpy()) == 2.0**13
    assert_weights_close(weights(net), ref_w, RTOL, "dynamic loss scale, growing")


class MultipliedLoss(nn.Cell):
    """The loss times a scalar input: setting it to inf makes that micro-batch's gradients non-finite."""

    def __init__(self, inner):
        super().__init__(auto_prefix=False)
        self.inner = inner

    def construct(self, x, y, factor):
        return self.inner(x, y) * factor


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_non_finite_gradient_skips_the_whole_window(mode, backend, opt_name):
    """Windows 1, 3, 5 finite; window 2 has inf in its 2nd micro-batch, window 4 in its last one;
    the inf in window 2 sits in the accumulators when window 3 starts (its first micro-batch must
    write, not add)."""
    x, y = cnn_data(6, 5)
    ref_net, ref_opt = _finite_windows_reference(mode, opt_name, x, y)
    net = MultipliedLoss(cnn_with_loss(cnn_init(0)))
    opt = OPTIMIZERS[opt_name](net.trainable_params(), backend)
    scaler = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**10, scale_factor=2, scale_window=1000)
    cell = GradAccumCell(net, opt, 4, loss_scale=scaler, backend=backend)
    one, inf = Tensor(1.0, ms.float32), Tensor(np.inf, ms.float32)
    poisoned = {(1, 1), (3, 3)}  # (window, micro-batch)
    after = []
    for i in range(5):
        for j, (xb, yb) in enumerate(micro_batches(x[i], y[i], 4)):
            cell(xb, yb, inf if (i, j) in poisoned else one)
        after.append(state(cell))
    expected_scale = [1024.0, 512.0, 512.0, 256.0, 256.0]
    expected_skips = [0, 1, 1, 2, 2]
    expected_steps = [1, 1, 2, 2, 3]
    for i, st in enumerate(after):
        assert float(st["accumulation.loss_scale"]) == expected_scale[i], i
        assert int(st["accumulation.skipped_updates"]) == expected_skips[i], i
        assert int(st["global_step"].item()) == expected_steps[i], i
        assert int(st["accumulation.micro_step"]) == 0 and int(st["accumulation.items"]) == 0, i
    for i in (1, 3):  # skipped windows: weights and moments bit-identical to before
        for name, value in after[i].items():
            if name in CNN_SHAPES or name.startswith("moments."):
                assert np.array_equal(value, after[i - 1][name]), (i, name)
    assert_weights_close(weights(net.inner), weights(ref_net), RTOL, "finite windows")
    assert_weights_close(moments_of(opt), moments_of(ref_opt), RTOL, "moments")


def _finite_windows_reference(mode_name, opt_name, x, y):
    return run_big_batch(cnn_init(0), [(x[i], y[i]) for i in (0, 2, 4)], OPTIMIZERS[REFERENCE[opt_name]])


# ====================================================================== semantic 6: float16


def test_float16_network_accumulates_in_float32(mode):
    ref_w, _ = big_batch_reference(mode, "FusedMomentum", 1, (32, 32, 32))
    w0 = cnn_init(0)
    x, y = cnn_data(1, 3)
    cell, net = accum_cell(w0, "FusedMomentum", 4, float16=True)
    run_windows(cell, zip(x, y), 4)
    assert all(a.dtype == ms.float32 for a in cell.accumulators)
    got = weights(net)
    # float16 forward/backward: compare the change of the weights, to a few float16 ulps
    delta_got = {k: got[k].astype(np.float64) - w0[k] for k in got}
    delta_ref = {k: ref_w[k].astype(np.float64) - w0[k] for k in got}
    assert max_rel_diff(delta_got, delta_ref) < 5e-2


class Float16Linear(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.full((4,), 0.5, np.float16)), name="w")

    def construct(self, x):
        return (self.w * ops.cast(x, ms.float16)).sum()


def test_float16_gradients_sum_beyond_float16_range(mode):
    """float16 parameters and gradients of 30000 per micro-batch: the window sum, 120000, is
    beyond float16's 65504 -- a float16 accumulator would overflow and skip the update."""
    net = Float16Linear()
    cell = GradAccumCell(net, nn.SGD(net.trainable_params(), 1e-6), 4)
    for _ in range(4):
        cell(Tensor(np.full((4,), 30000.0, np.float32)))
    assert all(a.dtype == ms.float32 for a in cell.accumulators)
    assert int(cell.skipped_updates.asnumpy()) == 0
    np.testing.assert_allclose(net.w.asnumpy().astype(np.float64), 0.5 - 1e-6 * 30000, rtol=1e-3)


# ====================================================================== semantic 7 + acceptance 3


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Adam"])
def test_resume_mid_window_from_checkpoint_is_bit_identical(mode, backend, opt_name, tmp_path):
    x, y = cnn_data(7, 3)
    micro = [mb for i in range(3) for mb in micro_batches(x[i], y[i], 4)]

    def make(init):
        scaler = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**10, scale_factor=2, scale_window=2)
        return accum_cell(init, opt_name, 4, loss_scale=scaler, backend=backend)[0]

    full = make(cnn_init(0))
    for xb, yb in micro:
        full(xb, yb)
    expected = state(full)

    first = make(cnn_init(0))
    for xb, yb in micro[:6]:
        first(xb, yb)
    assert first.pending == 2
    path = str(tmp_path / "mid_window.ckpt")
    ms.save_checkpoint(first, path)
    saved = ms.load_checkpoint(path)
    names = set(saved)
    assert {
        "accumulation.micro_step",
        "accumulation.items",
        "accumulation.loss_scale",
        "accumulation.skipped_updates",
        "global_step",
    } <= names
    for weight in cnn_init(0):
        assert f"accumulators.{weight}" in names
        assert weight in names
        if opt_name == "FusedMomentum":
            assert f"moments.{weight}" in names
        else:
            assert f"moment1.{weight}" in names and f"moment2.{weight}" in names
    assert int(saved["accumulation.micro_step"].asnumpy()) == 2
    assert int(saved["accumulation.items"].asnumpy()) == 16
    assert np.abs(saved["accumulators.d.weight"].asnumpy()).max() > 0

    resumed = make(cnn_init(99))  # a fresh cell with different weights
    not_loaded, _ = ms.load_param_into_net(resumed, saved)
    assert not not_loaded
    assert resumed.pending == 2
    for xb, yb in micro[6:]:
        resumed(xb, yb)
    got = state(resumed)
    assert set(got) == set(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), f"{name} differs after resume"
    assert float(got["accumulation.loss_scale"]) == 2048.0  # scale_window=2: grew once, after window 2


def micro_dataset(x, y, micro):
    """A NumpySlicesDataset yielding micro-batches of `micro` samples, in order."""
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(micro)


def test_model_train_with_callbacks_then_resume_from_model_checkpoint(mode, tmp_path, capsys):
    """Model(GradAccumCell).train(2, ...) with LossMonitor, TimeMonitor, ModelCheckpoint; epochs of
    6 micro-batches of 8 with N=4; the checkpoint after step 6 is mid-window (pending 2)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int32)

    cell, net = accum_cell(cnn_init(0), "FusedMomentum", 4)
    ckpt = ModelCheckpoint(
        prefix="accum",
        directory=str(tmp_path),
        config=CheckpointConfig(save_checkpoint_steps=6, keep_checkpoint_max=10),
    )
    Model(cell).train(
        2, micro_dataset(x, y, 8), callbacks=[LossMonitor(), TimeMonitor(), ckpt], dataset_sink_mode=False
    )
    assert "loss is" in capsys.readouterr().out
    assert step_of(cell.optimizer) == 3 and cell.pending == 0
    # the large-batch equivalent: samples 0-31, 32-47 + 0-15, 16-47
    seq_x, seq_y = np.concatenate([x, x]), np.concatenate([y, y])
    ref_net, _ = run_big_batch(
        cnn_init(0), [(seq_x[i : i + 32], seq_y[i : i + 32]) for i in (0, 32, 64)], OPTIMIZERS["Momentum"]
    )
    assert_weights_close(weights(net), weights(ref_net), RTOL, "Model.train vs big batch")
    expected = state(cell)

    mid = ms.load_checkpoint(str(tmp_path / "accum-1_6.ckpt"))
    assert int(mid["accumulation.micro_step"].asnumpy()) == 2
    resumed, _ = accum_cell(cnn_init(99), "FusedMomentum", 4)
    not_loaded, _ = ms.load_param_into_net(resumed, mid)
    assert not not_loaded
    assert resumed.pending == 2
    Model(resumed).train(1, micro_dataset(x, y, 8), callbacks=[LossMonitor()], dataset_sink_mode=False)
    got = state(resumed)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), f"{name} differs after resume"
    end = ms.load_checkpoint(str(tmp_path / "accum-2_6.ckpt"))
    for name in expected:
        assert np.array_equal(end[name].asnumpy(), expected[name]), f"{name} differs in the final checkpoint"


def test_flush_at_epoch_end_callback(mode):
    """Epochs of 6 micro-batches, N=4: windows of 4, 2 (flushed at epoch end), 4, 2."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int32)
    cell, net = accum_cell(cnn_init(0), "FusedMomentum", 4)
    Model(cell).train(2, micro_dataset(x, y, 8), callbacks=[FlushAtEpochEnd(cell)], dataset_sink_mode=False)
    assert step_of(cell.optimizer) == 4 and cell.pending == 0
    ref_net, _ = run_big_batch(cnn_init(0), [(x[:32], y[:32]), (x[32:], y[32:])] * 2, OPTIMIZERS["Momentum"])
    assert_weights_close(weights(net), weights(ref_net), RTOL, "FlushAtEpochEnd")


# ====================================================================== ordering / async safety


class WideMLP(nn.Cell):
    """Wide enough that forward and backward take a while: late reads or writes would show."""

    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.l1 = nn.Dense(192, 512)
        self.l2 = nn.Dense(512, 512)
        self.l3 = nn.Dense(512, 10)
        self.relu = nn.ReLU()
        for layer in (self.l1, self.l2, self.l3):
            fan_in = layer.weight.shape[1]
            layer.weight.set_data(
                Tensor((rng.standard_normal(layer.weight.shape) * np.sqrt(2 / fan_in)).astype(np.float32))
            )
            layer.bias.set_data(Tensor((rng.standard_normal(layer.bias.shape) * 0.1).astype(np.float32)))

    def construct(self, x):
        return self.l3(self.relu(self.l2(self.relu(self.l1(x.reshape(x.shape[0], -1))))))


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_losses_see_every_update_without_synchronising(mode, opt_name):
    """12 windows of 2 micro-batches of 32 fed back to back; no host read until the end. Each
    micro-batch's loss is computed from the weights its window starts from, so a forward pass that
    read a weight before the kernel wrote it, or an update that read a gradient before it was
    computed, shows up in these losses and in the final weights."""
    windows, steps = 12, 2
    rng = np.random.default_rng(10)
    x = rng.standard_normal((windows, 64, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, (windows, 64)).astype(np.int32)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    ref = nn.WithLossCell(WideMLP(11), loss_fn)
    ref_step = nn.TrainOneStepCell(ref, nn.Momentum(ref.trainable_params(), 0.05, 0.9, weight_decay=WD))
    ref_losses = []
    for i in range(windows):
        ref_losses += [float(ref(xb, yb).asnumpy()) for xb, yb in micro_batches(x[i], y[i], steps)]
        ref_step(Tensor(x[i]), Tensor(y[i]))

    net = nn.WithLossCell(WideMLP(11), loss_fn)
    opt_cls = FusedMomentum if opt_name == "FusedMomentum" else nn.Momentum
    cell = GradAccumCell(net, opt_cls(net.trainable_params(), 0.05, 0.9, weight_decay=WD), steps)
    inputs = [mb for i in range(windows) for mb in micro_batches(x[i], y[i], steps)]
    losses = [cell(xb, yb) for xb, yb in inputs]  # no synchronisation in between
    got = [float(loss.asnumpy()) for loss in losses]
    np.testing.assert_allclose(got, ref_losses, rtol=1e-4, atol=1e-6)
    assert_weights_close(weights(net), weights(ref), RTOL, "after 12 windows")
    # the losses really move: a stale weight would not go unnoticed
    assert abs(ref_losses[-1] - ref_losses[0]) > 1e-2


class DiscardingLoss(nn.Cell):
    """Calls the accumulation cell in a graph and throws its output away."""

    def __init__(self, inner):
        super().__init__(auto_prefix=False)
        self.inner = inner

    def construct(self, x, y):
        self.inner(x, y)
        return ops.zeros((1,), ms.float32)


@pytest.mark.parametrize("scale", ["none", "growing"])
@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Adam"])
def test_graph_update_is_not_pruned_when_the_loss_is_unused(backend, opt_name, scale):
    """The cell inlined into a bigger graph (its `construct`, with in-graph control flow) whose
    output ignores the loss: the in-place kernels must still run, in order. "growing": a dynamic
    loss scale that doubles after every window (the window is unscaled with its own scale)."""
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ref_w, _ = big_batch_reference("GRAPH", opt_name, 1, (32, 32, 32))
        x, y = cnn_data(1, 3)
        loss_scale = (
            nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**10, scale_factor=2, scale_window=1)
            if scale == "growing"
            else None
        )
        cell, net = accum_cell(cnn_init(0), opt_name, 4, loss_scale=loss_scale, backend=backend)
        outer = DiscardingLoss(cell)
        for i in range(3):
            for j, (xb, yb) in enumerate(micro_batches(x[i], y[i], 4)):
                outer(xb, yb)
                assert cell.pending == (j + 1) % 4
        assert step_of(cell.optimizer) == 3
        assert float(cell.loss_scale.asnumpy()) == (2.0**13 if scale == "growing" else 1.0)
        assert_weights_close(weights(net), ref_w, RTOL, "loss unused")
    finally:
        ms.set_context(mode=before)


# ====================================================================== dataset sink mode


def test_model_train_sink_mode_with_clipping_and_a_non_finite_skip(backend):
    """Model.train(dataset_sink_mode=True): three windows of 4 micro-batches of 8, the second
    poisoned with an inf, clipping on. Equals the clipped large-batch steps on windows 1 and 3 (the
    clip computed in NumPy), and the skip is reported. On CPU, MindSpore runs this without sinking
    (it calls the cell from Python, saying so only at INFO level); the in-graph path that real
    sink mode takes on GPU/Ascend is tested in test_ingraph_skips.py (an outer graph Cell)."""
    before_mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        rng = np.random.default_rng(21)
        w = (rng.standard_normal((5, 12)) * 0.3).astype(np.float32)
        b = (rng.standard_normal(5) * 0.1).astype(np.float32)
        x = rng.standard_normal((96, 12)).astype(np.float32)
        y = rng.integers(0, 5, 96).astype(np.int32)
        x_poisoned = x.copy()
        x_poisoned[32 + 8 + 3, 4] = np.inf  # window 2, micro-batch 2
        clip = 0.3

        ref = DenseCE(w, b)
        opt = nn.Momentum(ref.trainable_params(), LR, MOMENTUM, weight_decay=WD)
        grad_fn = ms.value_and_grad(ref, None, opt.parameters)
        for lo in (0, 64):
            _, grads = grad_fn(Tensor(x[lo : lo + 32]), Tensor(y[lo : lo + 32]))
            opt(clip_by_norm_numpy(grads, clip))

        net = DenseCE(w, b)
        cell = GradAccumCell(
            net,
            FusedMomentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WD, backend=backend),
            4,
            clip_global_norm=clip,
            backend=backend,
        )
        data = ds.NumpySlicesDataset({"x": x_poisoned, "y": y}, shuffle=False).batch(8)
        with pytest.warns(RuntimeWarning, match="non-finite gradient"):
            Model(cell).train(1, data, dataset_sink_mode=True)
        assert step_of(cell.optimizer) == 2 and int(cell.skipped_updates.asnumpy()) == 1 and cell.pending == 0
        assert_weights_close(weights(net), weights(ref), RTOL, "sink mode, clipped, window 2 skipped")
    finally:
        ms.set_context(mode=before_mode)
