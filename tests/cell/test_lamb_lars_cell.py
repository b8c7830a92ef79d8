"""GradAccumCell(FusedLAMB) and GradAccumCell(FusedLARS): 4 micro-batches of 8 against the
formulas of issue 27 applied to the mean gradient of the batch of 32, written here in NumPy
float64 (MindSpore's own nn.Lamb / nn.LARS have no CPU kernels). A linear model with a mean
squared error, so the reference gradient is exact and written out below."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindspore_accum import FusedLAMB, FusedLARS, GradAccumCell, WarmupLinearScaling

# the `mode` and `backend` fixtures (both modes, both backends): tests/cell/conftest.py
TOL = 1e-5


# ---------------------------------------------------------------- model, data and its gradient


SHAPES = {"w1": (6, 5), "w2": (5, 3), "out.bias": (3,)}


def init(seed=0):
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in SHAPES.items()}


class Linear2(nn.Cell):
    """mean((x @ w1 @ w2 + bias - y)^2): no non-linearity, so the float64 gradient is short."""

    def __init__(self, values):
        super().__init__()
        self.w1 = Parameter(Tensor(values["w1"]), name="w1")
        self.w2 = Parameter(Tensor(values["w2"]), name="w2")
        self.bias = Parameter(Tensor(values["out.bias"]), name="out.bias")

    def construct(self, x, y):
        pred = ops.matmul(ops.matmul(x, self.w1), self.w2) + self.bias
        return ops.reduce_mean(ops.square(pred - y))


def gradient(w, x, y):
    """The float64 gradient of the mean loss over the whole batch (x, y)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    h = x @ w["w1"]
    r = 2.0 * (h @ w["w2"] + w["out.bias"] - y) / y.size
    return {"w1": x.T @ (r @ w["w2"].T), "w2": h.T @ r, "out.bias": r.sum(0)}


def data(seed=1, updates=3):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((updates, 32, 6)).astype(np.float32),
        rng.standard_normal((updates, 32, 3)).astype(np.float32),
    )


# ---------------------------------------------------------------- the formulas (issue 27), float64


