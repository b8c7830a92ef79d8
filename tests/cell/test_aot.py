"""The CPU AOT entry points through mindspore.ops.Custom(func_type="aot"), in GRAPH and PYNATIVE
mode, on Parameters updated in place, against the NumPy reference in conftest.py: the shipped ones
(csrc/frontends/mindspore_aot.cpp, libmsaccum_aot.so) and the test-only ones
(tests/cpp/aot_test_entries.cpp, built by sanitizer_build.aot_test_library()).

Input layouts (n tensors; each op has one float32 (1,) placeholder output, set to 0):
  MsAccumAccumulate:             scale(1) or hyper(2) = {scale, overwrite (0/1)}, acc x n, grad x n
  MsAccumMomentumUpdate:         hyper(4), weight_decay(n), param x n, moment x n, grad x n
  MsAccumMomentumUpdateAccGrad:  hyper(4), weight_decay(n), param x n, moment x n, acc x n, grad x n  (test-only)
  MsAccumMomentumUpdateAcc:      hyper(4), weight_decay(n), param x n, moment x n, acc x n            (test-only)
  hyper = {lr, momentum, grad_scale, nesterov (0/1)}
  MsAccumAdamWUpdate:            hyper(7), weight_decay(n), param x n, exp_avg x n, exp_avg_sq x n, grad x n
  MsAccumAdamWUpdateAccGrad:     ... exp_avg_sq x n, acc x n, grad x n                                (test-only)
  MsAccumAdamWUpdateAcc:         ... exp_avg_sq x n, acc x n                                          (test-only)
  AdamW hyper = {lr, beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2}
  MsAccumZero:                   x x n (x = 0)                                                        (test-only)
  MsAccumSumSquares:  x x n -> (sum of squares (1,) float32, float64 workspace): read-only inputs

MindSpore facts these tests rely on / establish (MindSpore 2.10, CPU):
- PyNative runs ops asynchronously. `Tensor.asnumpy()` (of any tensor, including the op's output
  or the Parameter) waits for the queue; so do `mindspore.hal.synchronize()` (deprecated,
  warns) and `mindspore.common.api._pynative_executor.sync()` (private; `mindspore_accum._compat.pynative_sync`).
  `mindspore.runtime.synchronize()` does NOT: on CPU it logs "CPU device is not supported" and
  returns without waiting (no exception).
- A failing AOT function (non-zero return) raises RuntimeError; in PyNative only when the queue
  is synchronised (e.g. at `.asnumpy()`), not at dispatch.
- In a graph, an op whose output is unused is pruned: keep it with ops.depend. Two Custom ops
  touching the same Parameter are not ordered by MindSpore: chain them with ops.depend.
- MS_CUSTOM_AOT_WHITE_LIST is one folder (realpath; os.path.commonpath); a library outside it
  makes the ops.Custom constructor raise TypeError.
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

import mindspore_accum
import mindspore_accum.backends.kernel
from mindspore_accum import _compat
from tests.build.sanitizer_build import TEST_AOT_ENTRIES, aot_library
from tests.conftest import (
    GRAD_DTYPES,
    assert_close_f32,
    np_dtype,
    random_array,
    ref_accumulate,
    ref_adamw_flush,
    ref_assign,
    ref_momentum_flush,
)

AOT_SO = Path(mindspore_accum._C.__file__).with_name("libmsaccum_aot.so")
FUNCS = [
    "MsAccumAccumulate",
    "MsAccumMomentumUpdateAccGrad",
    "MsAccumMomentumUpdateAcc",
    "MsAccumMomentumUpdate",
    "MsAccumAdamWUpdateAccGrad",
    "MsAccumAdamWUpdateAcc",
    "MsAccumAdamWUpdate",
]

try:
    ms.set_device("CPU")
except Exception:  # already set by another test module: fine as long as it is the CPU
    pass

_names = itertools.count()


def param(array):
    """A Parameter with a unique name (graphs reject duplicate names)."""
    return Parameter(Tensor(array), name=f"p{next(_names)}")


def custom(func):
    return ops.Custom(f"{aot_library(func)}:{func}", out_shape=[1], out_dtype=ms.float32, func_type="aot")


def f32_tensor(values):
    return Tensor(np.asarray(values, dtype=np.float32))


def grad_tensor(array):
    # ml_dtypes bfloat16 arrays convert to MindSpore bfloat16 tensors directly.
    return Tensor(array)


class AotCell(nn.Cell):
    """op(*lead, *state, *tail), with the state Parameters owned by the Cell; the op's output is
    kept alive with ops.depend on a tensor the construct returns anyway."""

    def __init__(self, func, state, factory=None):
        super().__init__()
        self.state = ParameterTuple(state)
        self.op = (factory or custom)(func)

    def construct(self, lead, tail):
        out = self.op(*lead, *self.state, *tail)
        return ops.depend(lead[0], out)


class PrunableCell(nn.Cell):
    """The same op, but its output is dropped: nothing tells the compiler to keep it."""

    def __init__(self, func, state):
        super().__init__()
        self.state = ParameterTuple(state)
        self.op = custom(func)

    def construct(self, lead, tail):
        self.op(*lead, *self.state, *tail)
        return lead[0]


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=previous)


@pytest.fixture
def pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


def run_aot(mode, func, lead, state, tail, factory=None):
    """Runs one AOT op in `mode`. Returns the op's placeholder output as numpy in PyNative mode;
    in GRAPH mode the Cell returns lead[0] (the op's output is unused but kept by ops.depend), and
    None is returned. factory: how the op is made (default: ops.Custom here; or
    mindspore_accum.backends.kernel.custom_op)."""
    if mode == "pynative":
        # Tensor.asnumpy() waits for the PyNative queue (see the module docstring).
        return (factory or custom)(func)(*lead, *state, *tail).asnumpy()
    result = AotCell(func, state, factory)(tuple(lead), tuple(tail)).asnumpy()
    np.testing.assert_array_equal(result, lead[0].asnumpy())
    return None


def check_placeholder(out):
    if out is not None:
        np.testing.assert_array_equal(out, np.zeros(1, np.float32))


def mixed_grads(rng, shapes):
    return [random_array(rng, s, GRAD_DTYPES[i % 3]) for i, s in enumerate(shapes)]


SHAPES = [(3, 5, 7), (), (4097,), (1,), (0,), (2, 3)]


def test_library_is_installed_next_to_the_extension():
    assert AOT_SO.is_file(), AOT_SO


# ---------------------------------------------------------------- parity


def test_accumulate(rng, mode):
    accs_np = [random_array(rng, s, np.float32) for s in SHAPES]
    accs = [param(a) for a in accs_np]
    expected = [np.asarray(a, np.float64) for a in accs_np]
    ptrs = None
    for scale in (1.0, -0.5):  # two calls: the second must run again, not be cached
        grads = mixed_grads(rng, SHAPES)
        out = run_aot(mode, "MsAccumAccumulate", [f32_tensor([scale])], accs, [grad_tensor(g) for g in grads])
        check_placeholder(out)
        expected = [ref_accumulate(e, g, scale) for e, g in zip(expected, grads)]
        if ptrs is None:  # after the first call: MindSpore 2.7 allocates a Parameter's memory lazily
            ptrs = [a.data_ptr() for a in accs]  # (data_ptr() is 0 until an operator has used it)
    for i, (a, e) in enumerate(zip(accs, expected)):
        assert_close_f32(a.asnumpy(), e, f"acc[{i}]")
        assert a.data_ptr() == ptrs[i], "the update must be in place"


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("func", ["MsAccumMomentumUpdateAccGrad", "MsAccumMomentumUpdateAcc", "MsAccumMomentumUpdate"])
def test_flush(rng, mode, func, nesterov):
    has_acc = func in ("MsAccumMomentumUpdateAccGrad", "MsAccumMomentumUpdateAcc")
    has_grad = func in ("MsAccumMomentumUpdateAccGrad", "MsAccumMomentumUpdate")
    n = len(SHAPES)
    p_np = [random_array(rng, s, np.float32) for s in SHAPES]
    v_np = [random_array(rng, s, np.float32) for s in SHAPES]
    a_np = [random_array(rng, s, np.float32) for s in SHAPES] if has_acc else [None] * n
    g_np = mixed_grads(rng, SHAPES) if has_grad else [None] * n
    wd = np.array([0.0, 0.1, 0.01, 0.5, 1e-3, 0.2], np.float32)[:n]
    lr, momentum, grad_scale = 0.1, 0.9, 0.25
    expected = [
        ref_momentum_flush(
            p_np[i],
            v_np[i],
            a_np[i],
            g_np[i],
            lr=lr,
            momentum=momentum,
            grad_scale=grad_scale,
            weight_decay=float(wd[i]),
            nesterov=nesterov,
        )
        for i in range(n)
    ]
    params, moments = [param(p) for p in p_np], [param(v) for v in v_np]
    accs = [param(a) for a in a_np] if has_acc else []
    grads = [grad_tensor(g) for g in g_np] if has_grad else []
    lead = [f32_tensor([lr, momentum, grad_scale, float(nesterov)]), f32_tensor(wd)]
    out = run_aot(mode, func, lead, params + moments + accs, grads)
    check_placeholder(out)
    for i, (p, v, _acc) in enumerate(expected):
        assert_close_f32(params[i].asnumpy(), p, f"param[{i}]")
        assert_close_f32(moments[i].asnumpy(), v, f"moment[{i}]")
        if has_acc:
            assert not np.any(accs[i].asnumpy()), f"acc[{i}] must be zero"
        if has_grad:
            assert grads[i].asnumpy().tobytes() == g_np[i].tobytes(), f"grad[{i}] was written"


@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
def test_window_exact_average(mode, grad_dtype):
    """Accumulate 1, 2, 3 with scale 1 and flush with the last gradient 4 fused, grad_scale 1/4,
    lr 1, momentum 0: the parameter moves by exactly 2.5."""
    shape = (257,)
    p, v, acc = (
        param(np.full(shape, 10.0, np.float32)),
        param(np.zeros(shape, np.float32)),
        param(np.zeros(shape, np.float32)),
    )
    dt = np_dtype(grad_dtype)
    grads = [grad_tensor(np.full(shape, k, np.float32).astype(dt)) for k in (1, 2, 3, 4)]
    for g in grads[:3]:
        run_aot(mode, "MsAccumAccumulate", [f32_tensor([1.0])], [acc], [g])
    np.testing.assert_array_equal(acc.asnumpy(), np.full(shape, 6.0, np.float32))
    run_aot(
        mode,
        "MsAccumMomentumUpdateAccGrad",
        [f32_tensor([1.0, 0.0, 0.25, 0.0]), f32_tensor([0.0])],
        [p, v, acc],
        [grads[3]],
    )
    np.testing.assert_array_equal(p.asnumpy(), np.full(shape, 7.5, np.float32))
    np.testing.assert_array_equal(v.asnumpy(), np.full(shape, 2.5, np.float32))
    np.testing.assert_array_equal(acc.asnumpy(), np.zeros(shape, np.float32))


# ---------------------------------------------------------------- accumulate with overwrite, AdamW
# (through the package's factory, mindspore_accum.backends.kernel.custom_op)

FACTORY = mindspore_accum.backends.kernel.custom_op


def factory_for(func):
    """The package's factory for a shipped entry; for a test-only one (not in the package's
    library), an op made here and marked a memory side effect as the factory does."""
    if func in TEST_AOT_ENTRIES:
        return lambda entry: _compat.mark_side_effect_mem(custom(entry))
    return FACTORY


def test_accumulate_overwrite(rng, mode):
    """hyper(2) = {scale, 1}: acc = scale * grad over NaN-filled accumulators; then {scale, 0} and the
    old scale(1) form add."""
    accs = [param(np.full(s, np.nan, np.float32)) for s in SHAPES]
    grads = mixed_grads(rng, SHAPES)
    check_placeholder(
        run_aot(mode, "MsAccumAccumulate", [f32_tensor([0.5, 1.0])], accs, [grad_tensor(g) for g in grads], FACTORY)
    )
    ptrs = [a.data_ptr() for a in accs]  # after a first use: MindSpore 2.7 allocates lazily
    expected = [ref_assign(g, 0.5) for g in grads]
    for i, (a, e) in enumerate(zip(accs, expected)):
        assert_close_f32(a.asnumpy(), e, f"acc[{i}] after overwrite")
    for lead in ([f32_tensor([-2.0, 0.0])], [f32_tensor([-2.0])]):
        grads = mixed_grads(rng, SHAPES)
        check_placeholder(run_aot(mode, "MsAccumAccumulate", lead, accs, [grad_tensor(g) for g in grads], FACTORY))
        expected = [ref_accumulate(e, g, -2.0) for e, g in zip(expected, grads)]
    for i, (a, e) in enumerate(zip(accs, expected)):
        assert_close_f32(a.asnumpy(), e, f"acc[{i}]")
        assert a.data_ptr() == ptrs[i], "the update must be in place"


def adamw_lead(lr, beta1, beta2, eps, grad_scale, step, bias_correction, wd):
    """hyper(7) as the caller must build it: bias corrections in double, rounded to float32."""
    bc1 = 1.0 - beta1**step if bias_correction else 1.0
    bc2 = 1.0 - beta2**step if bias_correction else 1.0
    return [f32_tensor([lr, beta1, beta2, eps, grad_scale, bc1, bc2]), f32_tensor(wd)]


@pytest.mark.parametrize(
    "step,bias_correction", [(1, True), (1000, True), (7, False)], ids=["step1", "step1000", "no-correction"]
)
@pytest.mark.parametrize("func", ["MsAccumAdamWUpdateAccGrad", "MsAccumAdamWUpdateAcc", "MsAccumAdamWUpdate"])
def test_adamw(rng, mode, func, step, bias_correction):
    has_acc = func in ("MsAccumAdamWUpdateAccGrad", "MsAccumAdamWUpdateAcc")
    has_grad = func in ("MsAccumAdamWUpdateAccGrad", "MsAccumAdamWUpdate")
    n = len(SHAPES)
    p_np = [random_array(rng, s, np.float32) for s in SHAPES]
    m_np = [random_array(rng, s, np.float32, scale=0.1) for s in SHAPES]
    v_np = [np.array(np.square(random_array(rng, s, np.float32, scale=0.1)) + np.float32(0.01)) for s in SHAPES]
    a_np = [random_array(rng, s, np.float32) for s in SHAPES] if has_acc else [None] * n
    g_np = mixed_grads(rng, SHAPES) if has_grad else [None] * n
    wd = np.array([0.0, 0.1, 0.01, 0.5, 1e-3, 0.2], np.float32)[:n]
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, grad_scale=0.25, step=step, bias_correction=bias_correction)
    expected = [
        ref_adamw_flush(p_np[i], m_np[i], v_np[i], a_np[i], g_np[i], weight_decay=float(wd[i]), **hyper)
        for i in range(n)
    ]
    params, exp_avg, exp_avg_sq = [param(p) for p in p_np], [param(m) for m in m_np], [param(v) for v in v_np]
    accs = [param(a) for a in a_np] if has_acc else []
    grads = [grad_tensor(g) for g in g_np] if has_grad else []
    lead = adamw_lead(wd=wd, **hyper)
    out = run_aot(mode, func, lead, params + exp_avg + exp_avg_sq + accs, grads, factory_for(func))
    check_placeholder(out)
    for i, (p, m, v, _) in enumerate(expected):
        assert_close_f32(params[i].asnumpy(), p, f"param[{i}]")
        assert_close_f32(exp_avg[i].asnumpy(), m, f"exp_avg[{i}]")
        assert_close_f32(exp_avg_sq[i].asnumpy(), v, f"exp_avg_sq[{i}]")
        if has_acc:
            assert not np.any(accs[i].asnumpy()), f"acc[{i}] must be zero"
        if has_grad:
            assert grads[i].asnumpy().tobytes() == g_np[i].tobytes(), f"grad[{i}] was written"


class AdamWWindowCell(nn.Cell):
    """A window of two micro-batches in ONE graph: the first overwrites the accumulator, the
    second is fused into the AdamW update; ordered by ops.depend."""

    def __init__(self, p, m, v, acc):
        super().__init__()
        self.p, self.m, self.v, self.acc = p, m, v, acc
        self.accumulate = FACTORY("MsAccumAccumulate")
        self.adamw = factory_for("MsAccumAdamWUpdateAccGrad")("MsAccumAdamWUpdateAccGrad")

    def construct(self, g1, g2, hyper, wd):
        out1 = self.accumulate(Tensor(np.array([1.0, 1.0], np.float32)), self.acc, g1)
        hyper = ops.depend(hyper, out1)
        out2 = self.adamw(hyper, wd, self.p, self.m, self.v, self.acc, g2)
        return ops.depend(hyper, out2)


def test_graph_adamw_window(graph):
    """acc holds NaN before the window: overwrite must not read it. g = (1 + 3) * 0.5 = 2,
    step 1 with bias correction: m/bc1 = 2, sqrt(v/bc2) = 2, u = 1 (eps 1e-12);
    param = 1 - 0.1 * 0.5 * 1 - 0.1 * 1 = 0.85."""
    shape = (1000,)
    p, m, v, acc = (
        param(np.ones(shape, np.float32)),
        param(np.zeros(shape, np.float32)),
        param(np.zeros(shape, np.float32)),
        param(np.full(shape, np.nan, np.float32)),
    )
    cell = AdamWWindowCell(p, m, v, acc)
    lead = adamw_lead(0.1, 0.9, 0.999, 1e-12, 0.5, 1, True, [0.5])
    cell(f32_tensor(np.full(shape, 1.0)), f32_tensor(np.full(shape, 3.0)), *lead).asnumpy()
    np.testing.assert_allclose(p.asnumpy(), np.full(shape, 0.85), rtol=1e-6)
    np.testing.assert_allclose(m.asnumpy(), np.full(shape, 0.2), rtol=1e-6)
    np.testing.assert_array_equal(acc.asnumpy(), np.zeros(shape, np.float32))


# ---------------------------------------------------------------- sum of squares (a real output)


def ref_squares(arrays):
    return float(sum(np.sum(np.asarray(a).astype(np.float64) ** 2) for a in arrays))


class SquaresCell(nn.Cell):
    def __init__(self, state):
        super().__init__()
        self.state = ParameterTuple(state)
        self.op = mindspore_accum.backends.kernel.sum_of_squares_op()

    def construct(self, tail):
        return self.op(*self.state, *tail)


def test_sum_of_squares_op(rng, mode):
    """Parameters and plain tensors of every gradient dtype, empty and 0-d ones included; the
    inputs are only read. Bound: 65 float32 ulps of the total (see test_kernels.RTOL_SQUARES)."""
    state_np = [random_array(rng, s, np.float32) for s in SHAPES]
    tail_np = mixed_grads(rng, SHAPES) + [random_array(rng, (70_001,), "bfloat16")]
    state = [param(a) for a in state_np]
    tail = [grad_tensor(g) for g in tail_np]
    if mode == "pynative":
        total, workspace = mindspore_accum.backends.kernel.sum_of_squares_op()(*state, *tail)
    else:
        total, workspace = SquaresCell(state)(tuple(tail))
    assert total.shape == (1,) and total.dtype == ms.float32
    assert workspace.dtype == ms.float64 and workspace.shape == (1,)  # CPU: no scratch needed
    expected = ref_squares(state_np + tail_np)
    assert abs(float(total.asnumpy()[0]) - expected) <= 65 * 2.0**-24 * expected
    for p, a in zip(state, state_np):
        assert p.asnumpy().tobytes() == a.tobytes()


def test_sum_of_squares_op_non_finite(mode):
    x = np.ones(1000, np.float32)
    x[999] = np.nan
    y = np.full(3, 2e19, np.float32)  # finite, but its square is not
    op = mindspore_accum.backends.kernel.sum_of_squares_op()

    def run(*tensors):
        out = op(*tensors) if mode == "pynative" else SquaresCell([])(tensors)
        return out[0].asnumpy()[0]

    assert np.isnan(run(Tensor(x), Tensor(np.ones(4, np.float32))))
    assert run(Tensor(y)) == np.inf
    assert run(Tensor(np.full(4, 1.5e19, np.float32))) == np.inf  # squares finite, the float32 sum is not
    assert run(Tensor(np.full(4, 2.0, np.float32))) == 16.0


class AccumulateThenSquares(nn.Cell):
    """The in-graph window end: accumulate, then the sum of squares of the updated accumulators,
    ordered by ops.depend (as GradAccumCell.construct does)."""

    def __init__(self, accs):
        super().__init__()
        self.accs = ParameterTuple(accs)
        self.accumulate = custom("MsAccumAccumulate")
        self.squares = mindspore_accum.backends.kernel.sum_of_squares_op()

    def construct(self, grads):
        after = self.accumulate(ops.ones((1,), ms.float32), *self.accs, *grads)
        return self.squares(*ops.depend(self.accs, after))[0]


def test_sum_of_squares_sees_the_accumulated_values_in_one_graph(rng, graph):
    accs_np = [random_array(rng, s, np.float32) for s in [(100,), (7, 3)]]
    grads_np = [random_array(rng, s, np.float32) for s in [(100,), (7, 3)]]
    cell = AccumulateThenSquares([param(a) for a in accs_np])
    got = float(cell(tuple(Tensor(g) for g in grads_np)).asnumpy()[0])
    expected = ref_squares([a.astype(np.float64) + g for a, g in zip(accs_np, grads_np)])
    assert abs(got - expected) <= 65 * 2.0**-24 * expected


def test_sum_of_squares_op_bad_input(pynative, capfd):
    op = mindspore_accum.backends.kernel.sum_of_squares_op()
    capfd.readouterr()
    with pytest.raises(RuntimeError, match=r"function\(MsAccumSumSquares\) is 1"):
        op(f32_tensor(np.ones(3)), Tensor(np.ones(3, np.int32)))[0].asnumpy()
    assert (
        "[mindspore_accum] MsAccumSumSquares: input argument 1 (int32) must be float32, float16 or bfloat16"
        in capfd.readouterr().err
    )


# ---------------------------------------------------------------- keeping the op in the graph


@pytest.fixture
def graph():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


def test_graph_update_not_pruned_when_output_unused(graph):
    """The construct returns its input, not the op's output; ops.depend keeps the in-place
    update. (AotCell is exactly that pattern.)"""
    acc = param(np.zeros(5, np.float32))
    cell = AotCell("MsAccumAccumulate", [acc])
    x = f32_tensor([0.5])
    for _ in range(3):
        result = cell((x,), (f32_tensor(np.ones(5)),))
        np.testing.assert_array_equal(result.asnumpy(), [0.5])  # returns the input, not the op output
    np.testing.assert_array_equal(acc.asnumpy(), np.full(5, 1.5, np.float32))


def test_graph_without_depend_is_pruned(graph):
    """The control for the test above: without ops.depend the compiler drops the op (MindSpore
    2.10 behaviour). If this starts failing, MindSpore changed, not our code."""
    acc = param(np.zeros(5, np.float32))
    cell = PrunableCell("MsAccumAccumulate", [acc])
    cell((f32_tensor([0.5]),), (f32_tensor(np.ones(5)),)).asnumpy()
    np.testing.assert_array_equal(acc.asnumpy(), np.zeros(5, np.float32))


class WindowCell(nn.Cell):
    """Accumulate, then flush with the last gradient fused, in ONE graph. The flush's inputs
    depend on the accumulate's output, so the two in-place ops run in that order."""

    def __init__(self, p, v, acc):
        super().__init__()
        self.p, self.v, self.acc = p, v, acc
        self.accumulate = custom("MsAccumAccumulate")
        self.flush = custom("MsAccumMomentumUpdateAccGrad")

    def construct(self, g1, g2, hyper, wd):
        out1 = self.accumulate(ops.ones((1,), ms.float32), self.acc, g1)
        hyper = ops.depend(hyper, out1)
        out2 = self.flush(hyper, wd, self.p, self.v, self.acc, g2)
        return ops.depend(hyper, out2)


