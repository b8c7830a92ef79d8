"""The CUDA lamb_update / lars_update (csrc/cuda/cuda_kernels.cu) run on the host through
csrc/cuda/host_shim.h under AddressSanitizer and UBSan (tests/cpp/lamb_lars_host_runner.cpp),
against the float64 references of test_lamb_lars_kernels.py: small chunks, so tensors span
many blocks and launches (slot carry-over, block tables filling up), more tensors than one
norm-reduction launch takes (128), every gradient type, with and without accumulators."""

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.kernels.test_lamb_lars_kernels import BF16, ref_lamb, ref_lars

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
GRAD_TYPES = {"float32": 0, "float16": 1, "bfloat16": 2}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("lamb_lars_host") / "runner"
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fno-strict-aliasing",
        "-DMSACCUM_HOST_SHIM",
        "-include",
        str(CSRC / "cuda" / "host_shim.h"),
        f"-I{CSRC}",
        "-x",
        "c++",
        str(CSRC / "cuda" / "cuda_kernels.cu"),
        "-x",
        "none",
        str(REPO / "tests" / "cpp" / "lamb_lars_host_runner.cpp"),
        "-o",
        str(exe),
    ]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    return exe


def run(runner, tmp_path, op, tensors, hyper, chunk):
    """tensors: dicts with param, states (list), acc (or None), grad (or None), wd, lars."""
    case, result = tmp_path / "case.bin", tmp_path / "result.bin"
    with open(case, "wb") as f:
        f.write(struct.pack("<iiq8f", op, len(tensors), chunk, *(list(hyper) + [0.0] * (8 - len(hyper)))))
        for t in tensors:
            gt = -1 if t["grad"] is None else GRAD_TYPES[t["grad"].dtype.name]
            f.write(struct.pack("<qiiff", t["param"].size, gt, t["acc"] is not None, t["wd"], t["lars"]))
        for t in tensors:
            for a in [t["param"], *t["states"]] + [x for x in (t["acc"], t["grad"]) if x is not None]:
                f.write(np.ascontiguousarray(a).tobytes())
    done = subprocess.run(
        [str(runner), str(case), str(result)],
        capture_output=True,
        text=True,
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    raw = result.read_bytes()
    rc = struct.unpack_from("<i", raw)[0]
    pos, out = 4, []
    for t in tensors:
        arrays = []
        for _ in range(1 + len(t["states"]) + (t["acc"] is not None)):
            arrays.append(np.frombuffer(raw, np.float32, t["param"].size, pos).copy())
            pos += 4 * t["param"].size
        out.append(arrays)
    assert pos == len(raw)
    return rc, out


def tensors_for(rng, sizes, states, pattern):
    out = []
    for i, n in enumerate(sizes):
        kind = pattern[i % len(pattern)]
        dtype = {"f32": np.float32, "f16": np.float16, "bf16": BF16}[kind.split("+")[0]] if kind != "acc" else None
        if dtype is None and kind != "acc":
            pytest.skip("ml_dtypes is not installed")
        grad = rng.standard_normal(n).astype(dtype) if dtype is not None else None
        acc = rng.standard_normal(n).astype(np.float32) if kind == "acc" or kind.endswith("+acc") else None
        st = [(rng.standard_normal(n) * 0.1).astype(np.float32)]
        if states == 2:
            st.append(((rng.standard_normal(n) * 0.1) ** 2).astype(np.float32))
        summed = np.zeros(n) + (0 if acc is None else acc) + (0 if grad is None else grad.astype(np.float64))
        out.append(
            dict(
                param=rng.standard_normal(n).astype(np.float32),
                states=st,
                acc=acc,
                grad=grad,
                wd=0.01 * (i % 3),
                lars=float(i % 4 != 3),
                summed=summed,
            )
        )
    return out


PATTERN = ["f32", "f16+acc", "acc", "bf16", "f32+acc"]
SIZES = [0, 1, 3, 257, 1000, 4097, 129, 64] * 18  # 144 tensors: two norm-reduction launches


def close(actual, expected, what):
    err = np.max(np.abs(actual.astype(np.float64) - expected) / (1 + np.abs(expected)), initial=0.0)
    assert err <= 1e-5, f"{what}: {err:.3g}"


@pytest.mark.parametrize("chunk", [100, 4096])
def test_lamb_on_the_host_shim(runner, tmp_path, chunk):
    rng = np.random.default_rng(7)
    tensors = tensors_for(rng, SIZES, 2, PATTERN)
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-6, step=4, grad_scale=0.5)
    bc1, bc2 = 1 - 0.9**4, 1 - 0.999**4
    rc, out = run(runner, tmp_path, 0, tensors, [0.01, 0.9, 0.999, 1e-6, 0.5, bc1, bc2], chunk)
    assert rc == 0
    for i, t in enumerate(tensors):
        p, m, v, _ = ref_lamb(t["param"], *t["states"], t["summed"], weight_decay=t["wd"], **hyper)
        close(out[i][0], p, f"param[{i}]")
        close(out[i][1], m, f"exp_avg[{i}]")
        close(out[i][2], v, f"exp_avg_sq[{i}]")
        if t["acc"] is not None:
            assert not out[i][3].any()


@pytest.mark.parametrize("chunk", [100, 4096])
def test_lars_on_the_host_shim(runner, tmp_path, chunk):
    rng = np.random.default_rng(8)
    tensors = tensors_for(rng, SIZES, 1, PATTERN)
    hyper = dict(lr=0.1, momentum=0.9, grad_scale=0.5, coefficient=0.02, epsilon=1e-5)
    rc, out = run(runner, tmp_path, 1, tensors, [0.1, 0.9, 0.5, 0.02, 1e-5], chunk)
    assert rc == 0
    for i, t in enumerate(tensors):
        p, mom, _ = ref_lars(
            t["param"], t["states"][0], t["summed"], weight_decay=t["wd"], lars=bool(t["lars"]), **hyper
        )
        close(out[i][0], p, f"param[{i}]")
        close(out[i][1], mom, f"moment[{i}]")
        if t["acc"] is not None:
            assert not out[i][2].any()


def test_bad_input_launches_nothing(runner, tmp_path):
    rng = np.random.default_rng(9)
    tensors = tensors_for(rng, [10], 1, ["f32"])
    before = tensors[0]["param"].copy()
    rc, out = run(runner, tmp_path, 1, tensors, [0.1, 0.9, 0.5, 0.02, 1e-5], 0)  # chunk 0: invalid
    assert rc != 0 and np.array_equal(out[0][0], before)
