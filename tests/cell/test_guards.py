"""Guards of GradAccumCell (issue 17): backend choice, optimizer loss scale, non-trainable state,
checkpoints resumed under another accumulation setting or world size, cross-backend
checkpoints, and a window end that fails part-way.

References are nn.TrainOneStepCell on the large batch or uninterrupted runs; nothing compares
the code under test with itself on the same path.
"""

import os
import subprocess
import sys
import textwrap

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

import mindspore_accum.cell as cell_module
from mindspore_accum import FusedAdamW, FusedMomentum, GradAccumCell
from tests.cell.accum_models import (
    DenseCE,
    assert_weights_close,
    weights,
)

LR, MOMENTUM = 0.1, 0.9
RTOL = 1e-5


def problem(seed=0, batches=4, batch=8, features=12, classes=5):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, features)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    x = rng.standard_normal((batches, batch, features)).astype(np.float32)
    y = rng.integers(0, classes, (batches, batch)).astype(np.int32)
    return w, b, x, y


def state(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def big_batch(w, b, batches):
    """nn.TrainOneStepCell + nn.Momentum, one step per batch (each a list of (x, y) parts)."""
    net = DenseCE(w, b)
    step = nn.TrainOneStepCell(net, nn.Momentum(net.trainable_params(), LR, MOMENTUM))
    for parts in batches:
        step(Tensor(np.concatenate([x for x, _ in parts])), Tensor(np.concatenate([y for _, y in parts])))
    return weights(net)


# ====================================================================== backend choice


def test_auto_picks_native_when_the_aot_library_is_refused(tmp_path):
    """MS_CUSTOM_AOT_WHITE_LIST pointing elsewhere makes MindSpore refuse our library: 'auto'
    says so once and trains on MindSpore's operators; 'kernels' raises naming the reason."""
    script = textwrap.dedent(f"""
        import os, warnings
        os.environ["MS_CUSTOM_AOT_WHITE_LIST"] = {str(tmp_path)!r}
        import numpy as np, mindspore as ms
        from mindspore import Tensor, nn
        from mindspore_accum import FusedMomentum, GradAccumCell
        net = nn.Dense(3, 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt = FusedMomentum(net.trainable_params(), 0.1, 0.9)
            cell = GradAccumCell(nn.WithLossCell(net, nn.MSELoss()), opt, 2)
        print("backends", cell.backend, opt.backend)
        print("warned", sum("chose 'native'" in str(w.message) for w in caught))
        before = net.weight.asnumpy().copy()
        for _ in range(2):
            cell(Tensor(np.ones((4, 3), np.float32)), Tensor(np.zeros((4, 2), np.float32)))
        print("moved", bool(np.abs(net.weight.asnumpy() - before).max() > 0))
        try:
            GradAccumCell(nn.WithLossCell(net, nn.MSELoss()), opt, 2, backend="kernels")
        except RuntimeError as err:
            print("kernels refused:", "MS_CUSTOM_AOT_WHITE_LIST" in str(err))
    """)
    env = dict(os.environ, GLOG_v="3")
    # cwd: not the repository root, whose source folder (no compiled extension) would shadow the install
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout
    assert "backends native native" in lines
    assert "warned 2" in lines  # once for the optimizer, once for the cell
    assert "moved True" in lines and "kernels refused: True" in lines


def test_unknown_backend_is_rejected():
    net = DenseCE(*problem()[:2])
    with pytest.raises(ValueError, match="backend must be one of"):
        GradAccumCell(net, nn.SGD(net.trainable_params(), 0.1), 2, backend="ascend")
    with pytest.raises(ValueError, match="backend must be one of"):
        FusedMomentum(net.trainable_params(), 0.1, 0.9, backend="fast")


# ====================================================================== construction guards


@pytest.mark.parametrize(
    "make",
    [
        lambda p: nn.Momentum(p, LR, MOMENTUM, loss_scale=8.0),
        lambda p: FusedMomentum(p, LR, MOMENTUM, loss_scale=8.0),
    ],
)
def test_an_optimizer_with_its_own_loss_scale_is_rejected(make):
    net = DenseCE(*problem()[:2])
    with pytest.raises(ValueError, match="loss_scale=8.0"):
        GradAccumCell(net, make(net.trainable_params()), 2)


def test_accumulators_and_moments_are_not_trainable():
    net = DenseCE(*problem()[:2])
    for opt in (FusedMomentum(net.trainable_params(), LR, MOMENTUM), FusedAdamW(net.trainable_params())):
        cell = GradAccumCell(net, opt, 2)
        names = [p.name for p in cell.trainable_params()]
        assert not [n for n in names if n.split(".")[0] in ("accumulators", "moments", "adam_m", "adam_v")], names
        assert "dense.weight" in names
        state_names = [p.name for p in cell.get_parameters()]  # still state: checkpointed
        assert "accumulators.dense.weight" in state_names and "accumulation.items" in state_names


# ====================================================================== resume under other settings


def test_a_window_resumed_with_other_accumulation_steps_is_applied_with_a_warning(mode, tmp_path):
    """A window of 2 of 4 micro-batches, loaded into a cell with accumulation_steps=2: it is applied
    as it is (the mean of those 2), then windows of 2 follow -- never a window of 3."""
    w, b, x, y = problem(1, batches=4)
    net = DenseCE(w, b)
    writer = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM), 4)
    writer(Tensor(x[0]), Tensor(y[0]))
    writer(Tensor(x[1]), Tensor(y[1]))
    path = str(tmp_path / "n4.ckpt")
    ms.save_checkpoint(writer, path)

    net2 = DenseCE(w, b)
    reader = GradAccumCell(net2, FusedMomentum(net2.trainable_params(), LR, MOMENTUM), 2)
    ms.load_param_into_net(reader, ms.load_checkpoint(path))
    assert reader.pending == 2
    with pytest.warns(RuntimeWarning, match="accumulation_steps=4"):
        reader(Tensor(x[2]), Tensor(y[2]))
    assert reader.pending == 1
    reader(Tensor(x[3]), Tensor(y[3]))
    assert reader.pending == 0
    assert int(reader.optimizer.global_step.asnumpy().item()) == 2
    expected = big_batch(w, b, [[(x[0], y[0]), (x[1], y[1])], [(x[2], y[2]), (x[3], y[3])]])
    assert_weights_close(weights(net2), expected, RTOL, "resumed under accumulation_steps=2")