def test_graph_two_ops_ordered_by_depend(graph):
    shape = (1000,)
    p, v, acc = (
        param(np.full(shape, 1.0, np.float32)),
        param(np.zeros(shape, np.float32)),
        param(np.zeros(shape, np.float32)),
    )
    cell = WindowCell(p, v, acc)
    cell(
        f32_tensor(np.full(shape, 1.0)),
        f32_tensor(np.full(shape, 3.0)),
        f32_tensor([1.0, 0.0, 0.5, 0.0]),
        f32_tensor([0.0]),
    ).asnumpy()
    np.testing.assert_array_equal(p.asnumpy(), np.full(shape, -1.0, np.float32))  # 1 - (1 + 3) / 2
    np.testing.assert_array_equal(acc.asnumpy(), np.zeros(shape, np.float32))


def test_pynative_jit_function(pynative):
    """A @ms.jit function inside PyNative mode (the closure's Parameter is updated in place)."""
    acc = param(np.zeros(6, np.float32))
    op = custom("MsAccumAccumulate")

    @ms.jit
    def step(scale, g):
        return ops.depend(scale, op(scale, acc, g))

    for _ in range(2):
        step(f32_tensor([2.0]), f32_tensor(np.arange(6))).asnumpy()
    np.testing.assert_array_equal(acc.asnumpy(), 4.0 * np.arange(6, dtype=np.float32))


