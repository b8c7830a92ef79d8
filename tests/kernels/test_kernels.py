"""Parity of the `_C` CPU kernels with the float64 NumPy reference in conftest.py."""

import os

import numpy as np
import pytest

from mindspore_accum import _C
from tests.conftest import (
    GRAD_DTYPES,
    ISA_CPU_FLAGS,
    assert_close_f32,
    cpu_flags,
    extension_isas,
    f64,
    np_dtype,
    random_array,
    ref_accumulate,
    ref_adamw_flush,
    ref_assign,
    ref_momentum_flush,
    supported_isas,
)

SIZES = [0, 1, 3, 4097, 1_000_003]
# Shapes of one mixed list: 3-D, 0-d, empty (two ways), a vector tail, a single element.
MIXED_SHAPES = [(3, 5, 7), (), (0,), (2, 0, 3), (4097,), (1,), (33, 31)]


def default_thread_count():
    env = int(os.environ.get("MSACCUM_NUM_THREADS", "0") or 0)
    return env if env > 0 else len(os.sched_getaffinity(0))


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores the previous count afterwards (as "the
    default" when it was the default count, so a later MSACCUM_NUM_THREADS change still applies)."""
    before = _C.num_threads()
    yield _C.set_num_threads
    _C.set_num_threads(0 if before == default_thread_count() else before)
    assert _C.num_threads() == before


def test_every_isa_of_this_cpu_is_tested():
    """The `isa` fixtures (here, test_properties.py, test_cpu_sanitizers.py) take their list from
    conftest.supported_isas(), read from /proc/cpuinfo: it must name every variant the CPU has
    (AVX-512 included where present), and the extension must accept exactly those."""
    isas = supported_isas()
    flags = cpu_flags()
    if flags is not None:
        for name, needed in ISA_CPU_FLAGS.items():
            assert (name in isas) == (needed <= flags), (name, sorted(needed - flags), isas)
    assert "baseline" in isas
    assert extension_isas() == isas, f"_C accepts {extension_isas()}, the CPU has {isas}"
    assert _C.build_info()["vector_isa"] in isas


@pytest.fixture(params=supported_isas())
def isa(request):
    best = _C.build_info()["vector_isa"]
    _C.set_vector_isa(request.param)
    assert _C.build_info()["vector_isa"] == request.param
    yield request.param
    _C.set_vector_isa(best)


def flush_kwargs(nesterov, weight_decay=0.0, lr=0.1, momentum=0.9, grad_scale=0.25):
    return dict(lr=lr, momentum=momentum, grad_scale=grad_scale, weight_decay=weight_decay, nesterov=nesterov)


def run_flush_and_check(rng, shapes, grad_dtypes, *, with_acc, with_grad, weight_decay, nesterov, **hyper):
    """Builds random tensors, runs momentum_flush, checks every output against the reference."""
    n = len(shapes)
    params = [random_array(rng, s, np.float32) for s in shapes]
    moments = [random_array(rng, s, np.float32) for s in shapes]
    accs = [random_array(rng, s, np.float32) for s in shapes] if with_acc else None
    grads = [random_array(rng, s, dt) for s, dt in zip(shapes, grad_dtypes)] if with_grad else None
    kwargs = flush_kwargs(nesterov, weight_decay, **hyper)
    wd = np.broadcast_to(np.asarray(weight_decay, dtype=np.float64), (n,))
    expected = [
        ref_momentum_flush(
            params[i],
            moments[i],
            None if accs is None else accs[i],
            None if grads is None else grads[i],
            **{**kwargs, "weight_decay": float(wd[i])},
        )
        for i in range(n)
    ]
    grads_before = None if grads is None else [g.copy() for g in grads]
    _C.momentum_update(params, moments, accs, grads, **kwargs)
    for i, (p, v, _acc) in enumerate(expected):
        assert_close_f32(params[i], p, f"param[{i}]")
        assert_close_f32(moments[i], v, f"moment[{i}]")
        if accs is not None:
            assert accs[i].dtype == np.float32 and not np.any(accs[i]) and not np.any(np.signbit(accs[i])), (
                f"acc[{i}] must be +0 after the flush"
            )
        if grads is not None:
            assert grads[i].tobytes() == grads_before[i].tobytes(), f"grad[{i}] was written"


# ---------------------------------------------------------------- accumulate


@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_accumulate_sizes(rng, isa, size, grad_dtype):
    acc = random_array(rng, size, np.float32)
    grad = random_array(rng, size, grad_dtype)
    grad_before = grad.copy()
    expected = ref_accumulate(acc, grad, 0.37)
    _C.accumulate([acc], [grad], 0.37)
    assert_close_f32(acc, expected, "acc[0]")
    assert grad.tobytes() == grad_before.tobytes()


def test_accumulate_mixed_list(rng):
    dtypes = [GRAD_DTYPES[i % 3] for i in range(len(MIXED_SHAPES))]
    accs = [random_array(rng, s, np.float32) for s in MIXED_SHAPES]
    grads = [random_array(rng, s, dt) for s, dt in zip(MIXED_SHAPES, dtypes)]
    expected = [ref_accumulate(a, g, -1.5) for a, g in zip(accs, grads)]
    _C.accumulate(accs, tuple(grads), -1.5)  # tuples are accepted as well as lists
    for i, e in enumerate(expected):
        assert accs[i].shape == MIXED_SHAPES[i]
        assert_close_f32(accs[i], e, f"acc[{i}] {MIXED_SHAPES[i]} {dtypes[i]}")


def test_accumulate_empty_list():
    _C.accumulate([], [], 1.0)
    _C.momentum_update([], [], [], [], lr=0.1, momentum=0.9, grad_scale=1.0)
    _C.momentum_update([], [], None, None, lr=0.1, momentum=0.9, grad_scale=1.0, weight_decay=[])


@pytest.mark.parametrize("grad_dtype", ["float16", "bfloat16"])
def test_accumulate_widening_is_exact_for_every_bit_pattern(isa, grad_dtype):
    """acc = 0 + 1 * grad must reproduce every fp16/bf16 value exactly (subnormals, inf, nan).

    The 65536 patterns go through once as one long tensor (vector conversion) and once as
    tensors of 15 elements (shorter than any vector width: the scalar tail conversion).
    """
    bits = np.arange(1 << 16, dtype=np.uint16)
    grad = bits.view(np_dtype(grad_dtype))
    exact = grad.astype(np.float32)  # numpy / ml_dtypes widening, independent of our code
    long_acc = np.zeros(grad.shape, np.float32)
    pieces = [grad[i : i + 15] for i in range(0, grad.size, 15)]
    piece_accs = [np.zeros(p.shape, np.float32) for p in pieces]
    _C.accumulate([long_acc] + piece_accs, [grad] + pieces, 1.0)
    for got in (long_acc, np.concatenate(piece_accs)):
        nan = np.isnan(exact)
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got[~nan], exact[~nan])


