"""The CUDA kernels build with nvcc for every configured architecture, warnings as errors.

Compiles csrc/cuda/cuda_kernels.cu (with multi_tensor_apply.cuh) the way CMakeLists.txt does (the
architecture list is read from it, or from $MSACCUM_CUDA_ARCHITECTURES like the build), then inspects the object with
cuobjdump: sm_75, sm_80 and sm_90 machine code and compute_75 PTX (the lowest listed architecture,
so any newer GPU can JIT it) must be there, and no kernel may use
local memory (spills) or a stack. Skipped only when there is no nvcc at all; with nvcc but
without cuobjdump the test fails and says where to get one.

When the installed extension itself was built with CUDA, its build_info() and the exported
AOT entry points are checked too (the shipped ones, and the Cuda twins of the test-only ones in the
library the tests build).
"""

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.build.sanitizer_build import TEST_AOT_ENTRIES, aot_test_library

REPO = Path(__file__).resolve().parents[2]
KERNELS = REPO / "csrc" / "cuda" / "cuda_kernels.cu"
REQUIRED_ELF = {"sm_75", "sm_80", "sm_90"}  # T4, A100, H100 machine code
REQUIRED_PTX = {"sm_75"}  # compute_75 PTX, JIT-compiled on newer GPUs; cuobjdump names it "<file>.sm_75.ptx"
# multi_tensor_kernel<Functor<Grad>>: one kernel per op functor and gradient type
KERNEL_NAMES = ("AccumulateFunctor", "MomentumUpdateFunctor", "AdamWUpdateFunctor", "SquaresFunctor")
GRAD_TYPES = ("GradF32", "GradF16", "GradBF16")


def find_nvcc():
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_cuobjdump(nvcc):
    candidates = [
        os.environ.get("CUOBJDUMP"),
        shutil.which("cuobjdump"),
        str(Path(nvcc).resolve().parent / "cuobjdump"),
        "/usr/local/cuda/bin/cuobjdump",
    ]
    try:  # the nvidia-cuda-cuobjdump wheel (pip install nvidia-cuda-cuobjdump)
        import nvidia  # namespace package

        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "*", "bin", "cuobjdump")))
            candidates += sorted(glob.glob(os.path.join(root, "*", "*", "bin", "cuobjdump")))
    except ImportError:
        pass
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def configured_architectures():
    env = os.environ.get("MSACCUM_CUDA_ARCHITECTURES")
    if env:
        return env
    text = (REPO / "CMakeLists.txt").read_text()
    m = re.search(r'set\(MSACCUM_CUDA_ARCHITECTURES\s+"([^"]+)"', text)
    assert m, "CMakeLists.txt no longer sets MSACCUM_CUDA_ARCHITECTURES"
    return m.group(1)


def gencode_flags(architectures):
    """CMake's CUDA_ARCHITECTURES syntax (80-real, 90-virtual, 90) -> nvcc -gencode flags."""
    flags = []
    for entry in architectures.split(";"):
        m = re.fullmatch(r"(\d+)(?:-(real|virtual))?", entry.strip())
        assert m, f"cannot read CUDA architecture {entry!r}"
        arch, kind = m.group(1), m.group(2)
        code = {"real": f"sm_{arch}", "virtual": f"compute_{arch}", None: f"[sm_{arch},compute_{arch}]"}[kind]
        flags += ["-gencode", f"arch=compute_{arch},code={code}"]
    return flags


@pytest.fixture(scope="module")
def tools():
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit): the CUDA build cannot be checked here")
    cuobjdump = find_cuobjdump(nvcc)
    if cuobjdump is None:
        pytest.fail(
            "nvcc exists but cuobjdump was not found: install the toolkit's cuobjdump, "
            "`pip install nvidia-cuda-cuobjdump`, or set CUOBJDUMP=/path/to/cuobjdump"
        )
    return nvcc, cuobjdump


