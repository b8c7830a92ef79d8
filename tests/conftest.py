"""Shared test setup and the float64 NumPy reference of the kernel contract.

The reference here is written from the contract (docs: "The kernel contract"), independently of
the code under test: nothing in it calls `mindspore_accum`.
"""

import os
import zlib

# Must happen before anything imports mindspore (see DESIGN "CPU speed trap"); conftest.py is
# imported by pytest before any test module.
os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
# MindSpore logs every WARNING to stderr; keep test output readable (3 = ERROR).
os.environ.setdefault("GLOG_v", "3")
# A white list set by the user's shell would make ops.Custom refuse our library; the AOT tests
# set it explicitly where they test it (in a subprocess).
os.environ.pop("MS_CUSTOM_AOT_WHITE_LIST", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:
    import ml_dtypes  # noqa: E402

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - the test extra installs it
    BFLOAT16 = None

GRAD_DTYPES = ["float32", "float16", "bfloat16"]


def np_dtype(name):
    if name == "bfloat16":
        if BFLOAT16 is None:
            pytest.skip("ml_dtypes is not installed")
        return BFLOAT16
    return np.dtype(name)


def f64(x):
    """Exact widening to float64 (float16/bfloat16/float32 are all exactly representable)."""
    return np.asarray(x).astype(np.float64)


# ---- the reference (float64, element-wise, straight from the contract) ----


def ref_accumulate(acc, grad, scale):
    """acc + scale * grad, in float64."""
    return f64(acc) + float(scale) * f64(grad)


def ref_momentum_flush(param, moment, acc, grad, *, lr, momentum, grad_scale, weight_decay, nesterov):
    """One tensor of momentum_flush in float64. Returns (param, moment, acc) after the step.

    g = (acc + grad) * grad_scale + weight_decay * param
    v = momentum * v + g
    param -= lr * (g + momentum * v)  if nesterov  else  lr * v
    acc = 0
    """
    p = f64(param)
    summed = np.zeros_like(p)
    if acc is not None:
        summed = summed + f64(acc)
    if grad is not None:
        summed = summed + f64(grad)
    g = summed * grad_scale + weight_decay * p
    v = momentum * f64(moment) + g
    p = p - lr * (g + momentum * v) if nesterov else p - lr * v
    new_acc = None if acc is None else np.zeros_like(p)
    return p, v, new_acc


def ref_assign(grad, scale):
    """accumulate(overwrite=True): scale * grad, in float64 (the old accumulator plays no part)."""
    return float(scale) * f64(grad)


def to_f32(x):
    """A Python float rounded to float32, as the kernels receive their scalars."""
    return float(np.float32(x))


def ref_adamw_flush(
    param, exp_avg, exp_avg_sq, acc, grad, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale, bias_correction
):
    """One tensor of adamw_flush in float64. Returns (param, exp_avg, exp_avg_sq, acc) after the step.

        g  = (acc + grad) * grad_scale
        m  = beta1 * m + (1 - beta1) * g
        v  = beta2 * v + (1 - beta2) * g * g
        u  = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
        param = param - lr * weight_decay * param - lr * u
        acc = 0
    with bc1 = 1 - beta1**step and bc2 = 1 - beta2**step (computed in double from the given betas,
    then rounded to float32) when bias_correction, else both exactly 1. The contract's
    hyper-parameters are float32: they are rounded to float32 here first (1 - beta2 with beta2 =
    0.999 differs by 1.3e-5 relative between the float32 and the float64 beta, which is the
    contract, not kernel error).
    """
    lr, b1, b2, eps, wd, gs = (to_f32(x) for x in (lr, beta1, beta2, eps, weight_decay, grad_scale))
    if bias_correction:
        bc1, bc2 = to_f32(1.0 - float(beta1) ** step), to_f32(1.0 - float(beta2) ** step)
    else:
        bc1 = bc2 = 1.0
    p = f64(param)
    summed = np.zeros_like(p)
    if acc is not None:
        summed = summed + f64(acc)
    if grad is not None:
        summed = summed + f64(grad)
    g = summed * gs
    m = b1 * f64(exp_avg) + (1.0 - b1) * g
    v = b2 * f64(exp_avg_sq) + (1.0 - b2) * g * g
    u = (m / bc1) / (np.sqrt(v) / np.sqrt(bc2) + eps)
    p = p - lr * wd * p - lr * u
    new_acc = None if acc is None else np.zeros_like(p)
    return p, m, v, new_acc


# ---- comparison ----

# Tolerance for float32 kernels against the float64 reference, normwise per tensor:
#     max|kernel - ref| <= RTOL * max(max|ref|, 1)
# How the bound is taken: float32 has unit roundoff u = 2**-24 ~ 6e-8. Every output element is a
# short chain of float32 operations (flush: at most ~9 roundings, of which at most ~4 lie on any
# one dependency path; FMA contraction only removes roundings; widening fp16/bf16 is exact, and
# the reference uses the very same widened inputs). The tests draw inputs O(1) (standard normal)
# and use hyper-parameters <= 1, so every intermediate is within a small factor (~2) of the
# largest output, giving an error of at most ~8u * max|ref| ~ 5e-7 * max|ref|. 1e-6 (~17 ulp of
# the largest value) keeps a 2x margin, yet is far below what any wrong term in the formula would
# cause (>= 1e-3 with these inputs). The floor of 1 keeps the bound meaningful for tensors whose
# reference values are all tiny or zero (absolute error then <= 1e-6). Scalars are passed to the
# kernel as Python floats and rounded to float32 there; that rounding (<= u relative) is covered.
RTOL_F32 = 1e-6


def assert_close_f32(actual, expected, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.size == 0:
        return
    scale = max(float(np.max(np.abs(expected))), 1.0)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= RTOL_F32 * scale, f"{what}: max abs error {err:.3g} > {RTOL_F32:g} * {scale:.3g}"


def random_array(rng, shape, dtype, scale=1.0):
    """Standard-normal values of `shape` in `dtype` (name or numpy dtype)."""
    dtype = np_dtype(dtype) if isinstance(dtype, str) else dtype
    # np.array keeps 0-d results arrays (arithmetic on them would give numpy scalars)
    return np.array(rng.standard_normal(shape) * scale, dtype=np.float32).astype(dtype)


# ---- markers: the tier of a test is its folder (registered in pyproject.toml) ----

TIERS = ("kernels", "cell", "distributed", "examples", "benchmarks", "build")
# The MindSpore-facing tests run on the oldest supported MindSpore release too (.ci/run,
# `-m matrix`): the ones most sensitive to the release. test_cell.py and kill-and-resume run on
# the newest release only, for time.
MATRIX_FILES = {
    "test_aot.py",
    "test_items.py",
    "test_guards.py",
    "test_fused_adamw.py",
    "test_nonfinite.py",
    "test_distributed.py",
    "test_compat.py",
    "test_checkpoint_memory.py",
    "test_sharded_checkpoint_safetensors.py",
    "test_sharded_single_process.py",
    "test_sharding_layout.py",
    "test_optimizer_families.py",
    "test_mint_adamw_recipe.py",
}
# The long tests, left out of the development loop `pytest -m "not slow"` (CI runs them): those
# that train in subprocesses or under msrun, build with sanitizers, or took >= 4 s a case in
# `pytest --durations` on the shared 2-core machine. A file (path under tests/) or one test (its
# node id under tests/, without the parameters).
SLOW = {
    "cell/test_kill_resume.py::test_kill_and_resume_ten_times_is_bit_identical",
    "cell/test_guards.py::test_a_window_end_that_fails_leaves_the_state_of_before",
    "cell/test_cell.py::test_resume_mid_window_from_checkpoint_is_bit_identical",
    "cell/test_optimizer_families.py::test_two_windows_of_8_8_8_5_equal_two_steps_on_29",
    "cell/test_optimizer_families.py::test_checkpoint_mid_window_resumes_bit_identically",
    "cell/test_model_train_checkpoint.py::test_resume_from_the_epoch_checkpoint_equals_the_uninterrupted_run",
    "cell/test_default_log_level.py",
    "distributed/test_distributed.py",
    "distributed/test_sharded.py",
    "distributed/test_sharded_kill_resume.py",
    "examples/test_example.py::test_graph_two_updates",
    "examples/test_example.py::test_pynative_two_updates_via_download",
    "examples/test_example.py::test_resume_mid_epoch_and_mid_window",
    "examples/test_example.py::test_resume_refuses_other_settings",
    "examples/test_example.py::test_distributed_two_workers_msrun",
    "examples/test_gpt_example.py::test_graph_two_updates",
    "examples/test_gpt_example.py::test_pynative_two_updates",
    "examples/test_gpt_example.py::test_resume_mid_window_is_bit_identical",
    "examples/test_gpt_example.py::test_amp_float16_with_dynamic_loss_scale",
    "examples/test_gpt_example.py::test_save_init_and_init_weights_round_trip",
    "benchmarks/test_bench_overhead.py",
    "benchmarks/test_bench_peers.py",
    "benchmarks/test_call_modes.py::test_tiny_mlp_table",
    "benchmarks/test_bench_large_batch.py",
    "benchmarks/test_large_batch_study.py",
    "benchmarks/test_bench_default_mode.py::test_tiny_gpt_end_to_end",
    "build/test_cpu_sanitizers.py",
    "build/test_cuda_build.py",
}


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        rel = os.path.relpath(str(item.path), here).split(os.sep)
        if len(rel) < 2 or rel[0] not in TIERS:
            # CI selects tests by marker: a test outside the tier folders would escape every selection
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder, one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(rel[0])
        if rel[-1] in MATRIX_FILES:
            item.add_marker("matrix")
        path = "/".join(rel)
        test = path + "::" + item.nodeid.split("::", 1)[-1].split("[", 1)[0]
        if path in SLOW or test in SLOW:
            item.add_marker("slow")


@pytest.fixture
def rng(request):
    # Seeded per test (by its node id) so every test is reproducible on its own.
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


# What each CPU kernel variant needs (csrc/cpu/cpu_kernels.cpp cpu_has), as /proc/cpuinfo flags.
ISA_CPU_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "avx2": {"avx2", "fma", "f16c"},
    "baseline": set(),
}


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo, or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def supported_isas():
    """Every CPU kernel variant this CPU can run (tests exercise all of them, not only the best).

    Read from /proc/cpuinfo, independently of the extension, so that a variant the CPU has is
    always collected: if `_C` wrongly refused it, the tests that select it fail (they are never
    silently left out). Without /proc/cpuinfo, the variants `_C` accepts."""
    flags = cpu_flags()
    if flags is not None:
        return [isa for isa, needed in ISA_CPU_FLAGS.items() if needed <= flags]
    return extension_isas()


def extension_isas():
    """The variants `_C.set_vector_isa` accepts on this CPU."""
    from mindspore_accum import _C

    best = _C.build_info()["vector_isa"]
    isas = []
    for isa in ("avx512", "avx2", "baseline"):
        try:
            _C.set_vector_isa(isa)
            isas.append(isa)
        except ValueError:
            pass
    _C.set_vector_isa(best)
    return isas
