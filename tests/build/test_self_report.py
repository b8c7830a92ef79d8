"""`python -m mindspore_accum` (the self-report), run as a subprocess, against facts read here
independently: the version from the package metadata, the vector ISA from /proc/cpuinfo flags,
the thread count from the CPU affinity mask, CUDA from the build, the backends from choose_backend's
contract. Also without MindSpore and with an extension that cannot be imported."""

import importlib.metadata
import os
import subprocess
import sys
import warnings

import pytest

from tests.conftest import ISA_CPU_FLAGS
from tests.conftest import cpu_flags as read_cpu_flags

AVX512 = ISA_CPU_FLAGS["avx512"]
AVX2 = ISA_CPU_FLAGS["avx2"]


def cpu_flags():
    """This machine's flags, read independently of the report under test."""
    flags = read_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags")
    return flags


def run_report(prelude="", **env_changes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSACCUM_", "ONEDNN_"))}
    env.update(env_changes)
    if prelude:
        cmd = [
            sys.executable,
            "-c",
            prelude + "\nimport runpy; runpy.run_module('mindspore_accum', run_name='__main__')",
        ]
    else:
        cmd = [sys.executable, "-m", "mindspore_accum"]
    out = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


def line_starting(text, prefix):
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"no single line starting with {prefix!r} in:\n{text}"
    return lines[0]


def test_versions():
    text = run_report()
    assert line_starting(text, "mindspore_accum ").split()[1] == importlib.metadata.version("mindspore_accum")
    try:
        expected = importlib.metadata.version("mindspore")
    except importlib.metadata.PackageNotFoundError:
        expected = "not installed"
    assert line_starting(text, "MindSpore:") == f"MindSpore: {expected}"


def test_cpu_isa_threads_and_cuda():
    from mindspore_accum import _C

    flags = cpu_flags()
    expected_isa = "avx512" if AVX512 | {"fma", "f16c"} <= flags else "avx2" if AVX2 <= flags else "baseline"
    text = run_report()
    line = line_starting(text, "CPU kernels:")
    assert f"vector ISA {expected_isa}," in line
    assert f", {len(os.sched_getaffinity(0))} threads" in line
    # an environment cap is honoured and shown
    capped = run_report(MSACCUM_CPU_ISA="baseline", MSACCUM_NUM_THREADS="1")
    assert "vector ISA baseline (MSACCUM_CPU_ISA=baseline), 1 threads (MSACCUM_NUM_THREADS=1)" in line_starting(
        capped, "CPU kernels:"
    )
    info = _C.build_info()
    cuda = line_starting(text, "CUDA kernels:")
    if info["cuda"]:
        assert info["cuda_architectures"] and f"architectures {info['cuda_architectures']} " in cuda
    else:
        assert "not compiled in" in cuda


def test_backend_per_device_is_the_contract():
    from mindspore_accum.backends import choose_backend

    text = run_report()
    for device in ("CPU", "GPU", "Ascend"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend, reason = choose_backend("auto", device)
        line = line_starting(text, f"  {device} ")
        assert line.split()[:2] == [device, backend]
        assert line.endswith(reason)
    assert line_starting(text, "  Ascend ").split()[1] == "native"
    assert line_starting(text, "  CPU ").split()[1] == "kernels"


def test_onednn_advice_follows_the_cpu_and_the_environment():
    flags = cpu_flags()
    unset = line_starting(run_report(), "oneDNN:")
    set_ = line_starting(run_report(ONEDNN_MAX_CPU_ISA="AVX2"), "oneDNN:")
    if AVX512 <= flags:
        assert "set ONEDNN_MAX_CPU_ISA=AVX2" in unset and "NOT set" in unset
        assert "it is set to AVX2" in set_
    else:
        assert "no AVX-512" in unset and "ONEDNN_MAX_CPU_ISA" in unset and "set to AVX2" in set_


def test_without_mindspore_and_without_the_extension():
    text = run_report("import sys; sys.modules['mindspore'] = None; sys.modules['mindspore_accum._C'] = None")
    assert line_starting(text, "MindSpore:") == "MindSpore: not installed"
    assert "Compiled extension: cannot be imported" in text
    for device in ("CPU", "GPU", "Ascend"):
        line = line_starting(text, f"  {device} ")
        assert line.split()[1] == "native" and "cannot be imported" in line
    assert "CPU kernels:" not in text
    line_starting(text, "oneDNN:")