# ---------------------------------------------------------------- PyNative synchronisation


def _busy_queue():
    """Queues ~50-100 ms of matmuls so that an op dispatched next is still pending afterwards."""
    a = Tensor(np.full((768, 768), 1e-3, np.float32))
    b = a
    for _ in range(3):
        b = ops.matmul(b, a)
    return b


SYNC_CALLS = {
    "output.asnumpy": lambda out, p: out.asnumpy(),
    "param.asnumpy": lambda out, p: p.asnumpy(),
    "unrelated.asnumpy": lambda out, p: Tensor(np.ones(2, np.float32)).asnumpy(),
    "hal.synchronize": lambda out, p: ms.hal.synchronize(),
    "_compat.pynative_sync": lambda out, p: _compat.pynative_sync(),
}


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(
            how,
            marks=pytest.mark.xfail(
                how == "unrelated.asnumpy" and _compat.mindspore_version() < (2, 7, 1),
                strict=False,
                reason="MindSpore 2.7.0: asnumpy() of a tensor made from NumPy does not wait for the queue "
                "(2.7.1+ does)",
            ),
        )
        for how in SYNC_CALLS
    ],
)
def test_pynative_sync_makes_numpy_view_current(pynative, how):
    """A numpy view of a Parameter (asnumpy shares memory on CPU) taken BEFORE the op shows the
    op's in-place result only after one of these calls."""
    p = param(np.zeros(4, np.float32))
    view = p.asnumpy()
    _busy_queue()
    out = custom("MsAccumAccumulate")(f32_tensor([1.0]), p, f32_tensor(np.ones(4)))
    SYNC_CALLS[how](out, p)
    np.testing.assert_array_equal(view, np.ones(4, np.float32))