@pytest.fixture(scope="module")
def cuda_object(tools, tmp_path_factory):
    nvcc, _ = tools
    obj = tmp_path_factory.mktemp("cuda_build") / "cuda_kernels.o"
    # The flags of CMakeLists.txt (C++17, -O3, -fPIC, warnings as errors in nvcc and the host
    # compiler), plus ptxas warnings as errors so a spill or local-memory use fails the build.
    cmd = [
        nvcc,
        "-std=c++17",
        "-O3",
        "-Xcompiler=-fPIC",
        "-Werror=all-warnings",
        "-Xcompiler=-Wall,-Wextra,-Werror",
        "-Xptxas=-warn-spills,-warn-lmem-usage,-Werror",
        *gencode_flags(configured_architectures()),
        "-c",
        str(KERNELS),
        "-o",
        str(obj),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, "nvcc failed:\n" + " ".join(cmd) + "\n" + proc.stdout + proc.stderr
    assert not proc.stderr.strip(), "nvcc printed diagnostics:\n" + proc.stderr
    return obj


def cuobjdump(tools, *args):
    proc = subprocess.run([tools[1], *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"cuobjdump {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


def test_machine_code_and_ptx_for_every_architecture(tools, cuda_object):
    elf = set(re.findall(r"\.(sm_\d+a?)\.cubin", cuobjdump(tools, "--list-elf", str(cuda_object))))
    ptx = set(re.findall(r"\.(sm_\d+a?)\.ptx", cuobjdump(tools, "--list-ptx", str(cuda_object))))
    assert REQUIRED_ELF <= elf, f"machine code for {sorted(elf)}; need {sorted(REQUIRED_ELF)}"
    assert REQUIRED_PTX <= ptx, f"PTX for {sorted(ptx)}; need compute_75"
    for entry in configured_architectures().split(";"):
        arch, _, kind = entry.strip().partition("-")
        if kind in ("", "real"):
            assert f"sm_{arch}" in elf, f"{entry}: no sm_{arch} machine code"
        if kind in ("", "virtual"):
            assert f"sm_{arch}" in ptx, f"{entry}: no compute_{arch} PTX"


def test_ptx_is_for_the_lowest_listed_architecture():
    """PTX runs on its architecture and every newer one: it must be the lowest listed one's."""
    entries = [e.strip() for e in configured_architectures().split(";")]
    archs = [int(e.partition("-")[0]) for e in entries]
    virtual = [int(e.partition("-")[0]) for e in entries if e.partition("-")[2] in ("", "virtual")]
    assert virtual and min(virtual) == min(archs), f"PTX for {virtual}, architectures {archs}"


def test_every_kernel_for_every_architecture_without_local_memory(tools, cuda_object):
    usage = cuobjdump(tools, "--dump-resource-usage", str(cuda_object))
    sections = re.split(r"arch = (sm_\d+a?)", usage)[1:]
    archs = dict(zip(sections[0::2], sections[1::2]))
    assert REQUIRED_ELF <= set(archs)
    for arch, text in archs.items():
        for kernel in KERNEL_NAMES:
            for grad in GRAD_TYPES:
                m = re.search(rf"Function \S*{kernel}\S*{grad}\S*:\s*\n\s*(REG:.*)", text)
                assert m, f"{arch}: {kernel}<{grad}> missing"
                fields = dict(kv.split(":") for kv in m.group(1).split())
                assert fields["STACK"] == "0" and fields["LOCAL"] == "0", f"{arch} {kernel}<{grad}>: {m.group(1)}"
                assert int(fields["SHARED"]) == 0, f"{arch} {kernel}<{grad}> uses shared memory"


def test_vectorised_loads_in_ptx(tools, cuda_object):
    ptx = cuobjdump(tools, "--dump-ptx", str(cuda_object))
    assert re.search(r"ld\.global(\.nc)?\.v4\.f32", ptx), "no float4 loads"
    assert re.search(r"ld\.global(\.nc)?\.v4\.u16", ptx), "no 4 x 16-bit gradient loads"
    assert re.search(r"st\.global\.v4\.f32", ptx), "no float4 stores"


def test_installed_extension_when_built_with_cuda():
    C = pytest.importorskip("mindspore_accum._C")
    info = C.build_info()
    if not info["cuda"]:
        pytest.skip("the installed extension was built without CUDA")
    assert info["cuda_architectures"] == configured_architectures()
    assert re.fullmatch(r"\d+\.\d+", info["cuda_runtime"]), info["cuda_runtime"]
    nvcc = find_nvcc()
    if nvcc:  # the static runtime linked in is the toolkit's
        release = re.search(
            r"release (\d+\.\d+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        )
        assert release and info["cuda_runtime"] == release.group(1)
    nm = shutil.which("nm")
    package = Path(C.__file__).resolve().parent
    aot, kernels = package / "libmsaccum_aot.so", package / "libmsaccum_kernels.so"
    if nm is None or not aot.is_file():
        pytest.skip("nm or libmsaccum_aot.so not found")
    symbols = subprocess.run([nm, "-D", "--defined-only", str(aot)], capture_output=True, text=True).stdout
    for name in ("MsAccumAccumulate", "MsAccumMomentumUpdate", "MsAccumAdamWUpdate", "MsAccumSumSquares"):
        for entry in (name, name + "Cuda"):
            assert re.search(rf"\bT {entry}$", symbols, re.M), f"{aot} does not export {entry}"
    for name in TEST_AOT_ENTRIES:  # test-only: not shipped, but built by the tests with their Cuda twins
        assert name not in symbols, f"{aot} exports the test-only entry {name}"
    testing = subprocess.run(
        [nm, "-D", "--defined-only", str(aot_test_library())], capture_output=True, text=True
    ).stdout
    for name in TEST_AOT_ENTRIES:
        assert re.search(rf"\bT {name}Cuda$", testing, re.M), f"the test-only library lacks {name}Cuda"
    # the kernels live in libmsaccum_kernels.so, shared with _C (tests/build/test_one_kernel_lib.py)
    assert "msaccum4cuda" not in symbols, "libmsaccum_aot.so defines msaccum::cuda functions of its own"
    exported = subprocess.run([nm, "-D", "--defined-only", str(kernels)], capture_output=True, text=True).stdout
    assert re.search(r"\bT _ZN7msaccum4cuda10accumulate", exported), "libmsaccum_kernels.so lacks msaccum::cuda"
    assert not re.search(r"\bT cuda[A-Z]", exported), "libmsaccum_kernels.so exports the static CUDA runtime"
    cuobj = find_cuobjdump(nvcc) if nvcc else None
    if cuobj:  # the device code is in the kernel library, for every architecture
        listing = subprocess.run([cuobj, "--list-elf", "--list-ptx", str(kernels)], capture_output=True, text=True)
        elf = set(re.findall(r"\.(sm_\d+a?)\.cubin", listing.stdout))
        ptx = set(re.findall(r"\.(sm_\d+a?)\.ptx", listing.stdout))
        assert REQUIRED_ELF <= elf and REQUIRED_PTX <= ptx, listing.stdout + listing.stderr