def test_accumulate_repeated_calls(rng):
    """k successive accumulations with different scales, then compare with the reference sum."""
    shapes = [(1000,), (3, 5, 7), ()]
    accs = [np.zeros(s, np.float32) for s in shapes]
    expected = [np.zeros(s) for s in shapes]
    for k, scale in enumerate([1.0, 0.5, -2.0, 0.125]):
        grads = [random_array(rng, s, GRAD_DTYPES[(k + i) % 3]) for i, s in enumerate(shapes)]
        _C.accumulate(accs, grads, scale)
        expected = [ref_accumulate(e, g, scale) for e, g in zip(expected, grads)]
    for i, e in enumerate(expected):
        assert_close_f32(accs[i], e, f"acc[{i}]")


def test_accumulate_read_only_and_repeated_grad_is_fine(rng):
    """Gradients are only read: a read-only gradient, used for two accumulators, is accepted."""
    grad = random_array(rng, (64,), np.float32)
    grad.flags.writeable = False
    a0, a1 = np.zeros(64, np.float32), np.ones(64, np.float32)
    _C.accumulate([a0, a1], [grad, grad], 2.0)
    assert_close_f32(a0, 2.0 * f64(grad))
    assert_close_f32(a1, 1.0 + 2.0 * f64(grad))


# ---------------------------------------------------------------- momentum_flush


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize(
    "with_acc,with_grad",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["acc+grad", "acc-only", "grad-only", "neither"],
)
@pytest.mark.parametrize("size", SIZES)
def test_flush_sizes(rng, isa, size, with_acc, with_grad, nesterov):
    run_flush_and_check(
        rng, [(size,)], ["float32"], with_acc=with_acc, with_grad=with_grad, weight_decay=1e-2, nesterov=nesterov
    )


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("grad_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("with_acc", [True, False], ids=["acc+grad", "grad-only"])
def test_flush_large_reduced_precision(rng, isa, grad_dtype, nesterov, with_acc):
    """Half-precision gradients are widened block by block (1024 at a time): a large odd size
    crosses many blocks, thread ranges and a partial last block."""
    run_flush_and_check(
        rng,
        [(5,), (1_000_003,)],
        [grad_dtype] * 2,
        with_acc=with_acc,
        with_grad=True,
        weight_decay=1e-3,
        nesterov=nesterov,
    )


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES + ["mixed"])
def test_flush_grad_dtypes_mixed_shapes(rng, grad_dtype, nesterov):
    dtypes = [GRAD_DTYPES[i % 3] if grad_dtype == "mixed" else grad_dtype for i in range(len(MIXED_SHAPES))]
    run_flush_and_check(rng, MIXED_SHAPES, dtypes, with_acc=True, with_grad=True, weight_decay=3e-3, nesterov=nesterov)


@pytest.mark.parametrize(
    "weight_decay",
    [
        0.0,
        0.05,
        np.array(0.05),
        [0.0, 0.1, 0.02, 0.5, 0.0, 1e-4, 0.3],
        (0.0, 0.1, 0.02, 0.5, 0.0, 1e-4, 0.3),
        np.array([0.2, 0.0, 0.01, 0.5, 0.3, 1e-4, 0.05], np.float32),
        np.array([0.2, 0.0, 0.01, 0.5, 0.3, 1e-4, 0.05], np.float64),
    ],
    ids=["zero", "scalar", "0-d-array", "list", "tuple", "ndarray-f32", "ndarray-f64"],
)
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_flush_weight_decay(rng, weight_decay, nesterov):
    assert len(MIXED_SHAPES) == 7
    run_flush_and_check(
        rng, MIXED_SHAPES, ["float32"] * 7, with_acc=True, with_grad=True, weight_decay=weight_decay, nesterov=nesterov
    )


