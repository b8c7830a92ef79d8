"""The CUDA kernels (csrc/cuda/cuda_kernels.cu), run on the host through csrc/cuda/host_shim.h.

The very .cu source is compiled as host C++ together with tests/cpp/cuda_host_runner.cpp under
AddressSanitizer and UBSan; every block and thread of every launch runs in loops. Each case is
written to a file, run, and compared with a float64 NumPy reference written here. Besides the
values, the shim's counters are checked against a model of the launcher: the number of
launches (tensor slots / block table filling up) and how many elements took the vectorised and
the scalar path (alignment dispatch and tails).
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from tests.build.sanitizer_build import ASAN_FLAGS, CSRC, REPO, WARNINGS, compile_or_fail, compiler, run_checked

RUNNER_SRC = REPO / "tests" / "cpp" / "cuda_host_runner.cpp"

GRAD_TYPES = {"f32": 0, "f16": 1, "bf16": 2}
RTOL = 1e-6  # max |kernel - reference| relative to the magnitude of the terms, float32 math


# ---------------------------------------------------------------- build and run the runner


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    cxx = compiler()
    exe = tmp_path_factory.mktemp("cuda_host") / "cuda_host_runner"
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-g",
        *ASAN_FLAGS,
        "-fno-strict-aliasing",
        *WARNINGS,
        "-DMSACCUM_HOST_SHIM",
        "-include",
        str(CSRC / "cuda" / "host_shim.h"),
        f"-I{CSRC}",
        "-x",
        "c++",
        str(CSRC / "cuda" / "cuda_kernels.cu"),
        "-x",
        "none",
        str(RUNNER_SRC),
        "-o",
        str(exe),
    ]
    compile_or_fail(cmd, "the host-shim runner")
    return exe


def run_runner(exe, args):
    return run_checked(exe, args)


@pytest.fixture(scope="session")
def limits(runner):
    return json.loads(run_runner(runner, ["--info"]).stdout)


# ---------------------------------------------------------------- cases


def to_bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (inputs are finite)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def widen(bits_or_f32, kind):
    if kind == "f32":
        return bits_or_f32.astype(np.float64)
    if kind == "f16":
        return bits_or_f32.view(np.float16).astype(np.float64)
    return (bits_or_f32.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@dataclass
class T:
    numel: int
    grad: Optional[str] = "f32"  # None: absent
    acc: bool = True
    offsets: tuple = (0, 0, 0, 0)  # elements before param, moment, acc, grad[, exp_avg_sq (adamw)]
    wd: float = 0.0
    arrays: dict = field(default_factory=dict)


def make_data(tensors, rng, op):
    for t in tensors:
        n = t.numel
        if op in ("momentum", "adamw"):
            t.arrays["param"] = rng.standard_normal(n, dtype=np.float32)
            t.arrays["moment"] = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
        if op == "adamw":  # exp_avg_sq: non-negative, away from 0
            t.arrays["moment2"] = np.square(rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)) + np.float32(
                0.01
            )
        if t.acc:
            t.arrays["acc"] = rng.standard_normal(n, dtype=np.float32) * np.float32(3.0)
        if t.grad == "f32":
            t.arrays["grad"] = rng.standard_normal(n, dtype=np.float32)
        elif t.grad == "f16":
            g = rng.standard_normal(n).astype(np.float16)
            g[::7] = np.float16(3e-6)  # float16 subnormals: the widening must handle them
            t.arrays["grad"] = g.view(np.uint16)
        elif t.grad == "bf16":
            t.arrays["grad"] = to_bf16_bits(rng.standard_normal(n, dtype=np.float32))


ARRAY_ORDER = ("param", "moment", "moment2", "acc", "grad")  # moment2: adamw's exp_avg_sq
OFFSET_INDEX = {"param": 0, "moment": 1, "acc": 2, "grad": 3, "moment2": 4}  # T.offsets / the case file


def offsets5(t):
    return tuple(t.offsets) + (0,) * (5 - len(t.offsets))


def write_case(path, op, tensors, chunk, scalars):
    """scalars: 4 floats, 8 for adamw (lr, beta1, beta2, eps, grad_scale, bc1, bc2, 0)."""
    opcode = {"accumulate": 0, "momentum": 1, "squares": 3, "adamw": 4}[op]
    assert len(scalars) == (8 if op == "adamw" else 4)
    with open(path, "wb") as f:
        f.write(struct.pack("<iiiq4f", 0x4341534D, opcode, len(tensors), chunk, *scalars[:4]))
        if op == "adamw":
            f.write(struct.pack("<4f", *scalars[4:]))
        for t in tensors:
            gt = -1 if t.grad is None else GRAD_TYPES[t.grad]
            f.write(struct.pack("<qii5if", t.numel, gt, int(t.acc), *offsets5(t), t.wd))
        for t in tensors:
            for name in ARRAY_ORDER:
                if name in t.arrays:
                    f.write(np.ascontiguousarray(t.arrays[name]).tobytes())


def read_result(path, tensors, trailer=""):
    """(rc, launches, vector elements, scalar elements, arrays per tensor[, trailer values])."""
    raw = Path(path).read_bytes()
    rc, launches, vec, scal = struct.unpack_from("<iqqq", raw, 0)
    pos = struct.calcsize("<iqqq")
    outs = []
    for t in tensors:
        out = {}
        for name in ARRAY_ORDER:
            if name in t.arrays:
                a = t.arrays[name]
                out[name] = np.frombuffer(raw, dtype=a.dtype, count=a.size, offset=pos).copy()
                pos += a.nbytes
        outs.append(out)
    extra = struct.unpack_from("<" + trailer, raw, pos) if trailer else ()
    pos += struct.calcsize("<" + trailer) if trailer else 0
    assert pos == len(raw), "runner output has an unexpected size"
    return (rc, launches, vec, scal, outs, *extra)


def run_case(exe, tmp_path, op, tensors, scalars, chunk=0):
    case, result = tmp_path / "case.bin", tmp_path / "result.bin"
    write_case(case, op, tensors, chunk, scalars)
    run_runner(exe, [str(case), str(result)])
    return read_result(result, tensors, "fq" if op == "squares" else "")


# ---------------------------------------------------------------- model of the launcher


def group_of(t, op):
    if op in ("momentum", "adamw") and t.grad is None:
        return "f32"
    return t.grad


def expected_counters(tensors, op, chunk, limits):
    """Launches, vector elements and scalar elements the launcher must produce."""
    max_tensors = {
        "accumulate": limits["max_accumulate_tensors"],
        "momentum": limits["max_momentum_tensors"],
        "squares": limits["max_squares_tensors"],
        "adamw": limits["max_adamw_tensors"],
    }[op]
    max_blocks = limits["max_blocks"]
    launches = vec = scal = 0
    for kind in ("f32", "f16", "bf16"):
        slots = blocks = 0
        for t in tensors:
            if group_of(t, op) != kind or t.numel == 0:
                continue
            slots += 1
            chunks = -(-t.numel // chunk)
            for c in range(chunks):
                start, length = c * chunk, min(chunk, t.numel - c * chunk)
                present = [OFFSET_INDEX[name] for name in ARRAY_ORDER if name in t.arrays]
                # base allocations are 64-byte aligned: a chunk is vectorised iff every pointer
                # sits on a multiple of 4 elements (16 B for float32, 8 B for 16-bit gradients)
                if all((offsets5(t)[i] + start) % 4 == 0 for i in present):
                    vec += length // 4 * 4
                    scal += length % 4
                else:
                    scal += length
                blocks += 1
                last = c == chunks - 1
                if blocks == max_blocks or (slots == max_tensors and last):
                    launches += 1
                    blocks = 0
                    slots = 0 if last else 1
        if blocks:
            launches += 1
    return launches, vec, scal


# ---------------------------------------------------------------- references (float64)


def rel_err(out, ref, magnitude):
    if out.size == 0:
        return 0.0
    return float(np.max(np.abs(out.astype(np.float64) - ref) / (magnitude + 1e-30)))


def check_accumulate(tensors, scale, outs, overwrite=False):
    s = float(np.float32(scale))
    for i, (t, out) in enumerate(zip(tensors, outs)):
        # overwrite: acc = scale * grad, whatever the accumulator held
        acc0 = np.zeros(t.numel) if overwrite else t.arrays["acc"].astype(np.float64)
        g = widen(t.arrays["grad"], t.grad)
        ref = acc0 + s * g
        err = rel_err(out["acc"], ref, np.abs(acc0) + np.abs(s * g))
        assert err <= RTOL, f"tensor {i} ({t.numel}, {t.grad}): relative error {err:.3g}"
        assert np.array_equal(out["grad"], t.arrays["grad"]), f"tensor {i}: the gradient was written"


def check_momentum(tensors, hyper, outs):
    lr, mom, gs, nesterov = (float(np.float32(h)) for h in hyper)
    for i, (t, out) in enumerate(zip(tensors, outs)):
        p = t.arrays["param"].astype(np.float64)
        m = t.arrays["moment"].astype(np.float64)
        wd = float(np.float32(t.wd))
        summed = np.zeros_like(p)
        summed_mag = np.zeros_like(p)
        if t.acc:
            summed = summed + t.arrays["acc"].astype(np.float64)
            summed_mag = summed_mag + np.abs(t.arrays["acc"].astype(np.float64))
        if t.grad is not None:
            g_in = widen(t.arrays["grad"], t.grad)
            summed, summed_mag = summed + g_in, summed_mag + np.abs(g_in)
        g = summed * gs + wd * p
        v = mom * m + g
        p_ref = p - lr * (g + mom * v) if nesterov else p - lr * v
        g_mag = summed_mag * abs(gs) + abs(wd * 1.0) * np.abs(p)
        v_mag = abs(mom) * np.abs(m) + g_mag
        p_mag = np.abs(p) + abs(lr) * ((g_mag + abs(mom) * v_mag) if nesterov else v_mag)
        what = f"tensor {i} ({t.numel}, grad {t.grad}, acc {t.acc}, nesterov {bool(nesterov)})"
        err_v = rel_err(out["moment"], v, v_mag)
        err_p = rel_err(out["param"], p_ref, p_mag)
        assert err_v <= RTOL, f"{what}: moment relative error {err_v:.3g}"
        assert err_p <= RTOL, f"{what}: param relative error {err_p:.3g}"
        if t.acc:
            assert not np.any(out["acc"]), f"{what}: the accumulator was not zeroed"
        if t.grad is not None:
            assert np.array_equal(out["grad"], t.arrays["grad"]), f"{what}: the gradient was written"


def adamw_hyper(bias_correction=True, step=3, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, grad_scale=0.125):
    """The 7 AdamW hyper-parameters as the frontends compute them (+ one pad for the case file)."""
    bc1 = 1.0 - beta1**step if bias_correction else 1.0
    bc2 = 1.0 - beta2**step if bias_correction else 1.0
    return (lr, beta1, beta2, eps, grad_scale, bc1, bc2, 0.0)


def check_adamw(tensors, hyper, outs):
    lr, b1, b2, eps, gs, bc1, bc2 = (float(np.float32(h)) for h in hyper[:7])
    for i, (t, out) in enumerate(zip(tensors, outs)):
        p = t.arrays["param"].astype(np.float64)
        m0 = t.arrays["moment"].astype(np.float64)
        v0 = t.arrays["moment2"].astype(np.float64)
        wd = float(np.float32(t.wd))
        summed, summed_mag = np.zeros_like(p), np.zeros_like(p)
        if t.acc:
            a = t.arrays["acc"].astype(np.float64)
            summed, summed_mag = summed + a, summed_mag + np.abs(a)
        if t.grad is not None:
            g_in = widen(t.arrays["grad"], t.grad)
            summed, summed_mag = summed + g_in, summed_mag + np.abs(g_in)
        g = summed * gs
        m = b1 * m0 + (1 - b1) * g
        v = b2 * v0 + (1 - b2) * g * g
        den = np.sqrt(v) / np.sqrt(bc2) + eps
        p_ref = p - lr * wd * p - lr * (m / bc1) / den
        m_mag = b1 * np.abs(m0) + (1 - b1) * summed_mag * abs(gs)
        v_mag = b2 * v0 + (1 - b2) * (summed_mag * gs) ** 2
        p_mag = np.abs(p) * (1 + lr * abs(wd)) + lr * m_mag / bc1 / den
        what = f"tensor {i} ({t.numel}, grad {t.grad}, acc {t.acc})"
        for name, got, ref, mag in (
            ("exp_avg", out["moment"], m, m_mag),
            ("exp_avg_sq", out["moment2"], v, v_mag),
            ("param", out["param"], p_ref, p_mag),
        ):
            err = rel_err(got, ref, mag)
            assert err <= RTOL, f"{what}: {name} relative error {err:.3g}"
        if t.acc:
            assert not np.any(out["acc"]), f"{what}: the accumulator was not zeroed"
        if t.grad is not None:
            assert np.array_equal(out["grad"], t.arrays["grad"]), f"{what}: the gradient was written"


def run_and_check(runner, limits, tmp_path, op, tensors, chunk=0, seed=0, nesterov=False, overwrite=None, hyper=None):
    """overwrite (accumulate): None passes no flag (a null pointer), False/True a flag in "device
    memory"; with True the accumulators are filled with NaN first. hyper (adamw): adamw_hyper()."""
    rng = np.random.default_rng(seed)
    make_data(tensors, rng, op)
    if op == "accumulate":
        scalars = (0.37, float(bool(overwrite)), 0.0 if overwrite is None else 1.0, 0.0)
        if overwrite:
            for t in tensors:
                t.arrays["acc"][:] = np.nan
    elif op == "adamw":
        scalars = hyper or adamw_hyper()
    else:
        scalars = (0.05, 0.9, 1.0 / (4 * 128.0) * 64, 1.0 if nesterov else 0.0)
    rc, launches, vec, scal, outs = run_case(runner, tmp_path, op, tensors, scalars, chunk)
    assert rc == 0
    if op == "accumulate":
        check_accumulate(tensors, scalars[0], outs, overwrite=bool(overwrite))
    elif op == "adamw":
        check_adamw(tensors, scalars, outs)
    else:
        check_momentum(tensors, scalars, outs)
    exp = expected_counters(tensors, op, chunk if chunk > 0 else limits["chunk_elems"], limits)
    assert (launches, vec, scal) == exp, "launches / vector elements / scalar elements differ from the model"
    return launches, vec, scal


