"""Building and running the C++ test programs (shared by test_cuda_host.py, test_cpu_sanitizers.py,
test_aot.py and test_cuda_build.py): the compiler, sanitizer flags and options, the CPU kernel
sources with the flags CMakeLists.txt gives them (read from it, so the test build cannot drift
from the real one), and the test-only AOT library."""

import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"

ASAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
TSAN_FLAGS = ["-fsanitize=thread", "-fno-omit-frame-pointer"]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]

SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1",
}


def compiler():
    """The C++ compiler ($CXX or g++); skips the calling test when there is none."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or $CXX) to build the sanitizer test programs")
    return cxx


def compile_or_fail(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"building {what} failed:\n" + " ".join(map(str, cmd)) + "\n" + proc.stderr
    return proc


def run_checked(exe, args=(), env=None, timeout=600):
    """Runs a test program with the sanitizer options; fails the test on a non-zero exit."""
    env = {**os.environ, **SANITIZER_ENV, **(env or {})}
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, env=env, timeout=timeout)
    assert proc.returncode == 0, (
        f"{Path(str(exe)).name} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
        f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}"
    )
    return proc


def cpu_kernel_sources(repo=REPO):
    """[(source path, [flags], object name)] of the CPU kernels as CMakeLists.txt builds them: the
    msaccum_cpu sources, then the span-kernel source once per vector ISA (its msaccum_cpu_${isa}
    targets) with -DMSACCUM_ISA=<isa> and that ISA's flags."""
    text = (repo / "CMakeLists.txt").read_text()
    lib = re.search(r"add_library\(msaccum_cpu\s+(?:STATIC|OBJECT)\s+([^)]*)\)", text)
    assert lib, "CMakeLists.txt: add_library(msaccum_cpu OBJECT ...) not found"
    common = re.search(r"set\(MSACCUM_CPU_FLAGS\s+([^)]*)\)", text)
    assert common, "CMakeLists.txt: set(MSACCUM_CPU_FLAGS ...) not found"
    common_flags = [f for f in common.group(1).split() if not f.startswith("${")]
    out = [(repo / src, common_flags, Path(src).stem) for src in lib.group(1).split()]
    isa_src = re.search(r"add_library\(msaccum_cpu_\$\{isa\}\s+OBJECT\s+(\S+)\)", text)
    assert isa_src, "CMakeLists.txt: add_library(msaccum_cpu_${isa} OBJECT ...) not found"
    isas = re.findall(r'set\(MSACCUM_CPU_ISA_FLAGS_(\w+)\s+"([^"]*)"\)', text)
    assert {name for name, _ in isas} == {"baseline", "avx2", "avx512"}, isas
    for name, flags in isas:
        out.append(
            (
                repo / isa_src.group(1),
                common_flags + [f"-DMSACCUM_ISA={name}", *filter(None, flags.split(";"))],
                f"{Path(isa_src.group(1)).stem}_{name}",
            )
        )
    return out


def build_with_cpu_kernels(out_dir, main_source, sanitizer_flags, name, csrc=CSRC, repo=REPO, extra=()):
    """Compiles every CPU kernel source (its CMake flags + sanitizer flags) and `main_source`, in
    parallel, and links them into out_dir/name. `csrc`: the source tree (a patched copy for
    experiments)."""
    cxx = compiler()
    out_dir = Path(out_dir)
    base = ["-std=c++17", "-g", *WARNINGS, *sanitizer_flags, "-pthread", *extra]
    jobs = []
    for src, flags, stem in cpu_kernel_sources(repo):
        src = Path(csrc) / src.relative_to(repo / "csrc")
        obj = out_dir / (stem + ".o")
        jobs.append(([cxx, *base, *flags, "-c", str(src), "-o", str(obj)], obj))
    main_obj = out_dir / (Path(main_source).stem + ".o")
    jobs.append(([cxx, *base, "-O1", f"-I{csrc}", "-c", str(main_source), "-o", str(main_obj)], main_obj))
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: compile_or_fail(job[0], job[1].name), jobs))
    exe = out_dir / name
    compile_or_fail([cxx, *sanitizer_flags, "-pthread", *[str(o) for _, o in jobs], "-o", str(exe)], name)
    return exe


# The AOT entry points only the tests use (tests/cpp/aot_test_entries.cpp): not in the shipped
# libmsaccum_aot.so, but in a library the tests build against the installed kernel library.
TEST_AOT_ENTRIES = (
    "MsAccumMomentumUpdateAccGrad",
    "MsAccumMomentumUpdateAcc",
    "MsAccumAdamWUpdateAccGrad",
    "MsAccumAdamWUpdateAcc",
    "MsAccumZero",
)
AOT_TEST_SOURCE = REPO / "tests" / "cpp" / "aot_test_entries.cpp"


def build_aot_test_library(out_dir):
    """Builds out_dir/libmsaccum_aot_testing.so from tests/cpp/aot_test_entries.cpp (the frontend's
    aot_ops.h), linked to the installed package's libmsaccum_kernels.so (found by RPATH, so the
    process shares that one kernel library with _C), with the CUDA twins when the installed kernels
    have CUDA. Returns its path."""
    import mindspore_accum._C as C

    package = Path(C.__file__).resolve().parent
    kernels = package / "libmsaccum_kernels.so"
    assert kernels.is_file(), kernels
    out = Path(out_dir) / "libmsaccum_aot_testing.so"
    cuda = ["-DMSACCUM_WITH_CUDA"] if C.build_info()["cuda"] else []
    compile_or_fail(
        [
            compiler(),
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            "-fvisibility=hidden",
            *WARNINGS,
            *cuda,
            f"-I{CSRC}",
            str(AOT_TEST_SOURCE),
            str(kernels),
            f"-Wl,-rpath,{package}",
            "-o",
            str(out),
        ],
        "the test-only AOT library",
    )
    return out


@functools.lru_cache(maxsize=None)
def aot_test_library():
    """The test-only AOT library, built once per process (into a temporary folder removed at exit)."""
    folder = tempfile.mkdtemp(prefix="msaccum_aot_testing_")
    atexit.register(shutil.rmtree, folder, True)
    return build_aot_test_library(folder)


def aot_library(entry):
    """The library that holds the AOT entry point `entry` (or its Cuda twin): the shipped
    libmsaccum_aot.so, or the test-only library for TEST_AOT_ENTRIES."""
    if entry.removesuffix("Cuda") in TEST_AOT_ENTRIES:
        return aot_test_library()
    import mindspore_accum.kernels

    return Path(mindspore_accum.kernels.aot_library_path())