def test_pynative_runtime_synchronize_does_not_wait_on_cpu(pynative):
    """ms.runtime.synchronize() logs an error on CPU and returns at once: it must not be used."""
    p = param(np.zeros(4, np.float32))
    view = p.asnumpy()
    _busy_queue()
    out = custom("MsAccumAccumulate")(f32_tensor([1.0]), p, f32_tensor(np.ones(4)))
    ms.runtime.synchronize()  # no exception
    stale = not np.array_equal(view, np.ones(4, np.float32))
    out.asnumpy()
    np.testing.assert_array_equal(view, np.ones(4, np.float32))
    if not stale:
        pytest.skip("the queue drained before the check; cannot show that runtime.synchronize() did not wait")


# ---------------------------------------------------------------- bad calls


ADAMW_HYPER = [1e-3, 0.9, 0.999, 1e-8, 1.0, 0.1, 0.001]


def _bad_calls():
    f = np.ones(4, np.float32)
    return {
        "accumulate-int-grad": ("MsAccumAccumulate", [f32_tensor([1.0])], [f], [Tensor(np.ones(4, np.int32))]),
        "accumulate-missing-grad": ("MsAccumAccumulate", [f32_tensor([1.0])], [f], []),
        "accumulate-shape": ("MsAccumAccumulate", [f32_tensor([1.0])], [f], [f32_tensor(np.ones(5))]),
        "accumulate-float16-acc": ("MsAccumAccumulate", [f32_tensor([1.0])], [f.astype(np.float16)], [f32_tensor(f)]),
        "flush-weight-decay-count": (
            "MsAccumMomentumUpdateAccGrad",
            [f32_tensor([0.1, 0.9, 1.0, 0.0]), f32_tensor([0.0, 0.0])],
            [f, f, f],
            [f32_tensor(f)],
        ),
        "flush-hyper-size": (
            "MsAccumMomentumUpdateAccGrad",
            [f32_tensor([0.1, 0.9, 1.0]), f32_tensor([0.0])],
            [f, f, f],
            [f32_tensor(f)],
        ),
        "flush-float64-moment": (
            "MsAccumMomentumUpdate",
            [f32_tensor([0.1, 0.9, 1.0, 0.0]), f32_tensor([0.0])],
            [f, f.astype(np.float64)],
            [f32_tensor(f)],
        ),
        "flush-acc-missing": (
            "MsAccumMomentumUpdateAcc",
            [f32_tensor([0.1, 0.9, 1.0, 0.0]), f32_tensor([0.0])],
            [f, f],
            [],
        ),
        "flush-int-grad": (
            "MsAccumMomentumUpdate",
            [f32_tensor([0.1, 0.9, 1.0, 0.0]), f32_tensor([0.0])],
            [f, f],
            [Tensor(np.ones(4, np.int64))],
        ),
        # scale(1) and hyper(2) = {scale, overwrite} are accepted (test_accumulate_overwrite), three values not
        "accumulate-three-hyper": ("MsAccumAccumulate", [f32_tensor([1.0, 1.0, 0.0])], [f], [f32_tensor(f)]),
        "adamw-hyper-size": (
            "MsAccumAdamWUpdateAccGrad",
            [f32_tensor(ADAMW_HYPER[:6]), f32_tensor([0.0])],
            [f, f, f, f],
            [f32_tensor(f)],
        ),
        "adamw-weight-decay-count": (
            "MsAccumAdamWUpdateAccGrad",
            [f32_tensor(ADAMW_HYPER), f32_tensor([0.0, 0.0])],
            [f, f, f, f],
            [f32_tensor(f)],
        ),
        "adamw-float16-exp-avg-sq": (
            "MsAccumAdamWUpdate",
            [f32_tensor(ADAMW_HYPER), f32_tensor([0.0])],
            [f, f, f.astype(np.float16)],
            [f32_tensor(f)],
        ),
        "adamw-acc-shape": (
            "MsAccumAdamWUpdateAcc",
            [f32_tensor(ADAMW_HYPER), f32_tensor([0.0])],
            [f, f, f, np.ones(5, np.float32)],
            [],
        ),
        "adamw-int-grad": (
            "MsAccumAdamWUpdate",
            [f32_tensor(ADAMW_HYPER), f32_tensor([0.0])],
            [f, f, f],
            [Tensor(np.ones(4, np.int32))],
        ),
        "adamw-grad-missing": (
            "MsAccumAdamWUpdateAccGrad",
            [f32_tensor(ADAMW_HYPER), f32_tensor([0.0])],
            [f, f, f, f],
            [],
        ),
    }