SIZES = [0, 1, 3, 4097, 1_000_003]

# ---------------------------------------------------------------- accumulate


@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_accumulate_sizes(runner, limits, tmp_path, grad):
    tensors = [T(n, grad=grad) for n in SIZES]
    launches, vec, scal = run_and_check(runner, limits, tmp_path, "accumulate", tensors)
    assert launches == 1 and scal == 1 + 3 + 1 + 3 and vec > 1_000_000


def test_accumulate_mixed_many_tensors(runner, limits, tmp_path):
    # > max_accumulate_tensors per gradient type: the argument struct fills up and more launches follow
    rng = np.random.default_rng(1)
    kinds = ["f32", "f16", "bf16"]
    n = 3 * limits["max_accumulate_tensors"] + 40
    tensors = [T(int(rng.integers(0, 3000)), grad=kinds[i % 3]) for i in range(n)]
    tensors[5].numel = 0
    tensors[70].numel = 1_000_003
    launches, _, _ = run_and_check(runner, limits, tmp_path, "accumulate", tensors, seed=1)
    assert launches >= 6


def test_accumulate_chunk_split_and_block_table_overflow(runner, limits, tmp_path):
    # small chunks: one tensor spans several launches (the block table fills up mid-tensor)
    tensors = [T(400_003, "f32"), T(5, "f16"), T(70_001, "bf16"), T(4097, "f32"), T(300_000, "f16")]
    launches, _, _ = run_and_check(runner, limits, tmp_path, "accumulate", tensors, chunk=1024, seed=2)
    assert launches >= 3