def test_a_window_resumed_under_another_world_size_raises(mode, tmp_path):
    w, b, x, y = problem(2)
    net = DenseCE(w, b)
    writer = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM), 4)
    writer(Tensor(x[0]), Tensor(y[0]))
    ms.save_checkpoint(writer, str(tmp_path / "w.ckpt"))
    saved = ms.load_checkpoint(str(tmp_path / "w.ckpt"))
    saved["accumulation.world_size"] = ms.Parameter(Tensor(2, ms.int32), name="accumulation.world_size")
    net2 = DenseCE(w, b)
    reader = GradAccumCell(net2, FusedMomentum(net2.trainable_params(), LR, MOMENTUM), 4)
    ms.load_param_into_net(reader, saved)
    before = state(reader)
    with pytest.raises(ValueError, match="2 worker"):
        reader(Tensor(x[1]), Tensor(y[1]))
    with pytest.raises(ValueError, match="world size"):
        reader.flush()
    after = state(reader)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ====================================================================== across backends


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "FusedAdamW"])
def test_a_checkpoint_crosses_backends_bit_identically(mode, opt_name, tmp_path):
    """Written mid-window by one backend, loaded by the other: every state value arrives
    bit-identically, and the training that continues matches the first backend's within
    float32 rounding (the two compute the same formulas in different operation orders)."""
    w, b, x, y = problem(3, batches=6)
    make_opt = {
        "FusedMomentum": lambda p, be: FusedMomentum(p, LR, MOMENTUM, weight_decay=1e-3, backend=be),
        "FusedAdamW": lambda p, be: FusedAdamW(p, 1e-2, weight_decay=1e-2, bias_correction=True, backend=be),
    }
    for first, second in (("kernels", "native"), ("native", "kernels")):

        def make(be):
            net = DenseCE(w, b)
            return GradAccumCell(net, make_opt[opt_name](net.trainable_params(), be), 4, backend=be)

        writer = make(first)
        for i in range(6):  # one update and 2 micro-batches pending
            writer(Tensor(x[i]), Tensor(y[i]))
        path = str(tmp_path / f"{first}.ckpt")
        ms.save_checkpoint(writer, path)
        saved = ms.load_checkpoint(path)
        reader = make(second)
        not_loaded, _ = ms.load_param_into_net(reader, saved)
        assert not not_loaded
        got = state(reader)
        assert set(got) == set(saved)
        for name in got:
            assert np.array_equal(got[name], saved[name].asnumpy()), f"{name} changed crossing {first}->{second}"
        assert reader.pending == 2
        for i in range(2):
            writer(Tensor(x[i]), Tensor(y[i]))
            reader(Tensor(x[i]), Tensor(y[i]))
        assert reader.pending == 0
        assert_weights_close(weights(reader.network), weights(writer.network), RTOL, f"{first} -> {second}")