def test_flush_numpy_scalar_hyper_parameters(rng):
    run_flush_and_check(
        rng,
        [(100,)],
        ["float16"],
        with_acc=True,
        with_grad=True,
        weight_decay=np.float32(0.01),
        nesterov=True,
        lr=np.float64(0.05),
        momentum=np.float32(0.8),
        grad_scale=np.float16(0.5),
    )


# ---------------------------------------------------------------- whole windows


@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("fused_last", [False, True], ids=["flush-acc", "fused-last-grad"])
def test_exact_average_optax_style(grad_dtype, fused_last):
    """Gradients 1, 2, 3, 4 accumulated with scale 1 and flushed with grad_scale 1/4, lr 1 and
    momentum 0 move the parameter by exactly their mean, 2.5 (all values are exact in float32).
    Then a second window (5, 6, flushed with 1/2) moves it by exactly 5.5 more."""
    dt = np_dtype(grad_dtype)
    shape = (4099,)
    param = np.full(shape, 10.0, np.float32)
    moment = np.zeros(shape, np.float32)
    acc = np.zeros(shape, np.float32)
    hyper = dict(lr=1.0, momentum=0.0, weight_decay=0.0, nesterov=False)

    def window(values):
        grads = [np.full(shape, v, np.float32).astype(dt) for v in values]
        for g in grads[:-1] if fused_last else grads:
            _C.accumulate([acc], [g], 1.0)
        last = [grads[-1]] if fused_last else None
        _C.momentum_update([param], [moment], [acc], last, grad_scale=1.0 / len(values), **hyper)

    window([1, 2, 3, 4])
    assert np.array_equal(param, np.full(shape, 7.5, np.float32))
    assert np.array_equal(moment, np.full(shape, 2.5, np.float32))
    assert np.array_equal(acc, np.zeros(shape, np.float32))
    window([5, 6])
    assert np.array_equal(param, np.full(shape, 2.0, np.float32))
    assert np.array_equal(moment, np.full(shape, 5.5, np.float32))


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_several_windows_against_reference(rng, nesterov):
    """Three windows of k = 3, 1, 2 micro-batches (the last one fused into the flush) with
    momentum carried across windows, compared with the same sequence in float64."""
    shapes = [(5000,), (3, 5, 7), (), (17,)]
    wd = [0.01, 0.0, 0.1, 0.02]
    params = [random_array(rng, s, np.float32) for s in shapes]
    moments = [np.zeros(s, np.float32) for s in shapes]
    accs = [np.zeros(s, np.float32) for s in shapes]
    ref_p = [f64(p) for p in params]
    ref_v = [np.zeros(s) for s in shapes]
    ref_a = [np.zeros(s) for s in shapes]
    loss_scale = 8.0
    for step, k in enumerate([3, 1, 2]):
        for micro in range(k):
            grads = [random_array(rng, s, GRAD_DTYPES[(micro + i) % 3], scale=loss_scale) for i, s in enumerate(shapes)]
            if micro < k - 1:
                _C.accumulate(accs, grads, 1.0)
                ref_a = [ref_accumulate(a, g, 1.0) for a, g in zip(ref_a, grads)]
            else:
                kwargs = flush_kwargs(nesterov, wd, lr=0.05, momentum=0.9, grad_scale=1.0 / (k * loss_scale))
                _C.momentum_update(params, moments, accs, grads, **kwargs)
                for i in range(len(shapes)):
                    ref_p[i], ref_v[i], ref_a[i] = ref_momentum_flush(
                        ref_p[i], ref_v[i], ref_a[i], grads[i], **{**kwargs, "weight_decay": wd[i]}
                    )
        for i in range(len(shapes)):
            # Errors compound over windows (each step's inputs carry the previous step's
            # rounding): allow the per-step bound once per window.
            scale_p = max(float(np.max(np.abs(ref_p[i]))), 1.0)
            scale_v = max(float(np.max(np.abs(ref_v[i]))), 1.0)
            assert np.max(np.abs(f64(params[i]) - ref_p[i])) <= (step + 1) * 1e-6 * scale_p, f"param[{i}] step {step}"
            assert np.max(np.abs(f64(moments[i]) - ref_v[i])) <= (step + 1) * 1e-6 * scale_v, f"moment[{i}] step {step}"
            assert not np.any(accs[i])


# ---------------------------------------------------------------- threading


def test_set_num_threads_default(threads):
    threads(3)
    assert _C.num_threads() == 3
    threads(0)  # back to the default: MSACCUM_NUM_THREADS or the CPU affinity
    assert _C.num_threads() == default_thread_count()
    threads(-5)
    assert _C.num_threads() == default_thread_count()


# Big enough to be split across threads (the kernels use one thread per 2**15 elements). The
# 3-element tensor first puts the split points (multiples of 16 in the concatenated element
# space) at odd offsets inside the big tensor, whose gradient dtype is the parameter.
THREAD_SHAPES = [(3,), (1_000_003,), (4097,), (70_001,), (3, 5, 7), (), (0,), (65_537,)]