@pytest.mark.parametrize("chunk", [4, 1001])
def test_accumulate_odd_chunks(runner, limits, tmp_path, chunk):
    # chunk 1001: every chunk after the first starts misaligned; chunk 4: one vector per block
    tensors = [T(n, grad=["f32", "f16", "bf16"][n % 3]) for n in (1, 3, 4, 5, 9, 17, 4096, 10_007)]
    run_and_check(runner, limits, tmp_path, "accumulate", tensors, chunk=chunk, seed=3)


@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_accumulate_misaligned(runner, limits, tmp_path, grad):
    # offset views: acc or grad off the vector alignment forces the scalar path for that tensor;
    # a 16-bit gradient 4 elements in is 8-byte aligned and keeps the vector path
    tensors = [
        T(4097, grad, offsets=(0, 0, 1, 0)),
        T(4097, grad, offsets=(0, 0, 0, 1)),
        T(4097, grad, offsets=(0, 0, 0, 2)),
        T(4097, grad, offsets=(0, 0, 3, 3)),
        T(4097, grad, offsets=(0, 0, 4, 4)),
        T(100_003, grad, offsets=(0, 0, 1, 1)),
    ]
    _, vec, scal = run_and_check(runner, limits, tmp_path, "accumulate", tensors, seed=4)
    assert vec == 4096 and scal == 5 * 4097 + 100_003 - 4096


