"""Building and running the C++ test programs under sanitizers (shared by test_cuda_host.py and
test_cpu_sanitizers.py): the compiler, sanitizer flags and options, and the CPU kernel sources
with the per-file flags CMakeLists.txt gives them (read from it, so the test build cannot drift
from the real one)."""
import os
import re
import shutil
import subprocess
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
    assert proc.returncode == 0, (f"{Path(str(exe)).name} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                  f"{proc.stdout.decode(errors='replace')}\n{proc.stderr.decode(errors='replace')}")
    return proc


def cpu_kernel_sources(repo=REPO):
    """[(source path, [flags])] of the msaccum_cpu library, as CMakeLists.txt builds it."""
    text = (repo / "CMakeLists.txt").read_text()
    lib = re.search(r"add_library\(msaccum_cpu\s+(?:STATIC|OBJECT)\s+([^)]*)\)", text)
    assert lib, "CMakeLists.txt: add_library(msaccum_cpu OBJECT ...) not found"
    sources = lib.group(1).split()
    common = re.search(r"target_compile_options\(msaccum_cpu\s+PRIVATE\s+([^)]*)\)", text)
    common_flags = [f for f in common.group(1).split() if not f.startswith("${")] if common else []
    per_file = {}
    for m in re.finditer(r'set_source_files_properties\((\S+)\s+PROPERTIES\s+COMPILE_OPTIONS\s+"([^"]*)"', text):
        per_file[m.group(1)] = m.group(2).split(";")
    assert any("avx512" in " ".join(f) for f in per_file.values()), "per-ISA flags not found in CMakeLists.txt"
    return [(repo / src, common_flags + per_file.get(src, [])) for src in sources]


def build_with_cpu_kernels(out_dir, main_source, sanitizer_flags, name, csrc=CSRC, repo=REPO, extra=()):
    """Compiles every CPU kernel source (its CMake flags + sanitizer flags) and `main_source`, in
    parallel, and links them into out_dir/name. `csrc`: the source tree (a patched copy for
    experiments)."""
    cxx = compiler()
    out_dir = Path(out_dir)
    base = ["-std=c++17", "-g", *WARNINGS, *sanitizer_flags, "-pthread", *extra]
    jobs = []
    for src, flags in cpu_kernel_sources(repo):
        src = Path(csrc) / src.relative_to(repo / "csrc")
        obj = out_dir / (src.stem + ".o")
        jobs.append(([cxx, *base, *flags, "-c", str(src), "-o", str(obj)], obj))
    main_obj = out_dir / (Path(main_source).stem + ".o")
    jobs.append(([cxx, *base, "-O1", f"-I{csrc}", "-c", str(main_source), "-o", str(main_obj)], main_obj))
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: compile_or_fail(job[0], Path(job[0][-3]).name), jobs))
    exe = out_dir / name
    compile_or_fail([cxx, *sanitizer_flags, "-pthread", *[str(o) for _, o in jobs], "-o", str(exe)], name)
    return exe