@pytest.mark.parametrize("big_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("op", ["accumulate", "flush-nesterov", "flush-plain"])
def test_thread_counts_give_identical_results(rng, threads, op, big_dtype):
    dtypes = [GRAD_DTYPES[i % 3] for i in range(len(THREAD_SHAPES))]
    dtypes[1] = big_dtype
    base = dict(
        p=[random_array(rng, s, np.float32) for s in THREAD_SHAPES],
        v=[random_array(rng, s, np.float32) for s in THREAD_SHAPES],
        a=[random_array(rng, s, np.float32) for s in THREAD_SHAPES],
        g=[random_array(rng, s, dt) for s, dt in zip(THREAD_SHAPES, dtypes)],
    )
    wd = list(np.linspace(0.0, 0.1, len(THREAD_SHAPES)))
    results = {}
    for n in (1, 2, 3):
        threads(n)
        assert _C.num_threads() == n
        t = {k: [x.copy() for x in v] for k, v in base.items()}
        if op == "accumulate":
            _C.accumulate(t["a"], t["g"], 0.75)
        else:
            _C.momentum_update(t["p"], t["v"], t["a"], t["g"], **flush_kwargs(op == "flush-nesterov", wd))
        results[n] = t
    for n in (2, 3):
        for key in "pva":
            for i, (x, y) in enumerate(zip(results[1][key], results[n][key])):
                assert x.tobytes() == y.tobytes(), f"{op}: {key}[{i}] differs between 1 and {n} threads"
    # and the single-thread result is right
    if op == "accumulate":
        for i in range(len(THREAD_SHAPES)):
            assert_close_f32(results[1]["a"][i], ref_accumulate(base["a"][i], base["g"][i], 0.75), f"acc[{i}]")
    else:
        for i in range(len(THREAD_SHAPES)):
            p, v, _ = ref_momentum_flush(
                base["p"][i],
                base["v"][i],
                base["a"][i],
                base["g"][i],
                **{**flush_kwargs(op == "flush-nesterov"), "weight_decay": wd[i]},
            )
            assert_close_f32(results[1]["p"][i], p, f"param[{i}]")
            assert_close_f32(results[1]["v"][i], v, f"moment[{i}]")


@pytest.mark.parametrize("nthreads", [1, 2])
def test_many_small_tensors(rng, threads, nthreads):
    """200 small tensors (total > 2 * 2**15 elements, so several tensors share a thread's range
    and ranges start inside tensors), with sizes 0..1200 and all gradient dtypes."""
    threads(nthreads)
    sizes = rng.integers(0, 1200, size=200)
    sizes[::37] = 0
    sizes[5] = 1
    assert sizes.sum() > 2 * 2**15
    dtypes = [GRAD_DTYPES[i % 3] for i in range(200)]
    accs = [random_array(rng, int(n), np.float32) for n in sizes]
    grads = [random_array(rng, int(n), dt) for n, dt in zip(sizes, dtypes)]
    expected = [ref_accumulate(a, g, 0.5) for a, g in zip(accs, grads)]
    _C.accumulate(accs, grads, 0.5)
    for i, e in enumerate(expected):
        assert_close_f32(accs[i], e, f"acc[{i}]")
    run_flush_and_check(
        rng,
        [(int(n),) for n in sizes],
        dtypes,
        with_acc=True,
        with_grad=True,
        weight_decay=list(rng.uniform(0, 0.1, 200)),
        nesterov=True,
    )


def test_kernels_work_in_a_forked_child(threads):
    """The thread pool is rebuilt after fork(): a child (e.g. a DataLoader worker) that calls the
    kernels after the parent used several threads must neither deadlock nor miscompute."""
    threads(2)
    grad = np.ones(200_003, np.float32)
    acc = np.zeros_like(grad)
    _C.accumulate([acc], [grad], 1.0)  # the parent's pool now has a worker
    pid = os.fork()
    if pid == 0:  # child: exit code 0 only if the result is right; killed by alarm if it hangs
        try:
            import signal

            signal.alarm(20)
            child = np.zeros_like(grad)
            _C.accumulate([child], [grad], 3.0)
            os._exit(0 if np.array_equal(child, 3.0 * grad) else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _C.accumulate([acc], [grad], 1.0)  # and the parent's pool still works
    np.testing.assert_array_equal(acc, 2.0 * grad)


# ---------------------------------------------------------------- sum_of_squares

# Bound of the CPU kernel against the exact (float64) sum of squares, relative: every square is
# rounded once to float32 (or not at all, when contracted into an FMA) and added in float32 to one
# of 16 lanes that each sum at most 64 terms of a 1024-element block; the lanes and blocks are
# added in double. For n non-negative terms a float32 running sum has relative error <= (n-1)u,
# so the whole is within ~64u = 64 * 2**-24 ~ 3.8e-6 of the exact value. A wrong or missing term
# (one element skipped or counted twice, a lane dropped) moves the sum of O(1) values by >= 1e-3.
RTOL_SQUARES = 65 * 2.0**-24


def ref_sum_of_squares(arrays):
    return float(sum(np.sum(f64(a) ** 2) for a in arrays))


def assert_squares_close(got, arrays, rtol=RTOL_SQUARES):
    expected = ref_sum_of_squares(arrays)
    assert isinstance(got, float)
    assert abs(got - expected) <= rtol * expected, f"sum of squares {got!r}, reference {expected!r}"


@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_sum_of_squares_sizes(rng, isa, size, grad_dtype):
    x = random_array(rng, size, grad_dtype, scale=3.0)
    before = x.copy()
    got = _C.sum_of_squares([x])
    if size == 0:
        assert got == 0.0
    else:
        assert_squares_close(got, [x])
    assert x.tobytes() == before.tobytes()


def test_sum_of_squares_mixed_list(rng, threads):
    for n in (1, 2, 3):
        threads(n)
        arrays = [random_array(rng, s, GRAD_DTYPES[i % 3]) for i, s in enumerate(THREAD_SHAPES + MIXED_SHAPES)]
        assert_squares_close(_C.sum_of_squares(tuple(arrays)), arrays)
    assert _C.sum_of_squares([]) == 0.0
    assert _C.sum_of_squares([np.zeros((0, 3), np.float32), np.zeros(0, np.float16)]) == 0.0


def test_sum_of_squares_exact_small_integers():
    """Squares and sums of small integers are exact in float32: 1 + 4 + 9 + 16 = 30, and 1,024
    elements of 3 (a whole block) plus 7 odd ones of -2 (a tail) = 9,216 + 28."""
    assert _C.sum_of_squares([np.array([1, 2, 3, 4], np.float32)]) == 30.0
    arrays = [np.full(1024, 3.0, np.float32), np.full(7, -2.0, np.float16), np.array(5.0, np_dtype("bfloat16"))]
    assert _C.sum_of_squares(arrays) == 9216.0 + 28.0 + 25.0


@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES + ["mixed"])
def test_sum_of_squares_bit_identical_for_any_thread_count(rng, isa, threads, grad_dtype):
    """The global norm must not depend on the machine's core count: for each vector ISA the sum
    is bit-identical with 1, 2, 3 (and 7) threads, over tensors of sizes 0, 1, 3, 4097 and
    1,000,003 (in two orders, and after a 3-element tensor that moves every thread split), and
    the same as that ISA gives on every repeat. Each ISA's value is checked against float64."""
    dtypes = [GRAD_DTYPES[i % 3] if grad_dtype == "mixed" else grad_dtype for i in range(len(SIZES))]
    arrays = [random_array(rng, n, dt) for n, dt in zip(SIZES, dtypes)]
    lists = {
        "sizes": arrays,
        "reversed": arrays[::-1],
        "shifted": [random_array(rng, 3, np.float32)] + arrays,
        "big-alone": [arrays[-1]],
    }
    for name, tensors in lists.items():
        got = {}
        for n in (1, 2, 3, 7):
            threads(n)
            got[n] = [_C.sum_of_squares(tensors) for _ in range(2)]
        values = {v.hex() for results in got.values() for v in results}
        assert len(values) == 1, f"{isa} {name}: { ({n: [v.hex() for v in r] for n, r in got.items()}) }"
        assert_squares_close(got[1][0], tensors)


def test_sum_of_squares_is_deterministic(rng, threads):
    arrays = [random_array(rng, s, GRAD_DTYPES[i % 3]) for i, s in enumerate(THREAD_SHAPES)]
    for n in (1, 2, 3):
        threads(n)
        first = _C.sum_of_squares(arrays)
        assert all(_C.sum_of_squares(arrays) == first for _ in range(3)), f"{n} threads"


# float16's largest value (65504) squares to a finite float32: no overflow case for it.
NON_FINITE_CASES = [
    (dt, bad)
    for dt in GRAD_DTYPES
    for bad in ("nan", "inf", "-inf", "square-overflows")
    if not (dt == "float16" and bad == "square-overflows")
]


@pytest.mark.parametrize("grad_dtype,bad", NON_FINITE_CASES)
def test_sum_of_squares_non_finite(rng, isa, threads, grad_dtype, bad):
    """A NaN or inf anywhere (first element, in a vector body, in the tail, of any tensor) makes the
    sum non-finite, whatever thread sees it; so does a finite value whose float32 square overflows."""
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "square-overflows": 3e19}[bad]
    threads(2)
    dt = np_dtype(grad_dtype)
    for where in (0, 17, 999_999, 1_000_002):
        arrays = [random_array(rng, 5, dt), random_array(rng, 1_000_003, dt)]
        arrays[1][where] = value
        got = _C.sum_of_squares(arrays)
        assert np.isnan(got) if bad == "nan" else got == np.inf, (where, got)