BAD_CALLS = _bad_calls()


# A failing op in GRAPH mode takes ~3 s to surface in MindSpore 2.10 (PyNative: milliseconds), so
# GRAPH mode runs one bad dtype and one bad arity; PyNative runs them all.
GRAPH_BAD_CALLS = ["accumulate-int-grad", "flush-weight-decay-count", "adamw-weight-decay-count"]


@pytest.mark.parametrize(
    "mode,case",
    [("pynative", c) for c in BAD_CALLS] + [("graph", c) for c in GRAPH_BAD_CALLS],
    indirect=["mode"],
)
def test_bad_call_raises_not_crashes(mode, case, capfd):
    func, lead, state_np, tail = BAD_CALLS[case]
    state = [param(s.copy() + np.float32(i)) for i, s in enumerate(state_np)]
    before = [s.asnumpy().copy() for s in state]
    capfd.readouterr()
    with pytest.raises(RuntimeError, match=rf"function\({func}\) is 1"):
        run_aot(mode, func, lead, state, tail)
    assert f"[mindspore_accum] {func}: " in capfd.readouterr().err  # the library says why on stderr
    for s, b in zip(state, before):  # validation happens before any write
        assert s.asnumpy().tobytes() == b.tobytes()
    # the runtime is still usable afterwards
    acc = param(np.zeros(3, np.float32))
    run_aot(mode, "MsAccumAccumulate", [f32_tensor([1.0])], [acc], [f32_tensor(np.ones(3))])
    np.testing.assert_array_equal(acc.asnumpy(), np.ones(3, np.float32))