def lamb_reference(groups, x, y, beta1=0.9, beta2=0.999, eps=1e-6):
    """groups: [(names, lr(t), weight_decay)]."""
    w = {k: v.astype(np.float64) for k, v in init().items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v = {k: np.zeros_like(a) for k, a in w.items()}
    for t in range(1, len(x) + 1):
        g_all = gradient(w, x[t - 1], y[t - 1])
        for names, lr, decay in groups:
            for k in names:
                g = g_all[k]
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                u = (m[k] / (1 - beta1**t)) / (np.sqrt(v[k] / (1 - beta2**t)) + eps) + decay * w[k]
                wn, un = np.linalg.norm(w[k]), np.linalg.norm(u)
                r = wn / un if wn > 0 and un > 0 else 1.0
                w[k] = w[k] - lr(t - 1) * r * u
    return w


def lars_reference(groups, x, y, momentum=0.9, coefficient=0.02, epsilon=1e-5):
    """groups: [(names, lr(t), weight_decay, lars names)]."""
    w = {k: v.astype(np.float64) for k, v in init().items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    for t in range(len(x)):
        g_all = gradient(w, x[t], y[t])
        for names, lr, decay, lars in groups:
            for k in names:
                g = g_all[k]
                if k in lars:
                    wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g)
                    trust = coefficient * wn / (gn + decay * wn + epsilon) if wn > 0 and gn > 0 else 1.0
                    d = trust * (g + decay * w[k])
                else:
                    d = g
                mom[k] = momentum * mom[k] + d
                w[k] = w[k] - lr(t) * mom[k]
    return w


def warmup(t):  # WarmupLinearScaling(0.01, 8, 32, warmup_steps=2), written out
    peak = 0.01 * 32 / 8
    return 0.01 + (peak - 0.01) * t / 2 if t < 2 else peak


# ---------------------------------------------------------------- runs


def run(make_optimizer, backend, x, y, micro=4):
    net = Linear2(init())
    cell = GradAccumCell(net, make_optimizer(net), micro, backend=backend)
    size = x.shape[1] // micro
    for i in range(len(x)):
        for j in range(micro):
            cell(Tensor(x[i, j * size : (j + 1) * size]), Tensor(y[i, j * size : (j + 1) * size]))
    return {p.name: p.asnumpy() for p in net.trainable_params()}, cell


def assert_close(actual, expected, what):
    for k, e in expected.items():
        err = np.max(np.abs(actual[k].astype(np.float64) - e))
        assert err <= TOL, f"{what}: {k} differs by {err:.3g}"


def grouped(net, lr_second):
    return [
        {"params": [net.w1], "weight_decay": 0.01},
        {"params": [net.w2, net.bias], "lr": lr_second, "weight_decay": 0.05},
    ]


@pytest.mark.parametrize("variant", ["plain", "groups_schedule"])
def test_lamb_4x8_equals_formula_on_32(mode, backend, variant):
    x, y = data()
    if variant == "plain":  # ungrouped: no decay for the bias (decay filter)
        expected = lamb_reference([(["w1", "w2"], lambda t: 0.02, 0.01), (["out.bias"], lambda t: 0.02, 0.0)], x, y)

        def make(net):
            return FusedLAMB(net.trainable_params(), 0.02, weight_decay=0.01, backend=backend)
    else:
        expected = lamb_reference([(["w1"], warmup, 0.01), (["w2", "out.bias"], lambda t: 0.005, 0.05)], x, y)

        def make(net):
            return FusedLAMB(grouped(net, 0.005), WarmupLinearScaling(0.01, 8, 32, 2), backend=backend)

    actual, cell = run(make, backend, x, y)
    assert int(cell.optimizer.global_step.asnumpy().item()) == 3
    assert_close(actual, expected, f"FusedLAMB {variant}")


@pytest.mark.parametrize("variant", ["plain", "groups_schedule"])
def test_lars_4x8_equals_formula_on_32(mode, backend, variant):
    x, y = data()
    lars = {"w1", "w2"}  # "out.bias" is outside the default lars_filter
    if variant == "plain":
        expected = lars_reference([(list(SHAPES), lambda t: 0.5, 0.01, lars)], x, y)

        def make(net):
            return FusedLARS(net.trainable_params(), 0.5, weight_decay=0.01, coefficient=0.02, backend=backend)
    else:
        expected = lars_reference([(["w1"], warmup, 0.01, lars), (["w2", "out.bias"], lambda t: 0.3, 0.05, lars)], x, y)

        def make(net):
            return FusedLARS(grouped(net, 0.3), WarmupLinearScaling(0.01, 8, 32, 2), coefficient=0.02, backend=backend)

    actual, cell = run(make, backend, x, y)
    assert int(cell.optimizer.global_step.asnumpy().item()) == 3
    assert_close(actual, expected, f"FusedLARS {variant}")


@pytest.mark.parametrize("optimizer", ["lamb", "lars"])
def test_mid_window_checkpoint_resumes_bit_identically(mode, backend, optimizer, tmp_path):
    x, y = data(seed=5)
    micro = [(Tensor(x[i, j * 8 : (j + 1) * 8]), Tensor(y[i, j * 8 : (j + 1) * 8])) for i in range(3) for j in range(4)]

    def make():
        net = Linear2(init())
        if optimizer == "lamb":
            opt = FusedLAMB(net.trainable_params(), 0.02, weight_decay=0.01, backend=backend)
        else:
            opt = FusedLARS(net.trainable_params(), 0.5, weight_decay=0.01, backend=backend)
        return GradAccumCell(net, opt, 4, backend=backend)

    full = make()
    for xb, yb in micro:
        full(xb, yb)
    expected = {p.name: p.asnumpy().copy() for p in full.get_parameters()}
    first = make()
    for xb, yb in micro[:6]:  # 1.5 windows
        first(xb, yb)
    path = str(tmp_path / f"{optimizer}.ckpt")
    ms.save_checkpoint(first, path)
    saved = ms.load_checkpoint(path)
    states = {"lamb_m.w1", "lamb_v.w1"} if optimizer == "lamb" else {"moments.w1"}
    assert states | {"global_step", "accumulators.w1"} <= set(saved)
    resumed = make()
    ms.load_param_into_net(resumed, saved)
    for xb, yb in micro[6:]:
        resumed(xb, yb)
    for p in resumed.get_parameters():
        assert np.array_equal(p.asnumpy(), expected[p.name]), f"{p.name} differs after resume"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: FusedLAMB(p, beta1=1.0), "beta1"),
        (lambda p: FusedLAMB(p, beta2=-0.1), "beta2"),
        (lambda p: FusedLAMB(p, eps=0.0), "eps"),
        (lambda p: FusedLAMB(p, decay_filter=3), "decay_filter"),
        (lambda p: FusedLARS(p, 0.1, momentum=-0.5), "momentum"),
        (lambda p: FusedLARS(p, 0.1, coefficient=float("inf")), "coefficient"),
        (lambda p: FusedLARS(p, 0.1, epsilon=-1.0), "epsilon"),
        (lambda p: FusedLARS(p, 0.1, lars_filter="bias"), "lars_filter"),
    ],
)
def test_bad_arguments_are_named(make, match):
    net = Linear2(init())
    with pytest.raises((TypeError, ValueError), match=match):
        make(net.trainable_params())


def test_specs_match_both_backends_tables_and_the_report():
    """FusedLAMB's and FusedLARS's declared layouts are what their AOT entries read and their
    native functions unpack; `python -m mindspore_accum` names them with those entries."""
    from mindspore_accum import __main__ as report
    from mindspore_accum.backends import kernel, native
    from mindspore_accum.optim import FusedAdamW, FusedMomentum

    classes = (FusedMomentum, FusedAdamW, FusedLAMB, FusedLARS)
    for cls in classes:
        spec = cls.spec
        found = kernel.entry(spec.update, ("lr",) + spec.hyper, tensors=len(spec.states) + 2)
        assert found.per_tensor == spec.per_tensor and found.outputs == "placeholder"
        assert native.update(spec.update, spec.hyper, len(spec.states)) is native.UPDATES[spec.update].fn
    assert report.FUSED_OPTIMIZERS == tuple((cls.__name__, kernel.ENTRIES[cls.spec.update].name) for cls in classes)
    assert FusedLARS.spec.per_tensor == ("weight_decay", "lars")
    line = next(text for text in report.report() if text.startswith("Fused optimizers: "))
    assert line == "Fused optimizers: FusedMomentum, FusedAdamW, FusedLAMB, FusedLARS"
