"""The multi-threaded CPU kernels (csrc/cpu/*.cpp: every vector ISA, the thread pool, fork
handling) under AddressSanitizer + UBSan and under ThreadSanitizer.

tests/cpp/cpu_kernels_sanitize.cpp links the kernel sources, compiled with the flags
CMakeLists.txt gives them plus the sanitizer's, and checks every result against a double
precision reference of the contract (see the top of that file for the scenarios). A sanitizer
report, a mismatch or a hang fails the test.
"""

import re
import subprocess

import pytest

from tests.build.sanitizer_build import ASAN_FLAGS, REPO, TSAN_FLAGS, build_with_cpu_kernels, compiler, run_checked
from tests.conftest import supported_isas

PROGRAM = REPO / "tests" / "cpp" / "cpu_kernels_sanitize.cpp"

# TSan kills a child that starts threads after a multi-threaded fork() (die_after_fork=1, its
# default: its own runtime state may be inconsistent there); the pool does exactly that by design,
# so the fork scenario runs with the override.
TSAN_ENV = {"TSAN_OPTIONS": "halt_on_error=1:second_deadlock_stack=1:die_after_fork=0"}

RACY = r"""
#include <thread>
int shared = 0;
int main() { std::thread t([] { shared++; }); shared++; t.join(); return shared == 2 ? 0 : 3; }
"""


def checks_of(proc):
    """(checks, elements, ISAs run) from the program's last line."""
    m = re.search(rb"ok checks=(\d+) elements=(\d+) isas=(\d+)", proc.stdout)
    assert m, proc.stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@pytest.fixture(scope="session")
def asan_program(tmp_path_factory):
    return build_with_cpu_kernels(tmp_path_factory.mktemp("cpu_asan"), PROGRAM, ASAN_FLAGS, "cpu_kernels_asan")


@pytest.fixture(scope="session")
def tsan_program(tmp_path_factory):
    """The program under TSan, after checking that TSan works here at all: a deliberately racy
    program must run and be reported (some kernels/compilers make TSan abort at start-up, e.g.
    "unexpected memory mapping" with high mmap ASLR entropy; the test then skips saying so)."""
    out = tmp_path_factory.mktemp("cpu_tsan")
    probe_src, probe = out / "racy.cpp", out / "racy"
    probe_src.write_text(RACY)
    build = subprocess.run(
        [compiler(), "-std=c++17", "-g", "-pthread", *TSAN_FLAGS, str(probe_src), "-o", str(probe)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build with -fsanitize=thread here: {build.stderr.strip()[-500:]}")
    run = subprocess.run([str(probe)], capture_output=True, text=True, timeout=120)
    if "WARNING: ThreadSanitizer: data race" not in run.stderr:
        pytest.skip(
            f"ThreadSanitizer does not work on this machine (exit {run.returncode}): {run.stderr.strip()[-500:]}"
        )
    return build_with_cpu_kernels(out, PROGRAM, TSAN_FLAGS, "cpu_kernels_tsan")


def test_cpu_kernels_under_asan_ubsan(asan_program):
    proc = run_checked(asan_program)
    checks, elements, isas = checks_of(proc)
    # Per ISA the program checks ~315 calls over ~20 M elements, plus ~230 calls that do not
    # depend on the ISA; CPUs without AVX-512 run two ISAs, not three.
    assert isas == len(supported_isas()), (isas, supported_isas())
    assert checks >= 300 * isas + 200 and elements >= 15_000_000 * isas, (checks, elements, isas)


def test_cpu_kernels_under_tsan(tsan_program):
    proc = run_checked(tsan_program, ["--quick"], env=TSAN_ENV)
    assert b"ThreadSanitizer" not in proc.stderr, proc.stderr.decode(errors="replace")
    checks, _, isas = checks_of(proc)
    assert isas == len(supported_isas()), (isas, supported_isas())
    assert checks >= 100 * isas + 50, (checks, isas)  # --quick: ~118 per ISA + ~60 others
