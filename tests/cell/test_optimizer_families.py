"""GradAccumCell ends its windows with every optimizer family a MindSpore user reaches for:
``nn.Optimizer`` (tested in test_cell.py), ``mindspore.experimental.optim.*`` and
``mindspore.mint.optim.*`` (torch-style: param_groups, their own step counters, no loss_scale).

The reference is independent of mindspore_accum: the same optimizer class, on a fresh copy of the
network, stepped by a plain ``ms.value_and_grad`` train step on the whole 29-sample batch.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.experimental import optim as eoptim

from mindspore_accum import GradAccumCell, _optimizers
from tests.cell.accum_models import assert_weights_close, weights

mint_optim = pytest.importorskip("mindspore.mint.optim", reason="this MindSpore has no mindspore.mint.optim")

SIZES = (8, 8, 8, 5)  # one window: the big batch of 29
RTOL = 1e-5  # max|dw| <= RTOL * max|w| (the acceptance criterion)


def _family(module, name, **kwargs):
    cls = getattr(module, name, None)
    return cls, kwargs


# name -> (class or None where this MindSpore lacks it, constructor arguments besides params)
OPTIMIZERS = {
    "experimental.AdamW": _family(eoptim, "AdamW", lr=0.01, weight_decay=0.1),
    "experimental.Adam": _family(eoptim, "Adam", lr=0.01, weight_decay=0.05),
    "experimental.SGD": _family(eoptim, "SGD", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "experimental.Adadelta": _family(eoptim, "Adadelta", lr=1.0),
    "experimental.Adagrad": _family(eoptim, "Adagrad", lr=0.1, lr_decay=0.1),
    "experimental.ASGD": _family(eoptim, "ASGD", lr=0.1),
    "experimental.Adamax": _family(eoptim, "Adamax", lr=0.01),
    "experimental.RMSprop": _family(eoptim, "RMSprop", lr=0.01, momentum=0.5),
    "experimental.Rprop": _family(eoptim, "Rprop", lr=0.01),
    "experimental.RAdam": _family(eoptim, "RAdam", lr=0.01),
    "experimental.NAdam": _family(eoptim, "NAdam", lr=0.01),
    # everything 2.10 ships under mint.optim (2.7.0: AdamW, Adam, SGD)
    "mint.AdamW": _family(mint_optim, "AdamW", lr=0.01, weight_decay=0.1),
    "mint.Adam": _family(mint_optim, "Adam", lr=0.01, weight_decay=0.05),
    "mint.SGD": _family(mint_optim, "SGD", lr=0.1, momentum=0.9, weight_decay=0.01),
    "mint.FusedAdamW": _family(mint_optim, "FusedAdamW", lr=0.01, weight_decay=0.1),
}
# Both modes for these; the other experimental ones in GRAPH mode only, for time.
BOTH_MODES = ("experimental.AdamW", "experimental.SGD", "mint.AdamW", "mint.Adam", "mint.SGD", "mint.FusedAdamW")
CASES = [(n, m) for n in OPTIMIZERS for m in ("GRAPH", "PYNATIVE") if m == "GRAPH" or n in BOTH_MODES]


class MLP(nn.Cell):
    def __init__(self, seed):
        super().__init__()
        self.d1 = nn.Dense(6, 8)
        self.d2 = nn.Dense(8, 3)
        self.act = nn.Tanh()
        rng = np.random.default_rng(seed)
        for p in self.trainable_params():
            p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.5))

    def construct(self, x):
        return self.d2(self.act(self.d1(x)))


def loss_cell(seed=0):
    return nn.WithLossCell(MLP(seed), nn.MSELoss())


BATCH = sum(SIZES)


def data(seed, n=BATCH):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.standard_normal((n, 3)).astype(np.float32)


def split(x, y):
    out, start = [], 0
    for size in SIZES:
        out.append((Tensor(x[start : start + size]), Tensor(y[start : start + size])))
        start += size
    return out


def make_optimizer(name, params):
    """The optimizer ``name``, or a skip naming what this MindSpore lacks (the class, or a kernel
    for this device: e.g. mint.optim.AdamW's AdamW operator has none on CPU)."""
    cls, kwargs = OPTIMIZERS[name]
    if cls is None:
        pytest.skip(f"MindSpore {ms.__version__} has no {name}")
    target = ms.get_context("device_target")
    try:
        return cls(params, **kwargs)
    except RuntimeError as err:  # mint.optim.FusedAdamW on CPU: its contiguous-buffer copy has no CPU kernel
        pytest.skip(f"MindSpore {ms.__version__} cannot build {name} on {target}: {str(err).strip().splitlines()[0]}")


def skip_unless_it_steps(name):
    """Runs one standalone step of a throwaway copy; skips when MindSpore has no kernel for it here."""
    probe = make_optimizer(name, MLP(5).trainable_params())
    grads = tuple(Tensor(np.ones(p.shape, np.float32)) for p in probe.parameters)

    @ms.jit
    def step(g):
        return probe(g)

    try:
        step(grads)
    except RuntimeError as err:
        if "Unsupported op" not in str(err) and "Kernel select failed" not in str(err):
            raise
        what = next((line for line in str(err).splitlines() if "Unsupported op" in line), "no kernel")
        pytest.skip(f"MindSpore {ms.__version__} cannot run {name} on {ms.get_context('device_target')}: {what}")


def big_batch_run(name, windows):
    """The reference: the same optimizer class stepped on each window's whole batch."""
    net = loss_cell()
    opt = make_optimizer(name, net.trainable_params())
    grad_fn = ms.value_and_grad(net, None, opt.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        return ops.depend(loss, opt(grads))

    for x, y in windows:
        step(Tensor(x), Tensor(y))
    return net, opt


def accumulated_run(name, windows, backend="kernels"):
    net = loss_cell()
    opt = make_optimizer(name, net.trainable_params())
    cell = GradAccumCell(net, opt, len(SIZES), backend=backend)
    for x, y in windows:
        for xb, yb in split(x, y):
            cell(xb, yb)
    return cell, net, opt


def optimizer_state(opt):
    """Every Parameter of the optimizer that is not a weight (moments, step counters...)."""
    own = {id(p) for p in opt.parameters}
    return {p.name: p.asnumpy().copy() for p in opt.get_parameters() if id(p) not in own}


@pytest.fixture(params=CASES, ids=[f"{n}-{m}" for n, m in CASES])
def case(request):
    name, mode = request.param
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "GRAPH" else ms.PYNATIVE_MODE)
    skip_unless_it_steps(name)
    yield name
    ms.set_context(mode=before)


def test_two_windows_of_8_8_8_5_equal_two_steps_on_29(case):
    windows = [data(1), data(2)]
    ref_net, ref_opt = big_batch_run(case, windows)
    cell, net, opt = accumulated_run(case, windows)
    assert_weights_close(weights(net), weights(ref_net), RTOL, f"{case}: accumulated vs big batch")
    # the optimizer's own state (moments, its step counter) went through the same two steps
    ref_state = optimizer_state(ref_opt)
    got_state = optimizer_state(opt)
    for key in ref_state:
        scale = max(float(np.max(np.abs(ref_state[key]))), 1e-30)
        err = float(np.max(np.abs(got_state[key].astype(np.float64) - ref_state[key])))
        assert err <= RTOL * max(scale, 1.0), f"{case}: {key} off by {err:.3g}"
    assert _optimizers.update_index(opt) == 2, "update_index must count the two updates"
    assert cell.pending == 0


def test_checkpoint_mid_window_resumes_bit_identically(case, tmp_path):
    windows = [data(3), data(4)]
    full, _, _ = accumulated_run(case, windows)
    expected = {p.name: p.asnumpy().copy() for p in full.get_parameters()}

    net = loss_cell()
    first = GradAccumCell(net, make_optimizer(case, net.trainable_params()), len(SIZES), backend="kernels")
    micro = [mb for x, y in windows for mb in split(x, y)]
    for xb, yb in micro[:6]:  # one update, then two micro-batches of the second window
        first(xb, yb)
    assert first.pending == 2
    path = str(tmp_path / "mid.ckpt")
    ms.save_checkpoint(first, path)
    saved = ms.load_checkpoint(path)
    counter = _optimizers.step_counter(first.optimizer)
    assert counter.name in saved, f"the step counter {counter.name} is not in the checkpoint"

    net2 = loss_cell(seed=9)  # other weights: everything must come from the checkpoint
    resumed = GradAccumCell(net2, make_optimizer(case, net2.trainable_params()), len(SIZES), backend="kernels")
    not_loaded, _ = ms.load_param_into_net(resumed, saved)
    assert not not_loaded, f"not restored: {not_loaded}"
    assert resumed.pending == 2 and _optimizers.update_index(resumed.optimizer) == 1
    for xb, yb in micro[6:]:
        resumed(xb, yb)
    got = {p.name: p.asnumpy().copy() for p in resumed.get_parameters()}
    assert set(got) == set(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), f"{case}: {name} differs after resume"


def test_a_schedule_reads_the_optimizers_own_step_counter():
    """accumulation_steps [(0, 2), (1, 3)]: the window after the first update holds 3 micro-batches.
    mint.SGD counts in ``step_t``; experimental.SGD counts nothing and is given ``global_step``."""
    x, y = data(6, 20)
    micro = [(Tensor(x[i : i + 4]), Tensor(y[i : i + 4])) for i in range(0, 20, 4)]
    for name in ("mint.SGD", "experimental.SGD"):
        ref_net, _ = big_batch_run(name, [(x[:8], y[:8]), (x[8:], y[8:])])
        net = loss_cell()
        cell = GradAccumCell(net, make_optimizer(name, net.trainable_params()), [(0, 2), (1, 3)])
        pending = []
        for xb, yb in micro:
            cell(xb, yb)
            pending.append(cell.pending)
        assert pending == [1, 0, 1, 2, 0], f"{name}: windows of 2 then 3 micro-batches"
        assert _optimizers.update_index(cell.optimizer) == 2
        assert_weights_close(weights(net), weights(ref_net), RTOL, f"{name}: scheduled windows vs big batches")


def test_mint_adamw_counts_updates_from_its_counter_of_minus_one():
    """mint.optim.AdamW/FusedAdamW start ``state_step`` at -1 and add 1 before each step (their
    AdamW operator gets the count of earlier steps); experimental.AdamW starts at 0."""
    for name, start in (("mint.AdamW", -1.0), ("mint.FusedAdamW", -1.0), ("experimental.AdamW", 0.0)):
        cls, kwargs = OPTIMIZERS[name]
        if cls is None:
            continue
        try:
            opt = cls(MLP(0).trainable_params(), **kwargs)
        except RuntimeError:  # mint.FusedAdamW cannot be built on CPU (no kernel for its buffer copy)
            continue
        assert float(opt.state_step.asnumpy().reshape(-1)[0]) == start  # MindSpore's own initial value
        assert _optimizers.update_index(opt) == 0, name
        opt.state_step.set_data(Tensor(np.full(opt.state_step.shape, start + 3), opt.state_step.dtype))
        assert _optimizers.update_index(opt) == 3, name  # as after three steps


class NotAnOptimizer(nn.Cell):
    def __init__(self, params):
        super().__init__()
        self.param_groups = [{"params": list(params)}]
        self.parameters = tuple(params)

    def construct(self, grads):
        return True


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: None, TypeError, "got NoneType"),
        (lambda p: NotAnOptimizer(p), TypeError, "param_groups that does not derive"),
        (lambda p: nn.Momentum(p, 0.1, 0.9, loss_scale=4.0), ValueError, "loss_scale=4.0"),
    ],
    ids=["none", "param_groups_cell", "loss_scale"],
)
def test_what_cannot_end_a_window_is_refused_saying_what_to_do(make, error, match):
    net = loss_cell()
    with pytest.raises(error, match=match) as info:
        GradAccumCell(net, make(net.trainable_params()), 4)
    message = str(info.value)
    assert "optimizer" in message and ("e.g." in message or "use" in message or "pass" in message)


