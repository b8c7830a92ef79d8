"""_C.lamb_update and _C.lars_update against float64 NumPy references written here from the
formulas of issue 27 (LAMB: You et al. 2019; LARS around momentum: You et al. 2017, nn.LARS)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mindspore_accum import _C

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    BF16 = None

SHAPES = [(5, 7), (70_001,), (3,), (0,), (1024, 65)]  # 70,001 and 66,560: several 64 Ki chunks, tails
TOL = 1e-5  # max |kernel - reference| / (1 + |reference|): float32 arithmetic (LAMB: |u| up to ~100 here)


def grad_dtype(name):
    if name == "bfloat16":
        if BF16 is None:
            pytest.skip("ml_dtypes is not installed")
        return BF16
    return np.dtype(name)


# ---------------------------------------------------------------- references (float64)


def ref_lamb(p, m, v, summed, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    p, m, v, g = (np.asarray(a, np.float64) for a in (p, m, v, summed))
    g = g * grad_scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    u = (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps) + weight_decay * p
    w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
    r = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return p - lr * r * u, m, v, r


def ref_lars(p, mom, summed, *, lr, momentum, grad_scale, weight_decay, coefficient, epsilon, lars):
    p, mom, g = (np.asarray(a, np.float64) for a in (p, mom, summed))
    g = g * grad_scale
    if lars:
        w_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
        trust = coefficient * w_norm / (g_norm + weight_decay * w_norm + epsilon) if w_norm > 0 and g_norm > 0 else 1.0
        d = trust * (g + weight_decay * p)
    else:
        trust, d = 1.0, g
    mom = momentum * mom + d
    return p - lr * mom, mom, trust


def close(actual, expected, what):
    actual = np.asarray(actual, np.float64)
    err = np.max(np.abs(actual - expected) / (1 + np.abs(expected)), initial=0.0)
    assert err <= TOL, f"{what}: max relative error {err:.3g}"


def make(rng, shapes, dtype, sources):
    p = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    m = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]
    v = [(rng.standard_normal(s) * 0.1).astype(np.float32) ** 2 for s in shapes]
    acc = [rng.standard_normal(s).astype(np.float32) * 3 for s in shapes] if "acc" in sources else None
    grad = [rng.standard_normal(s).astype(dtype) for s in shapes] if "grad" in sources else None
    summed = []
    for i, s in enumerate(shapes):
        total = np.zeros(s, np.float64)
        if acc is not None:
            total += acc[i]
        if grad is not None:
            total += grad[i].astype(np.float64)
        summed.append(total)
    return p, m, v, acc, grad, summed


LAMB = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, step=3, grad_scale=0.25)
LARS = dict(lr=0.1, momentum=0.9, grad_scale=0.25, coefficient=0.001, epsilon=1e-5)


# ---------------------------------------------------------------- LAMB


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("sources", [("acc", "grad"), ("acc",), ("grad",)])
def test_lamb_matches_reference(dtype, sources):
    rng = np.random.default_rng(1)
    p, m, v, acc, grad, summed = make(rng, SHAPES, grad_dtype(dtype), sources)
    decay = [0.01, 0.0, 0.1, 0.01, 0.02]
    expected = [ref_lamb(p[i], m[i], v[i], summed[i], weight_decay=decay[i], **LAMB) for i in range(len(p))]
    ratios = _C.lamb_update(p, m, v, acc, grad, weight_decay=decay, **LAMB)
    for i, (ep, em, ev, er) in enumerate(expected):
        close(p[i], ep, f"param[{i}]")
        close(m[i], em, f"exp_avg[{i}]")
        close(v[i], ev, f"exp_avg_sq[{i}]")
        assert abs(ratios[i] - er) <= TOL * (1 + er), f"ratio[{i}]"
        if acc is not None:
            assert not acc[i].any(), "a given accumulator is zeroed"


def test_lamb_zero_norms_give_ratio_one():
    p = [np.zeros(10, np.float32), np.ones(10, np.float32)]
    m = [np.zeros(10, np.float32) for _ in range(2)]
    v = [np.zeros(10, np.float32) for _ in range(2)]
    grad = [np.ones(10, np.float32), np.zeros(10, np.float32)]  # w = 0; u = 0 (no decay, no gradient)
    ratios = _C.lamb_update(p, m, v, None, grad, weight_decay=0.0, **LAMB)
    assert ratios == [1.0, 1.0]
    expected, *_ = ref_lamb(np.zeros(10), np.zeros(10), np.zeros(10), np.ones(10), weight_decay=0.0, **LAMB)
    close(p[0], expected, "param with ||w|| = 0")
    assert np.array_equal(p[1], np.ones(10, np.float32))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    step=st.integers(1, 50),
    decay=st.floats(0.0, 0.5),
    scale=st.floats(1e-3, 4.0),
)
def test_lamb_property(sizes, seed, step, decay, scale):
    rng = np.random.default_rng(seed)
    p, m, v, acc, grad, summed = make(rng, [(n,) for n in sizes], np.float32, ("acc", "grad"))
    args = dict(LAMB, step=step, grad_scale=scale)
    expected = [ref_lamb(p[i], m[i], v[i], summed[i], weight_decay=decay, **args) for i in range(len(p))]
    _C.lamb_update(p, m, v, acc, grad, weight_decay=decay, **args)
    for i, (ep, em, ev, _) in enumerate(expected):
        close(p[i], ep, f"param[{i}]")
        close(m[i], em, f"exp_avg[{i}]")
        close(v[i], ev, f"exp_avg_sq[{i}]")


# ---------------------------------------------------------------- LARS


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("sources", [("acc", "grad"), ("acc",), ("grad",)])
def test_lars_matches_reference(dtype, sources):
    rng = np.random.default_rng(2)
    p, m, _, acc, grad, summed = make(rng, SHAPES, grad_dtype(dtype), sources)
    decay = [0.01, 0.0, 0.1, 0.01, 5e-4]
    flags = [True, True, False, True, True]
    expected = [ref_lars(p[i], m[i], summed[i], weight_decay=decay[i], lars=flags[i], **LARS) for i in range(len(p))]
    ratios = _C.lars_update(p, m, acc, grad, weight_decay=decay, lars=flags, **LARS)
    for i, (ep, em, et) in enumerate(expected):
        close(p[i], ep, f"param[{i}]")
        close(m[i], em, f"moment[{i}]")
        assert abs(ratios[i] - et) <= TOL * (1 + et), f"trust[{i}]"
        if acc is not None:
            assert not acc[i].any(), "a given accumulator is zeroed"


def test_lars_zero_norms_give_trust_one():
    p = [np.zeros(8, np.float32), np.full(8, 2.0, np.float32)]
    m = [np.zeros(8, np.float32) for _ in range(2)]
    grad = [np.ones(8, np.float32), np.zeros(8, np.float32)]
    ratios = _C.lars_update(p, m, None, grad, weight_decay=0.1, **LARS)
    assert ratios == [1.0, 1.0]
    # ||g|| = 0: d = 1 * (0 + 0.1 * 2) -> v = 0.2, w = 2 - 0.1 * 0.2
    np.testing.assert_allclose(p[1], 2.0 - 0.1 * 0.2, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    decay=st.floats(0.0, 0.5),
    coefficient=st.floats(1e-4, 1.0),
    flag=st.booleans(),
)
def test_lars_property(sizes, seed, decay, coefficient, flag):
    rng = np.random.default_rng(seed)
    p, m, _, acc, grad, summed = make(rng, [(n,) for n in sizes], np.float32, ("acc", "grad"))
    args = dict(LARS, coefficient=coefficient)
    expected = [ref_lars(p[i], m[i], summed[i], weight_decay=decay, lars=flag, **args) for i in range(len(p))]
    _C.lars_update(p, m, acc, grad, weight_decay=decay, lars=flag, **args)
    for i, (ep, em, _) in enumerate(expected):
        close(p[i], ep, f"param[{i}]")
        close(m[i], em, f"moment[{i}]")


# ---------------------------------------------------------------- every ISA, every thread count: the same bits


def _isas():
    out = []
    for isa in ("baseline", "avx2", "avx512"):
        try:
            _C.set_vector_isa(isa)
            out.append(isa)
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("op", ["lamb", "lars"])
def test_deterministic_across_threads_and_isas_agree(op):
    rng = np.random.default_rng(3)
    base = make(rng, [(300_001,), (7,), (65_536 * 2,)], np.float16, ("acc", "grad"))
    results = {}
    before_isa, before_threads = _C.build_info()["vector_isa"], _C.num_threads()
    try:
        for isa in _isas():
            _C.set_vector_isa(isa)
            for threads in (1, 2, 3):
                _C.set_num_threads(threads)
                p, m, v, acc, grad, _ = (None if x is None else [a.copy() for a in x] for x in base)
                if op == "lamb":
                    _C.lamb_update(p, m, v, acc, grad, weight_decay=0.01, **LAMB)
                else:
                    _C.lars_update(p, m, acc, grad, weight_decay=0.01, **LARS)
                results[isa, threads] = p
    finally:
        _C.set_num_threads(before_threads)
        _C.set_vector_isa(before_isa)
    for (isa, threads), p in results.items():
        same = results[isa, 1]
        assert all(np.array_equal(a, b) for a, b in zip(p, same)), f"{isa}: {threads} threads differ from 1"
        first = next(iter(results.values()))
        assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(p, first)), f"{isa} disagrees"


# ---------------------------------------------------------------- bad arguments: named, nothing written


def _lamb_args():
    p = [np.ones(4, np.float32)]
    return dict(
        param=p,
        exp_avg=[np.zeros(4, np.float32)],
        exp_avg_sq=[np.zeros(4, np.float32)],
        acc=None,
        grad=[np.ones(4, np.float32)],
        weight_decay=0.0,
        **LAMB,
    )


def _lars_args():
    return dict(
        param=[np.ones(4, np.float32)],
        moment=[np.zeros(4, np.float32)],
        acc=None,
        grad=[np.ones(4, np.float32)],
        **LARS,
    )


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"beta1": 1.0}, ValueError, "beta1"),
        ({"beta2": -0.5}, ValueError, "beta2"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"step": 0}, ValueError, "step"),
        ({"step": 1.5}, TypeError, "step"),
        ({"grad_scale": float("inf")}, ValueError, "grad_scale"),
        ({"weight_decay": [0.1, 0.2]}, ValueError, "weight_decay"),
        ({"exp_avg": [np.zeros(5, np.float32)]}, ValueError, "exp_avg"),
        ({"exp_avg_sq": [np.zeros(4, np.float64)]}, TypeError, "exp_avg_sq"),
        ({"grad": [np.ones(4, np.int32)]}, TypeError, "grad"),
    ],
)
def test_lamb_bad_arguments_are_named(change, error, match):
    args = _lamb_args()
    args.update(change)
    before = args["param"][0].copy()
    with pytest.raises(error, match=match):
        _C.lamb_update(**args)
    assert np.array_equal(args["param"][0], before)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"momentum": -0.1}, ValueError, "momentum"),
        ({"coefficient": float("inf")}, ValueError, "coefficient"),
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"lars": [True, False]}, ValueError, "lars"),
        ({"lars": 1}, TypeError, "lars"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"moment": [np.zeros(3, np.float32)]}, ValueError, "moment"),
        ({"lr": -1.0}, ValueError, "lr"),
    ],
)
def test_lars_bad_arguments_are_named(change, error, match):
    args = _lars_args()
    args.update(change)
    before = args["param"][0].copy()
    with pytest.raises(error, match=match):
        _C.lars_update(**args)
    assert np.array_equal(args["param"][0], before)


def test_shared_memory_is_refused():
    p = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        _C.lars_update([p], [p[:8]], None, [np.ones(8, np.float32)], **LARS)