def test_sum_of_squares_sum_beyond_float32_is_returned_in_double():
    """Squares that are finite in float32 but sum beyond its range: the double result is kept
    (the accumulation cell rounds it to float32 and treats that window as non-finite)."""
    got = _C.sum_of_squares([np.full(4, 1.5e19, np.float32)])
    expected = 4 * float(np.float32(1.5e19)) ** 2
    assert np.isfinite(got) and abs(got - expected) <= RTOL_SQUARES * expected
    assert expected > float(np.finfo(np.float32).max)


# ---------------------------------------------------------------- accumulate(overwrite=True)


def garbage_like(rng, shape):
    """What an accumulator may hold before the first micro-batch of a window writes it: NaN, inf,
    huge values and noise (the result must not depend on any of it)."""
    a = random_array(rng, shape, np.float32, scale=1e30)
    flat = a.reshape(-1)
    flat[::3] = np.nan
    flat[1::7] = np.inf
    flat[2::11] = -np.inf
    return a


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_accumulate_overwrite_sizes(rng, isa, threads, nthreads, size, grad_dtype):
    threads(nthreads)
    acc = garbage_like(rng, size)
    grad = random_array(rng, size, grad_dtype)
    grad_before = grad.copy()
    _C.accumulate([acc], [grad], 0.37, overwrite=True)
    assert_close_f32(acc, ref_assign(grad, 0.37), "acc[0]")
    assert grad.tobytes() == grad_before.tobytes()