# ====================================================================== a failing window end


def _failing(x):
    raise RuntimeError("injected failure")


FAIL = ops.Custom(_failing, out_shape=lambda s: s, out_dtype=lambda t: t, func_type="pyfunc")


def _inject(stage):
    """A GradAccumCell whose window end fails at run time right after `stage` produced its output
    (a pyfunc op that raises, fed by that output, in front of everything that follows)."""
    base = GradAccumCell

    class Failing(GradAccumCell):
        def _window_sum(self):
            out = base._window_sum(self)  # (sums, items, micro-batches, loss sum)
            items = out[1]
            if stage == "sum":
                items = ops.cast(FAIL(ops.cast(items, ms.float32)), ms.int64)
            return (out[0], items) + out[2:]

        def _normalise(self, items, squares):
            if stage == "check":
                squares = FAIL(squares)
            grad_scale = base._normalise(self, items, squares)
            return FAIL(grad_scale) if stage == "normalise" else grad_scale

        def _update(self, sources, grad_scale):
            if stage == "update":  # inside the update branch, before the optimizer writes
                grad_scale = FAIL(grad_scale)
            return base._update(self, sources, grad_scale)

    return Failing


@pytest.mark.parametrize("stage", ["sum", "check", "normalise", "update"])
def test_a_window_end_that_fails_leaves_the_state_of_before(mode, backend, stage):
    """The window end is one graph whose writes come after every stage that can fail: a failure
    at any stage leaves every Parameter as it was before the window end (the full window still
    pending), and finishing the window afterwards gives the uninterrupted result."""
    w, b, x, y = problem(4, batches=4)
    loss_scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**4, scale_factor=2, scale_window=1)
    net = DenseCE(w, b)
    cell = _inject(stage)(
        net,
        FusedMomentum(net.trainable_params(), LR, MOMENTUM, backend=backend),
        2,
        loss_scale=loss_scale,
        clip_global_norm=0.5,
        backend=backend,
    )
    cell(Tensor(x[0]), Tensor(y[0]))
    before = state(cell)
    with pytest.raises(RuntimeError, match="injected failure"):
        cell(Tensor(x[1]), Tensor(y[1]))
    after = state(cell)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    # only the micro-step's own state moved: the second micro-batch is in the window
    assert set(changed) <= {"accumulation.micro_step", "accumulation.items", "accumulation.loss_sum"} | {
        k for k in before if k.startswith("accumulators.")
    }, changed
    assert cell.pending == 2 and int(cell.items.asnumpy()) == 16
    assert after["global_step"] == before["global_step"]
    assert float(after["accumulation.loss_scale"]) == 16.0

    # the same window finished by a healthy cell holding this state equals the uninterrupted run
    healthy_net = DenseCE(w, b)
    healthy = GradAccumCell(
        healthy_net,
        FusedMomentum(healthy_net.trainable_params(), LR, MOMENTUM, backend=backend),
        2,
        loss_scale=nn.DynamicLossScaleUpdateCell(2.0**4, 2, 1),
        clip_global_norm=0.5,
        backend=backend,
    )
    ms.load_param_into_net(healthy, {k: ms.Parameter(Tensor(v), name=k) for k, v in after.items()})
    assert healthy.flush() is True

    ref_net = DenseCE(w, b)
    ref = GradAccumCell(
        ref_net,
        FusedMomentum(ref_net.trainable_params(), LR, MOMENTUM, backend=backend),
        2,
        loss_scale=nn.DynamicLossScaleUpdateCell(2.0**4, 2, 1),
        clip_global_norm=0.5,
        backend=backend,
    )
    ref(Tensor(x[0]), Tensor(y[0]))
    ref(Tensor(x[1]), Tensor(y[1]))
    for name, value in state(ref).items():
        assert np.array_equal(state(healthy)[name], value), name