@pytest.mark.parametrize("name", ["experimental.SGD", "mint.Adam"])
def test_inside_a_users_jit_step(name):
    """The cell inlined into the user's @ms.jit step (its construct: micro-step and window end in
    one graph), PYNATIVE; experimental.SGD's step counter is the one the cell gave it."""
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        windows = [data(7), data(8)]
        ref_net, _ = big_batch_run(name, windows)
        net = loss_cell()
        cell = GradAccumCell(net, make_optimizer(name, net.trainable_params()), len(SIZES), backend="kernels")

        @ms.jit
        def train_step(x, y):
            return cell(x, y)

        for x, y in windows:
            for xb, yb in split(x, y):
                train_step(xb, yb)
        assert_weights_close(weights(net), weights(ref_net), RTOL, f"{name} in @ms.jit vs big batch")
        assert _optimizers.update_index(cell.optimizer) == 2
    finally:
        ms.set_context(mode=before)


@pytest.mark.parametrize("name", ["experimental.AdamW", "mint.SGD"])
def test_parameter_groups_in_another_order_than_the_network(name):
    """Two groups, the second layer's first, each with its own lr: the gradients reach the
    optimizer in its order (param_groups), not the network's."""
    cls, kwargs = OPTIMIZERS[name]
    lr = kwargs["lr"]

    def grouped(net):
        mlp = net.backbone_network
        return cls(
            [{"params": mlp.d2.trainable_params(), "lr": lr * 3}, {"params": mlp.d1.trainable_params()}], **kwargs
        )

    windows = [data(9), data(10)]
    ref_net = loss_cell()
    ref_opt = grouped(ref_net)
    grad_fn = ms.value_and_grad(ref_net, None, ref_opt.parameters)

    @ms.jit
    def step(x, y):
        loss, grads = grad_fn(x, y)
        return ops.depend(loss, ref_opt(grads))

    for x, y in windows:
        step(Tensor(x), Tensor(y))
    net = loss_cell()
    cell = GradAccumCell(net, grouped(net), len(SIZES), backend="kernels")
    assert [p.name for p in _optimizers.weights(cell.optimizer)][:2] == ["d2.weight", "d2.bias"]
    for x, y in windows:
        for xb, yb in split(x, y):
            cell(xb, yb)
    assert_weights_close(weights(net), weights(ref_net), RTOL, f"{name} with groups vs big batch")