def test_accumulate_overwrite_mixed_list_then_add(rng, threads):
    """A window: the first micro-batch overwrites garbage, the next ones add; the result is the
    scaled sum of the window's gradients alone. Also through kernels.accumulate."""
    from mindspore_accum import kernels

    for n in (1, 2):
        threads(n)
        shapes = MIXED_SHAPES + THREAD_SHAPES
        accs = [garbage_like(rng, s) for s in shapes]
        expected = [np.zeros(s) for s in shapes]
        for k, scale in enumerate([0.25, 0.25, -1.5]):
            grads = [random_array(rng, s, GRAD_DTYPES[(i + k) % 3]) for i, s in enumerate(shapes)]
            kernels.accumulate(accs, grads, scale, overwrite=k == 0)
            expected = [ref_accumulate(e, g, scale) for e, g in zip(expected, grads)]
        for i, e in enumerate(expected):
            assert_close_f32(accs[i], e, f"acc[{i}] {shapes[i]}")


def test_accumulate_overwrite_false_still_adds(rng):
    acc = random_array(rng, 1000, np.float32)
    grad = random_array(rng, 1000, np.float32)
    expected = ref_accumulate(acc, grad, 2.0)
    _C.accumulate([acc], [grad], 2.0, overwrite=False)
    assert_close_f32(acc, expected)
    _C.accumulate([], [], 1.0, overwrite=True)


def test_accumulate_overwrite_is_exact_for_every_bit_pattern():
    """acc = 1 * grad over all 65536 float16 patterns (inf and nan included) into a NaN-filled
    accumulator: bit-exact widening, and no NaN left over from the old content."""
    grad = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    exact = grad.astype(np.float32)
    acc = np.full(grad.shape, np.nan, np.float32)
    _C.accumulate([acc], [grad], 1.0, overwrite=True)
    nan = np.isnan(exact)
    assert np.array_equal(np.isnan(acc), nan)
    assert np.array_equal(acc[~nan], exact[~nan])


# ---------------------------------------------------------------- adamw_flush


def adamw_kwargs(
    *, bias_correction=True, step=1, weight_decay=0.01, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, grad_scale=0.25
):
    return dict(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        step=step,
        grad_scale=grad_scale,
        bias_correction=bias_correction,
    )


def adamw_state(rng, shapes):
    """Parameters, first moments (normal) and second moments (non-negative, away from 0 so that
    sqrt(v) + eps is O(0.1..1): u stays O(1-10))."""
    params = [random_array(rng, s, np.float32) for s in shapes]
    exp_avg = [random_array(rng, s, np.float32, scale=0.1) for s in shapes]
    # np.array keeps 0-d results arrays
    exp_avg_sq = [np.array(np.square(random_array(rng, s, np.float32, scale=0.1)) + np.float32(0.01)) for s in shapes]
    return params, exp_avg, exp_avg_sq


def run_adamw_and_check(rng, shapes, grad_dtypes, *, with_acc, with_grad, **kw):
    """Builds random tensors, runs adamw_flush, checks every output against the reference."""
    n = len(shapes)
    kwargs = adamw_kwargs(**kw)
    params, exp_avg, exp_avg_sq = adamw_state(rng, shapes)
    accs = [random_array(rng, s, np.float32) for s in shapes] if with_acc else None
    grads = [random_array(rng, s, dt) for s, dt in zip(shapes, grad_dtypes)] if with_grad else None
    wd = np.broadcast_to(np.asarray(kwargs["weight_decay"], dtype=np.float64), (n,))
    expected = [
        ref_adamw_flush(
            params[i],
            exp_avg[i],
            exp_avg_sq[i],
            None if accs is None else accs[i],
            None if grads is None else grads[i],
            **{**kwargs, "weight_decay": float(wd[i])},
        )
        for i in range(n)
    ]
    grads_before = None if grads is None else [g.copy() for g in grads]
    _C.adamw_update(params, exp_avg, exp_avg_sq, accs, grads, **kwargs)
    for i, (p, m, v, _) in enumerate(expected):
        assert_close_f32(params[i], p, f"param[{i}]")
        assert_close_f32(exp_avg[i], m, f"exp_avg[{i}]")
        assert_close_f32(exp_avg_sq[i], v, f"exp_avg_sq[{i}]")
        if accs is not None:
            assert accs[i].dtype == np.float32 and not np.any(accs[i]) and not np.any(np.signbit(accs[i])), (
                f"acc[{i}] must be +0 after the flush"
            )
        if grads is not None:
            assert grads[i].tobytes() == grads_before[i].tobytes(), f"grad[{i}] was written"


PRESENCE = [(True, True), (True, False), (False, True), (False, False)]
PRESENCE_IDS = ["acc+grad", "acc-only", "grad-only", "neither"]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("with_acc,with_grad", PRESENCE, ids=PRESENCE_IDS)
@pytest.mark.parametrize("size", SIZES)
def test_adamw_sizes(rng, isa, threads, nthreads, size, with_acc, with_grad):
    threads(nthreads)
    run_adamw_and_check(rng, [(size,)], ["float32"], with_acc=with_acc, with_grad=with_grad, lr=0.01)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
@pytest.mark.parametrize("with_acc", [True, False], ids=["acc+grad", "grad-only"])
def test_adamw_large_grad_dtypes(rng, isa, threads, nthreads, grad_dtype, with_acc):
    """Half-precision gradients widened block by block: a large odd size crosses many blocks,
    thread ranges and a partial last block."""
    threads(nthreads)
    run_adamw_and_check(
        rng, [(5,), (1_000_003,)], [grad_dtype] * 2, with_acc=with_acc, with_grad=True, weight_decay=[0.0, 0.05]
    )