def test_an_interrupted_window_end_is_finished_by_the_next_call(mode):
    """KeyboardInterrupt between the micro-step and the window end (two dispatches from Python in
    GRAPH mode; in PYNATIVE, where one graph runs both, the same state arises when its window end
    fails): the window is complete and pending; the next call finishes it first."""
    w, b, x, y = problem(5, batches=4)
    net = DenseCE(w, b)
    cell = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM), 2)
    cell(Tensor(x[0]), Tensor(y[0]))
    if ms.get_context("mode") == ms.GRAPH_MODE:
        name = "_finish_window"

        def interrupted(self):
            raise KeyboardInterrupt

    else:
        name = "_graph_step"

        def interrupted(self, *inputs):  # the micro-step ran, the window end did not
            self._graph_micro_step(*inputs)
            raise KeyboardInterrupt

    original = getattr(cell_module.GradAccumCell, name)
    setattr(cell_module.GradAccumCell, name, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            cell(Tensor(x[1]), Tensor(y[1]))
    finally:
        setattr(cell_module.GradAccumCell, name, original)
    assert cell.pending == 2
    cell(Tensor(x[2]), Tensor(y[2]))
    cell(Tensor(x[3]), Tensor(y[3]))
    assert cell.pending == 0
    expected = big_batch(w, b, [[(x[0], y[0]), (x[1], y[1])], [(x[2], y[2]), (x[3], y[3])]])
    assert_weights_close(weights(net), expected, RTOL, "after an interrupted window end")


# ====================================================================== train / eval mode


class DropoutCE(nn.Cell):
    """Dense + cross entropy with a dropout on the input: its loss depends on the training flag."""

    def __init__(self, w, b):
        super().__init__()
        self.dropout = nn.Dropout(p=0.5)
        self.inner = DenseCE(w, b)

    def construct(self, x, y):
        return self.inner(self.dropout(x), y)


def test_set_train_reaches_the_compiled_graphs(backend):
    """GRAPH mode compiles the micro-step in a Cell that GradAccumCell holds, not one of its
    children: set_train(False) on the cell must reach that graph too. The reference is the
    network itself in eval mode (no dropout), computed by a plain loss call."""
    ms.set_context(mode=ms.GRAPH_MODE)
    w, b, x, y = problem()
    net = DropoutCE(w, b)
    cell = GradAccumCell(net, FusedMomentum(net.trainable_params(), LR, MOMENTUM), 4, backend=backend)
    cell.set_train()
    cell(Tensor(x[0]), Tensor(y[0]))  # compiled in training mode: dropout on
    cell.set_train(False)
    got = float(cell(Tensor(x[1]), Tensor(y[1])).asnumpy())
    reference = DenseCE(w, b)  # the same weights (no update yet), no dropout
    want = float(reference(Tensor(x[1]), Tensor(y[1])).asnumpy())
    np.testing.assert_allclose(got, want, rtol=1e-6)