# ---------------------------------------------------------------- MS_CUSTOM_AOT_WHITE_LIST

_WHITELIST_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    os.environ["GLOG_v"] = "3"
    import numpy as np
    import mindspore as ms
    from mindspore import Parameter, Tensor, ops
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    so, results = sys.argv[1], {}
    for label, folder in json.loads(sys.argv[2]).items():
        os.environ["MS_CUSTOM_AOT_WHITE_LIST"] = folder
        try:
            op = ops.Custom(so + ":MsAccumAccumulate", out_shape=[1], out_dtype=ms.float32, func_type="aot")
            acc = Parameter(Tensor(np.zeros(3, np.float32)), name="acc_" + label)
            op(Tensor(np.ones(1, np.float32)), acc, Tensor(np.ones(3, np.float32))).asnumpy()
            results[label] = ["ok", acc.asnumpy().tolist()]
        except Exception as e:
            results[label] = [type(e).__name__, str(e)]
    print("RESULT" + json.dumps(results))
    """
)


def test_custom_aot_white_list(tmp_path):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    folders = {
        "unrelated": str(unrelated),
        "missing": str(tmp_path / "does-not-exist"),
        "package": str(AOT_SO.parent),
        "parent": str(AOT_SO.parent.parent),
    }
    env = {k: v for k, v in os.environ.items() if k != "MS_CUSTOM_AOT_WHITE_LIST"}
    proc = subprocess.run(
        [sys.executable, "-c", _WHITELIST_SCRIPT, str(AOT_SO), json.dumps(folders)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    results = json.loads(line[len("RESULT") :])
    so_real = os.path.realpath(AOT_SO)
    for label in ("unrelated", "missing"):
        kind, message = results[label]
        assert kind == "TypeError", results[label]
        assert f"the legal path for the file is {os.path.realpath(folders[label])}" in message, message
        assert so_real in message, message
    for label in ("package", "parent"):
        assert results[label] == ["ok", [1.0, 1.0, 1.0]], results[label]


# ---------------------------------------------------------------- aliasing


@pytest.mark.parametrize(
    "func,lead_np,per_tensor",
    [
        ("MsAccumAccumulate", [[1.0]], 2),  # acc, acc | grad, grad
        ("MsAccumMomentumUpdateAcc", [[0.1, 0.9, 1.0, 0.0], [0.0, 0.0]], 3),  # param x2, moment x2, acc x2
        ("MsAccumAdamWUpdateAcc", [ADAMW_HYPER, [0.0, 0.0]], 4),  # param, exp_avg, exp_avg_sq, acc: x2
        ("MsAccumZero", [], 1),
    ],
)
def test_same_parameter_twice_is_refused(pynative, func, lead_np, per_tensor, capfd):
    """One Parameter passed as two in-place tensors would be updated twice: the entry point
    refuses the call (non-zero return, reason on stderr) and writes nothing."""
    shared = param(np.full(4, 3.0, np.float32))
    others = [param(np.full(4, float(i), np.float32)) for i in range(2 * per_tensor)]
    state = [shared, shared] + others[: 2 * per_tensor - 2]
    before = [s.asnumpy().copy() for s in state]
    capfd.readouterr()
    with pytest.raises(RuntimeError, match=rf"function\({func}\) is 1"):
        custom(func)(*[f32_tensor(x) for x in lead_np], *state).asnumpy()
    assert "shares memory with" in capfd.readouterr().err
    for s, b in zip(state, before):
        assert s.asnumpy().tobytes() == b.tobytes()