@pytest.mark.parametrize("step", [1, 1000])
@pytest.mark.parametrize("bias_correction", [True, False], ids=["bias-corrected", "no-correction"])
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES + ["mixed"])
def test_adamw_steps_and_bias_correction_mixed_shapes(rng, grad_dtype, bias_correction, step):
    dtypes = [GRAD_DTYPES[i % 3] if grad_dtype == "mixed" else grad_dtype for i in range(len(MIXED_SHAPES))]
    run_adamw_and_check(
        rng,
        MIXED_SHAPES,
        dtypes,
        with_acc=True,
        with_grad=True,
        step=step,
        bias_correction=bias_correction,
        lr=0.05,
        eps=1e-6,
    )


@pytest.mark.parametrize(
    "weight_decay",
    [
        0.0,
        0.05,
        np.array(0.05),
        [0.0, 0.1, 0.02, 0.5, 0.0, 1e-4, 0.3],
        (0.0, 0.1, 0.02, 0.5, 0.0, 1e-4, 0.3),
        np.array([0.2, 0.0, 0.01, 0.5, 0.3, 1e-4, 0.05], np.float32),
        np.array([0.2, 0.0, 0.01, 0.5, 0.3, 1e-4, 0.05], np.float64),
    ],
    ids=["zero", "scalar", "0-d-array", "list", "tuple", "ndarray-f32", "ndarray-f64"],
)
def test_adamw_weight_decay(rng, weight_decay):
    assert len(MIXED_SHAPES) == 7
    run_adamw_and_check(
        rng, MIXED_SHAPES, ["float32"] * 7, with_acc=True, with_grad=True, weight_decay=weight_decay, lr=0.1, step=3
    )


@pytest.mark.parametrize(
    "weight_decay",
    [np.inf, -np.inf, np.nan, 3.4028235677973366e38, np.array(np.inf)],
    ids=["inf", "-inf", "nan", "rounds-to-inf-in-float32", "0-d-inf"],
)
def test_adamw_non_finite_weight_decay_refused_even_with_no_tensors(weight_decay):
    """A non-finite decoupled weight decay is a configuration error, whatever the list length
    (the midpoint above float32's largest value rounds to inf)."""
    kw = dict(lr=0.0, beta1=0.0, beta2=0.0, eps=1.0, grad_scale=0.0, step=1, bias_correction=True)
    with pytest.raises(ValueError, match="weight_decay must be finite"):
        _C.adamw_update([], [], [], None, None, weight_decay=weight_decay, **kw)


def test_adamw_numpy_scalars_and_kernels_wrapper(rng):
    from mindspore_accum import adamw_update, kernels

    assert adamw_update is kernels.adamw_update and "adamw_update" in kernels.__all__
    shapes = [(100,), (3, 4)]
    params, exp_avg, exp_avg_sq = adamw_state(rng, shapes)
    grads = [random_array(rng, s, "float16") for s in shapes]
    kw = dict(
        lr=np.float64(0.01),
        beta1=np.float32(0.8),
        beta2=np.float64(0.99),
        eps=np.float32(1e-6),
        weight_decay=np.float32(0.01),
        step=np.int64(7),
        grad_scale=np.float16(0.5),
        bias_correction=np.bool_(True),
    )
    expected = [
        ref_adamw_flush(
            params[i],
            exp_avg[i],
            exp_avg_sq[i],
            None,
            grads[i],
            **{k: (v.item() if hasattr(v, "item") else v) for k, v in kw.items()},
        )
        for i in range(2)
    ]
    kernels.adamw_update(params, exp_avg, exp_avg_sq, None, grads, **kw)
    for i, (p, m, v, _) in enumerate(expected):
        assert_close_f32(params[i], p, f"param[{i}]")
        assert_close_f32(exp_avg[i], m, f"exp_avg[{i}]")
        assert_close_f32(exp_avg_sq[i], v, f"exp_avg_sq[{i}]")


def test_adamw_without_bias_correction_ignores_step(rng):
    """bias_correction=False is nn.AdamWeightDecay: u = m / (sqrt(v) + eps) whatever the step."""
    shapes = [(4097,), (3, 5)]
    results = []
    for step in (1, 1000, 10**30):
        r = np.random.default_rng(5)
        params, exp_avg, exp_avg_sq = adamw_state(r, shapes)
        grads = [random_array(r, s, np.float32) for s in shapes]
        _C.adamw_update(params, exp_avg, exp_avg_sq, None, grads, **adamw_kwargs(bias_correction=False, step=step))
        results.append([a.tobytes() for a in params + exp_avg + exp_avg_sq])
    assert results[0] == results[1] == results[2]


def test_adamw_exact_small_values():
    """Values exact in float32 where it matters: g = (1 + 2) * 0.5 = 1.5, m = 0.1 * 1.5,
    v = 0.001 * 2.25, bias-corrected at step 1: u = 1 (m/bc1 = 1.5, sqrt(v/bc2) = 1.5, eps tiny);
    param = 1 - 0.1 * 0.01 * 1 - 0.1 * 1 = 0.899 (to float32 rounding)."""
    p, m, v = np.ones(9, np.float32), np.zeros(9, np.float32), np.zeros(9, np.float32)
    acc, grad = np.ones(9, np.float32), np.full(9, 2.0, np.float32)
    _C.adamw_update(
        [p],
        [m],
        [v],
        [acc],
        [grad],
        lr=0.1,
        beta1=0.9,
        beta2=0.999,
        eps=1e-12,
        weight_decay=0.01,
        step=1,
        grad_scale=0.5,
        bias_correction=True,
    )
    np.testing.assert_allclose(p, 0.899, rtol=1e-6)
    np.testing.assert_allclose(m, 0.15, rtol=1e-6)
    np.testing.assert_allclose(v, 0.00225, rtol=2e-5)  # 1 - float32(0.999) = 0.00099998713
    assert not np.any(acc)


