"""The recipe of docs/compatibility.md from ``mint.optim.AdamW`` to our ``FusedAdamW``:

    mint.optim.AdamW(params, lr, betas=(b1, b2), eps=1e-8, weight_decay=1e-2)
    FusedAdamW([{"params": params, "weight_decay": 1e-2}], learning_rate=lr, beta1=b1, beta2=b2,
               eps=1e-8, bias_correction=True)

(the group form: ungrouped, nn.Optimizer exempts parameters named beta/gamma from weight decay,
mint/torch decay every parameter). Checked over 3 updates against NumPy AdamW written here from
torch's formula, and against mint.optim.AdamW / experimental.optim.AdamW where MindSpore runs them
(mint.optim.AdamW's AdamW operator has no CPU kernel).
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor
from mindspore.experimental import optim as eoptim

from mindspore_accum import FusedAdamW

LR, BETAS, EPS, WD = 0.01, (0.9, 0.999), 1e-8, 1e-2
SHAPES = {"dense.weight": (5, 4), "dense.bias": (5,), "norm.gamma": (5,), "norm.beta": (5,)}
RTOL = 1e-5


def params(seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(Tensor(rng.standard_normal(s).astype(np.float32)), name=n) for n, s in SHAPES.items()]


def gradients(steps=3):
    rng = np.random.default_rng(1)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()] for _ in range(steps)]


def numpy_adamw(weights, grads_per_step):
    """torch.optim.AdamW / mint.optim.AdamW (amsgrad off), float64."""
    b1, b2 = BETAS
    w = [x.astype(np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            w[i] = w[i] * (1 - LR * WD)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            denom = np.sqrt(v[i]) / np.sqrt(1 - b2**t) + EPS
            w[i] = w[i] - LR / (1 - b1**t) * m[i] / denom
    return w


def recipe(ps):
    return FusedAdamW(
        [{"params": ps, "weight_decay": WD}],
        learning_rate=LR,
        beta1=BETAS[0],
        beta2=BETAS[1],
        eps=EPS,
        bias_correction=True,
    )


def step_all(opt, ps):
    @ms.jit
    def step(grads):
        return opt(grads)

    for grads in gradients():
        step(tuple(Tensor(g) for g in grads))
    return [p.asnumpy() for p in ps]


def assert_close(got, expected, what):
    for name, a, b in zip(SHAPES, got, expected):
        scale = max(float(np.abs(b).max()), 1e-30)
        err = float(np.abs(np.asarray(a, np.float64) - b).max())
        assert err <= RTOL * scale, f"{what}: {name} off by {err:.3g} (max|w| {scale:.3g})"


@pytest.fixture(params=["GRAPH", "PYNATIVE"])
def mode(request):
    before = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "GRAPH" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=before)


def test_the_recipe_matches_numpy_adamw(mode):
    expected = numpy_adamw([p.asnumpy() for p in params()], gradients())
    ps = params()
    assert_close(step_all(recipe(ps), ps), expected, "FusedAdamW recipe vs NumPy AdamW")


@pytest.mark.parametrize("source", ["mint.optim.AdamW", "experimental.optim.AdamW"])
def test_the_recipe_matches_mindspores_adamw(mode, source):
    cls = ms.mint.optim.AdamW if source.startswith("mint") else eoptim.AdamW
    theirs = params()
    opt = cls(theirs, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    try:
        expected = step_all(opt, theirs)
    except RuntimeError as err:
        if "Unsupported op" not in str(err):
            raise
        pytest.skip(f"MindSpore {ms.__version__} cannot run {source} on {ms.get_context('device_target')}")
    ours = params()
    assert_close(step_all(recipe(ours), ours), [e.astype(np.float64) for e in expected], f"recipe vs {source}")


def test_without_the_group_gamma_and_beta_get_no_weight_decay(mode):
    """Why the recipe passes a group: ungrouped, nn.Optimizer's decay filter skips names holding
    'gamma'/'beta' (LayerNorm), which mint/torch AdamW decay."""
    expected = numpy_adamw([p.asnumpy() for p in params()], gradients())
    ps = params()
    plain = FusedAdamW(ps, LR, BETAS[0], BETAS[1], eps=EPS, weight_decay=WD, bias_correction=True)
    got = step_all(plain, ps)
    assert_close(got[:2], expected[:2], "dense params")
    gamma = float(np.abs(got[2] - expected[2]).max()) / float(np.abs(expected[2]).max())
    assert gamma > 1e-4, "norm.gamma was decayed without the group"