def test_accumulate_empty_list(runner, limits, tmp_path):
    rc, launches, vec, scal, _ = run_case(runner, tmp_path, "accumulate", [], (1.0, 0, 0, 0))
    assert (rc, launches, vec, scal) == (0, 0, 0, 0)


# ---------------------------------------------------------------- momentum_update


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_momentum_sizes(runner, limits, tmp_path, grad, nesterov):
    tensors = [T(n, grad=grad, wd=0.01 * i) for i, n in enumerate(SIZES)]
    launches, vec, scal = run_and_check(runner, limits, tmp_path, "momentum", tensors, nesterov=nesterov, seed=5)
    assert launches == 1 and scal == 1 + 3 + 1 + 3 and vec > 1_000_000


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("acc,grad", [(True, None), (False, "f32"), (False, "f16"), (False, None)])
def test_momentum_acc_or_grad_absent(runner, limits, tmp_path, acc, grad, nesterov):
    tensors = [T(n, grad=grad, acc=acc, wd=1e-4 * (i + 1)) for i, n in enumerate([0, 1, 3, 4097, 100_003])]
    run_and_check(runner, limits, tmp_path, "momentum", tensors, nesterov=nesterov, seed=6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_mixed_many_tensors(runner, limits, tmp_path, nesterov):
    # per-tensor weight decay, acc and gradient presence and gradient dtype; more tensors than
    # one launch's struct holds in each group; random misalignment of every array
    rng = np.random.default_rng(7)
    n = 3 * limits["max_momentum_tensors"] + 25
    tensors = []
    for i in range(n):
        grad = [None, "f32", "f16", "bf16"][int(rng.integers(0, 4))]
        tensors.append(
            T(
                int(rng.integers(0, 2500)),
                grad=grad,
                acc=bool(rng.integers(0, 2)) or grad is None,
                offsets=tuple(int(o) for o in rng.integers(0, 5, size=4)) if i % 2 else (0, 0, 0, 0),
                wd=float(rng.choice([0.0, 1e-4, 5e-4, 0.1])),
            )
        )
    tensors[3].numel = 0
    tensors[40] = T(1_000_003, "bf16", wd=1e-4)
    launches, _, _ = run_and_check(runner, limits, tmp_path, "momentum", tensors, nesterov=nesterov, seed=8)
    assert launches >= 5


def test_momentum_chunk_split_and_block_table_overflow(runner, limits, tmp_path):
    tensors = [T(300_001, "f32", wd=0.1), T(7, "f16", acc=False), T(50_000, "bf16"), T(64_000, None)]
    launches, _, _ = run_and_check(runner, limits, tmp_path, "momentum", tensors, chunk=1024, nesterov=True, seed=9)
    assert launches >= 2


@pytest.mark.parametrize("chunk", [4, 1001])
def test_momentum_odd_chunks(runner, limits, tmp_path, chunk):
    tensors = [T(n, grad=[None, "f32", "f16", "bf16"][n % 4], wd=0.01) for n in (1, 3, 4, 5, 9, 17, 4096, 10_007)]
    run_and_check(runner, limits, tmp_path, "momentum", tensors, chunk=chunk, nesterov=True, seed=10)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_momentum_misaligned(runner, limits, tmp_path, which):
    offsets = [0, 0, 0, 0]
    offsets[which] = 1
    tensors = [T(4097, "f32", offsets=tuple(offsets)), T(4097, "f16", offsets=tuple(offsets)), T(4097, "f32")]
    _, vec, scal = run_and_check(runner, limits, tmp_path, "momentum", tensors, seed=11)
    assert vec == 4096 and scal == 2 * 4097 + 1


# ---------------------------------------------------------------- the rest of the API


@pytest.mark.parametrize("count", [1, 1000])
def test_zero_fill(runner, tmp_path, count):
    case, result = tmp_path / "case.bin", tmp_path / "result.bin"
    with open(case, "wb") as f:
        f.write(struct.pack("<iiiq4f", 0x4341534D, 2, count, 0, 0, 0, 0, 0))
        f.write(np.full(count, -1.5, dtype=np.float32).tobytes())
    run_runner(runner, [str(case), str(result)])
    raw = result.read_bytes()
    rc = struct.unpack_from("<i", raw)[0]
    values = np.frombuffer(raw, dtype=np.float32, offset=struct.calcsize("<iqqq"))
    assert rc == 0 and values.size == count and not np.any(values) and not np.any(np.signbit(values))


def test_errors_and_info(limits):
    assert limits["chunk_elems"] % 4 == 0
    assert limits["runtime_version"] == "unknown"  # no CUDA runtime in the host build
    assert limits["error_string_1"]
    invalid = 1  # cudaErrorInvalidValue
    assert limits["bad_count"] == invalid and limits["bad_chunk"] == invalid and limits["bad_numel"] == invalid
    assert limits["empty"] == 0 and limits["zero_fill_null"] == invalid
    assert limits["adamw_bad_numel"] == invalid and limits["adamw_null_hyper"] == invalid
    assert limits["adamw_empty"] == 0


# ---------------------------------------------------------------- sum_of_squares

# Against the exact sum: each thread adds at most chunk / 256 = 256 float32 squares (each rounded
# at most once), so the relative error is <= 256 u (the runs and stages are added in double).
RTOL_SQUARES = 257 * 2.0**-24


def run_squares(runner, limits, tmp_path, tensors, chunk=0, seed=0, workspace_extra=0):
    """Runs sum_of_squares; checks the result, that the inputs were not written, the counters
    (pass-1 launches as the launcher model says, plus the two reduction launches) and the
    workspace size. Returns (rc, launches, result)."""
    make_data(tensors, np.random.default_rng(seed), "squares")
    rc, launches, vec, scal, outs, result, needed = run_case(
        runner, tmp_path, "squares", tensors, (float(workspace_extra), 0, 0, 0), chunk
    )
    chunk = chunk if chunk > 0 else limits["chunk_elems"]
    assert needed == (1 + sum(-(-t.numel // chunk) for t in tensors)) * limits["block_threads"]
    for i, (t, out) in enumerate(zip(tensors, outs)):
        assert np.array_equal(out["grad"], t.arrays["grad"]), f"tensor {i}: the input was written"
    if rc != 0:
        return rc, launches, result
    exact = sum(float(np.sum(widen(t.arrays["grad"], t.grad) ** 2)) for t in tensors)
    assert abs(result - exact) <= RTOL_SQUARES * exact, f"sum of squares {result!r}, exact {exact!r}"
    exp_launches, exp_vec, exp_scal = expected_counters(tensors, "squares", chunk, limits)
    assert (launches, vec, scal) == (exp_launches + 2, exp_vec, exp_scal), "counters differ from the model"
    return rc, launches, result


@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_squares_sizes(runner, limits, tmp_path, grad):
    tensors = [T(n, grad=grad, acc=False) for n in SIZES]
    rc, launches, _ = run_squares(runner, limits, tmp_path, tensors, seed=20)
    assert rc == 0 and launches == 3


def test_squares_mixed_many_tensors(runner, limits, tmp_path):
    rng = np.random.default_rng(21)
    kinds = ["f32", "f16", "bf16"]
    n = 3 * limits["max_squares_tensors"] + 40
    tensors = [T(int(rng.integers(0, 3000)), grad=kinds[i % 3], acc=False) for i in range(n)]
    tensors[9].numel = 0
    tensors[71].numel = 1_000_003
    rc, launches, _ = run_squares(runner, limits, tmp_path, tensors, seed=21)
    assert rc == 0 and launches >= 6 + 2


def test_squares_chunk_split_and_block_table_overflow(runner, limits, tmp_path):
    tensors = [T(400_003, "f32", acc=False), T(5, "f16", acc=False), T(70_001, "bf16", acc=False)]
    rc, launches, _ = run_squares(runner, limits, tmp_path, tensors, chunk=1024, seed=22)
    assert rc == 0 and launches >= 2 + 2


@pytest.mark.parametrize("chunk", [4, 1001])
def test_squares_odd_chunks_and_misaligned(runner, limits, tmp_path, chunk):
    tensors = [
        T(n, grad=["f32", "f16", "bf16"][n % 3], acc=False, offsets=(0, 0, 0, n % 4))
        for n in (1, 3, 4, 5, 9, 17, 4096, 10_007)
    ]
    rc, _, _ = run_squares(runner, limits, tmp_path, tensors, chunk=chunk, seed=23)
    assert rc == 0


def test_squares_empty_and_workspace_too_small(runner, limits, tmp_path):
    rc, launches, result = run_squares(runner, limits, tmp_path, [], seed=24)
    assert (rc, launches, result) == (0, 2, 0.0)
    rc, launches, result = run_squares(runner, limits, tmp_path, [T(70_000, "f32", acc=False)], workspace_extra=-1)
    assert rc == 1 and launches == 0 and result == -1.0  # cudaErrorInvalidValue, before any launch


@pytest.mark.parametrize("value", [np.nan, np.inf, 3e19])
def test_squares_non_finite(runner, limits, tmp_path, value):
    tensors = [T(5, "f32", acc=False), T(100_003, "f32", acc=False)]
    make_data(tensors, np.random.default_rng(25), "squares")
    tensors[1].arrays["grad"][77_777] = value
    rc, _, _, _, _, result, _ = run_case(runner, tmp_path, "squares", tensors, (0.0, 0, 0, 0))
    assert rc == 0 and (np.isnan(result) if np.isnan(value) else result == np.inf)


# ---------------------------------------------------------------- accumulate with overwrite


@pytest.mark.parametrize("overwrite", [None, False, True], ids=["no-flag", "flag-0", "flag-1"])
@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_accumulate_overwrite_sizes(runner, limits, tmp_path, grad, overwrite):
    """The flag is read from "device memory" inside the kernel; with it set, the NaN the
    accumulators hold must not reach the result (acc = scale * grad)."""
    tensors = [T(n, grad=grad) for n in SIZES]
    launches, vec, scal = run_and_check(runner, limits, tmp_path, "accumulate", tensors, overwrite=overwrite, seed=30)
    assert launches == 1 and scal == 1 + 3 + 1 + 3 and vec > 1_000_000


@pytest.mark.parametrize("chunk", [4, 1001, 1024])
def test_accumulate_overwrite_chunks_misaligned_many(runner, limits, tmp_path, chunk):
    rng = np.random.default_rng(31)
    kinds = ["f32", "f16", "bf16"]
    tensors = [
        T(int(rng.integers(0, 3000)), grad=kinds[i % 3], offsets=(0, 0, i % 4, (i // 4) % 4))
        for i in range(2 * limits["max_accumulate_tensors"] + 9)
    ]
    tensors[3].numel = 0
    tensors[10] = T(100_003, "f32", offsets=(0, 0, 1, 0))
    run_and_check(runner, limits, tmp_path, "accumulate", tensors, chunk=chunk, overwrite=True, seed=31)


# ---------------------------------------------------------------- adamw_update


@pytest.mark.parametrize("bias_correction", [True, False], ids=["bias-corrected", "no-correction"])
@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_adamw_sizes(runner, limits, tmp_path, grad, bias_correction):
    tensors = [T(n, grad=grad, wd=0.01 * i) for i, n in enumerate(SIZES)]
    launches, vec, scal = run_and_check(
        runner, limits, tmp_path, "adamw", tensors, seed=40, hyper=adamw_hyper(bias_correction=bias_correction)
    )
    assert launches == 1 and scal == 1 + 3 + 1 + 3 and vec > 1_000_000


@pytest.mark.parametrize("step", [1, 1000])
@pytest.mark.parametrize("acc,grad", [(True, None), (False, "f32"), (False, "bf16"), (False, None)])
def test_adamw_acc_or_grad_absent(runner, limits, tmp_path, acc, grad, step):
    tensors = [T(n, grad=grad, acc=acc, wd=1e-2 * (i + 1)) for i, n in enumerate([0, 1, 3, 4097, 100_003])]
    run_and_check(runner, limits, tmp_path, "adamw", tensors, seed=41, hyper=adamw_hyper(step=step, lr=0.05))


def test_adamw_mixed_many_tensors(runner, limits, tmp_path):
    """Per-tensor weight decay, acc/grad presence and dtype, more tensors than one launch's struct
    holds in each group, random misalignment of every array (exp_avg_sq included)."""
    rng = np.random.default_rng(42)
    n = 3 * limits["max_adamw_tensors"] + 25
    tensors = []
    for i in range(n):
        grad = [None, "f32", "f16", "bf16"][int(rng.integers(0, 4))]
        tensors.append(
            T(
                int(rng.integers(0, 2500)),
                grad=grad,
                acc=bool(rng.integers(0, 2)) or grad is None,
                offsets=tuple(int(o) for o in rng.integers(0, 5, size=5)) if i % 2 else (0,) * 5,
                wd=float(rng.choice([0.0, 1e-4, 5e-2, 0.1])),
            )
        )
    tensors[3].numel = 0
    tensors[40] = T(1_000_003, "bf16", wd=1e-2)
    launches, _, _ = run_and_check(runner, limits, tmp_path, "adamw", tensors, seed=43)
    assert launches >= 5


@pytest.mark.parametrize("chunk", [4, 1001, 1024])
def test_adamw_chunks(runner, limits, tmp_path, chunk):
    """Small chunks: one tensor spans launches (the block table fills up mid-tensor); odd chunks
    start misaligned; chunk 4: one vector per block."""
    tensors = [T(n, grad=[None, "f32", "f16", "bf16"][n % 4], wd=0.01) for n in (1, 3, 4, 5, 9, 17, 4096, 10_007)]
    if chunk == 1024:
        tensors += [T(300_001, "f32", wd=0.1), T(50_000, "bf16"), T(64_000, None)]
    launches, _, _ = run_and_check(runner, limits, tmp_path, "adamw", tensors, chunk=chunk, seed=44)
    if chunk == 1024:
        assert launches >= 2


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_adamw_misaligned(runner, limits, tmp_path, which):
    offsets = [0, 0, 0, 0, 0]
    offsets[which] = 1
    tensors = [T(4097, "f32", offsets=tuple(offsets)), T(4097, "f16", offsets=tuple(offsets)), T(4097, "f32")]
    _, vec, scal = run_and_check(runner, limits, tmp_path, "adamw", tensors, seed=45)
    assert vec == 4096 and scal == 2 * 4097 + 1


# ---------------------------------------------------------------- launchers with host-side arguments
# The path of DLPack CUDA tensors from _C (python_bindings.cpp): scalars and weight decays from
# the host, uploaded by the launcher, on the tensors' device and the caller's stream. chunk=-1
# selects them in the runner, which also checks device switching, the stream of every launch and
# that every stream-ordered allocation is freed (tests/cpp/cuda_host_runner.cpp).
HOST_ARGS = -1


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("grad", ["f32", "f16", "bf16"])
def test_host_args_accumulate(runner, limits, tmp_path, grad, overwrite):
    tensors = [T(n, grad=grad, offsets=(0, 0, n % 4, 0)) for n in (0, 1, 5, 4097, 70_001)]
    run_and_check(runner, limits, tmp_path, "accumulate", tensors, chunk=HOST_ARGS, overwrite=overwrite, seed=50)


@pytest.mark.parametrize("nesterov", [False, True])
def test_host_args_momentum(runner, limits, tmp_path, nesterov):
    tensors = [
        T(n, grad=[None, "f32", "f16", "bf16"][i % 4], acc=i % 4 == 0 or i % 3 == 0, wd=0.01 * i)
        for i, n in enumerate((3, 4097, 70_001, 17, 0, 9))
    ]
    run_and_check(runner, limits, tmp_path, "momentum", tensors, chunk=HOST_ARGS, nesterov=nesterov, seed=51)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_host_args_adamw(runner, limits, tmp_path, bias_correction):
    tensors = [
        T(n, grad=[None, "f32", "f16", "bf16"][i % 4], acc=i % 4 == 0 or i % 3 == 0, wd=0.01 * i)
        for i, n in enumerate((3, 4097, 70_001, 17, 0, 9))
    ]
    run_and_check(
        runner,
        limits,
        tmp_path,
        "adamw",
        tensors,
        chunk=HOST_ARGS,
        seed=52,
        hyper=adamw_hyper(bias_correction=bias_correction),
    )


def test_host_args_squares_and_empty_calls(runner, limits, tmp_path):
    tensors = [T(n, grad=["f32", "f16", "bf16"][n % 3], acc=False) for n in (1, 4097, 70_001)]
    rc, launches, _ = run_squares(runner, limits, tmp_path, tensors, chunk=HOST_ARGS, seed=53)
    assert rc == 0 and launches == 2 + 2  # f16 and bf16 groups (counters checked by run_squares), two reductions
    # No element anywhere: no CUDA call at all (the runner checks it), so no GPU is needed.
    empty = [T(0, "f32", acc=False)]
    make_data(empty, np.random.default_rng(54), "squares")
    rc, launches, _, _, _, result, _ = run_case(runner, tmp_path, "squares", empty, (0.0, 0, 0, 0), HOST_ARGS)
    assert (rc, launches, result) == (0, 0, 0.0)
    launches, _, _ = run_and_check(
        runner, limits, tmp_path, "accumulate", [T(0, "f32")], chunk=HOST_ARGS, overwrite=False
    )
    assert launches == 0