def test_adamw_several_windows_against_reference(rng):
    """Three windows (k = 3, 1, 2 micro-batches, the first written with overwrite, the last fused
    into the flush), steps 1..3 with bias correction, compared with the same sequence in float64."""
    shapes = [(5000,), (3, 5, 7), (), (17,)]
    wd = [0.01, 0.0, 0.1, 0.02]
    params = [random_array(rng, s, np.float32) for s in shapes]
    exp_avg = [np.zeros(s, np.float32) for s in shapes]
    exp_avg_sq = [np.zeros(s, np.float32) for s in shapes]
    accs = [np.full(s, np.nan, np.float32) for s in shapes]  # never zeroed: overwrite starts each window
    ref = [[f64(p), np.zeros(s), np.zeros(s)] for p, s in zip(params, shapes)]
    loss_scale = 8.0
    for step, k in enumerate([3, 1, 2], start=1):
        window_sum = [np.zeros(s) for s in shapes]
        for micro in range(k):
            grads = [random_array(rng, s, GRAD_DTYPES[(micro + i) % 3], scale=loss_scale) for i, s in enumerate(shapes)]
            if micro < k - 1:
                _C.accumulate(accs, grads, 1.0, overwrite=micro == 0)
                window_sum = [w + f64(g) for w, g in zip(window_sum, grads)]
            else:
                kwargs = adamw_kwargs(step=step, weight_decay=wd, lr=0.01, grad_scale=1.0 / (k * loss_scale))
                _C.adamw_update(params, exp_avg, exp_avg_sq, accs if k > 1 else None, grads, **kwargs)
                for i in range(len(shapes)):
                    ref[i][0], ref[i][1], ref[i][2], _ = ref_adamw_flush(
                        ref[i][0], ref[i][1], ref[i][2], window_sum[i], grads[i], **{**kwargs, "weight_decay": wd[i]}
                    )
        for i in range(len(shapes)):
            for name, got, want in zip(("param", "exp_avg", "exp_avg_sq"), (params, exp_avg, exp_avg_sq), ref[i]):
                scale = max(float(np.max(np.abs(want))), 1.0)
                err = float(np.max(np.abs(f64(got[i]) - want)))
                assert err <= step * 1e-6 * scale, f"{name}[{i}] step {step}: {err:.3g}"
            if k > 1:
                assert not np.any(accs[i])


@pytest.mark.parametrize("big_dtype", GRAD_DTYPES)
def test_adamw_thread_counts_give_identical_results(rng, threads, big_dtype):
    dtypes = [GRAD_DTYPES[i % 3] for i in range(len(THREAD_SHAPES))]
    dtypes[1] = big_dtype
    p, m, v = adamw_state(rng, THREAD_SHAPES)
    base = dict(
        p=p,
        m=m,
        v=v,
        a=[random_array(rng, s, np.float32) for s in THREAD_SHAPES],
        g=[random_array(rng, s, dt) for s, dt in zip(THREAD_SHAPES, dtypes)],
    )
    wd = list(np.linspace(0.0, 0.1, len(THREAD_SHAPES)))
    results = {}
    for n in (1, 2, 3):
        threads(n)
        t = {k: [x.copy() for x in val] for k, val in base.items()}
        _C.adamw_update(t["p"], t["m"], t["v"], t["a"], t["g"], **adamw_kwargs(weight_decay=wd, step=10))
        results[n] = t
    for n in (2, 3):
        for key in "pmva":
            for i, (x, y) in enumerate(zip(results[1][key], results[n][key])):
                assert x.tobytes() == y.tobytes(), f"{key}[{i}] differs between 1 and {n} threads"
    for i in range(len(THREAD_SHAPES)):
        rp, rm, rv, _ = ref_adamw_flush(
            base["p"][i],
            base["m"][i],
            base["v"][i],
            base["a"][i],
            base["g"][i],
            **adamw_kwargs(weight_decay=wd[i], step=10),
        )
        assert_close_f32(results[1]["p"][i], rp, f"param[{i}]")
        assert_close_f32(results[1]["m"][i], rm, f"exp_avg[{i}]")
        assert_close_f32(results[1]["v"][i], rv, f"exp_avg_sq[{i}]")


@pytest.mark.parametrize("nthreads", [1, 2])
def test_adamw_many_small_tensors(rng, threads, nthreads):
    threads(nthreads)
    sizes = rng.integers(0, 1200, size=200)
    sizes[::37] = 0
    sizes[5] = 1
    dtypes = [GRAD_DTYPES[i % 3] for i in range(200)]
    run_adamw_and_check(
        rng,
        [(int(n),) for n in sizes],
        dtypes,
        with_acc=True,
        with_grad=True,
        weight_decay=list(rng.uniform(0, 0.1, 200)),
        step=2,
    )


def test_adamw_empty_list():
    _C.adamw_update([], [], [], [], [], **adamw_kwargs())
    _C.adamw_update([], [], [], None, None, **adamw_kwargs(weight_decay=[]))
