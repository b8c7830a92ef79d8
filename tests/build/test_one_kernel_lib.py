"""One kernel library in the process (issue 17).

`_C` and `libmsaccum_aot.so` (the ops.Custom AOT entry points that MindSpore runs in GRAPH mode)
both link `libmsaccum_kernels.so`, found next to them through RPATH $ORIGIN. So a process has one
copy of the kernels: one thread pool (its workers are named "msaccum-pool"), one thread count and
one vector ISA, and `_C.set_num_threads` / `_C.set_vector_isa` govern the AOT ops too. (When the
kernels were linked statically into both, the AOT ops ran a second pool with its own settings.)

Each scenario runs in a fresh interpreter, so that the pool starts empty and nothing another test
did is counted; MSACCUM_NUM_THREADS=2 there (the default of any copy of the kernels).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mindspore_accum
from mindspore_accum import _C
from tests.conftest import supported_isas

# where the compiled files are (an editable install keeps them apart from the Python sources)
PACKAGE = Path(mindspore_accum._C.__file__).resolve().parent
KERNELS_SO = PACKAGE / "libmsaccum_kernels.so"
AOT_SO = PACKAGE / "libmsaccum_aot.so"

SCRIPT = textwrap.dedent(
    r"""
    import glob, json, os, sys
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    os.environ["GLOG_v"] = "3"
    import numpy as np

    def pool_threads():
        # threads of this process named by the kernels' pool (pthread_setname_np)
        names = []
        for comm in glob.glob("/proc/self/task/*/comm"):
            try:
                names.append(open(comm).read().strip())
            except OSError:  # a thread that just ended
                pass
        return names.count("msaccum-pool")

    def kernel_libraries():
        # every file mapped into this process whose name is a kernel library of ours
        paths = set()
        for line in open("/proc/self/maps"):
            path = line.split(maxsplit=5)[5].strip() if len(line.split(maxsplit=5)) == 6 else ""
            if "libmsaccum_kernels" in path:
                paths.add(os.path.realpath(path))
        return sorted(paths)

    from mindspore_accum import _C
    from mindspore_accum.backends import kernel
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)

    BIG = 8 * 32768 + 5  # enough elements for 8 threads (one per 32768)

    class Accumulate(nn.Cell):
        # acc += scale * grad through the AOT op, in a GRAPH-mode graph
        def __init__(self, acc):
            super().__init__()
            self.acc = acc
            self.op = kernel.custom_op("MsAccumAccumulate")

        def construct(self, scale, grad):
            return ops.depend(scale, self.op(scale, self.acc, grad))

    acc = Parameter(Tensor(np.zeros(BIG, np.float32)), name="acc")
    cell = Accumulate(acc)
    ones = Tensor(np.ones(BIG, np.float32))
    calls = {"n": 0}

    def aot_op():
        cell(Tensor(np.ones(1, np.float32)), ones).asnumpy()
        calls["n"] += 1
        assert float(acc.asnumpy()[BIG - 1]) == calls["n"], "the AOT op did not run"

    result = {"start": pool_threads()}
    scenario = sys.argv[1]
    if scenario == "one-pool":
        _C.set_num_threads(3)
        x = np.ones(BIG, np.float32)
        a = np.zeros_like(x)
        _C.accumulate([a], [x], 1.0)
        _C.sum_of_squares([x])
        result["after_C"] = pool_threads()
        aot_op()
        aot_op()
        result["after_aot"] = pool_threads()
        result["pool_workers"] = _C._pool_workers()
    elif scenario == "num-threads":
        # only the AOT op runs kernels here: the pool can only come from it
        for n in (1, 4):
            _C.set_num_threads(n)
            aot_op()
            result[f"threads_{n}"] = pool_threads()
        result["pool_workers"] = _C._pool_workers()
    elif scenario == "subnormals":
        # the pool's workers are started by the AOT op, on a thread of MindSpore's runtime; a later
        # call from Python must still see subnormal numbers on every thread (no flush-to-zero)
        _C.set_num_threads(2)
        aot_op()
        tiny = np.full(BIG, 1e-41, np.float32)  # subnormal
        a = np.zeros_like(tiny)
        _C.accumulate([a], [tiny], 1.0)
        result["zeros"] = int((a == 0).sum())
        result["expected"] = int((tiny == 0).sum())
        result["pool_workers"] = _C._pool_workers()
    elif scenario == "isa":
        for isa in json.loads(sys.argv[2]):
            _C.set_vector_isa(isa)
            before = {i: _C._kernel_calls(i) for i in ("avx512", "avx2", "baseline")}
            aot_op()
            result[isa] = {i: _C._kernel_calls(i) - before[i] for i in before}
    result["libraries"] = kernel_libraries()
    print("RESULT" + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    # GRAPH mode parses the Cell's source: it must be in a file, not `python -c`
    path = tmp_path_factory.mktemp("one_kernel_lib") / "scenario.py"
    path.write_text(SCRIPT)
    return path


def run_scenario(script, *args):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MS_CUSTOM_AOT_WHITE_LIST", "LD_LIBRARY_PATH", "MSACCUM_CPU_ISA")
    }
    env["MSACCUM_NUM_THREADS"] = "2"
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600, cwd="/"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def assert_one_kernel_library(result):
    """Exactly one kernel library was mapped into the process: the package's."""
    assert result["libraries"] == [str(KERNELS_SO.resolve())], result["libraries"]


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


@needs_proc
def test_one_thread_pool_for_C_and_graph_mode_aot_ops(script):
    """After `_C` kernels on 3 threads (2 pool workers) and then AOT ops in a GRAPH-mode graph,
    the process still has 2 pool threads: the AOT ops used the same pool (a second copy of the
    kernels would have started its own worker for its default of 2 threads)."""
    r = run_scenario(script, "one-pool")
    assert r["start"] == 0, r
    assert r["after_C"] == 2, r
    assert r["after_aot"] == 2, f"the AOT ops started threads of their own: {r}"
    assert r["pool_workers"] == 2, r
    assert_one_kernel_library(r)


@needs_proc
def test_set_num_threads_governs_graph_mode_aot_ops(script):
    """_C.set_num_threads(1): the AOT op runs on the caller alone (no pool thread, although the
    default is 2); _C.set_num_threads(4): it runs on 4 threads (3 pool workers)."""
    r = run_scenario(script, "num-threads")
    assert r["start"] == 0, r
    assert r["threads_1"] == 0, f"with _C.set_num_threads(1) the AOT op used pool threads: {r}"
    assert r["threads_4"] == 3, f"with _C.set_num_threads(4) the AOT op did not use 4 threads: {r}"
    assert r["pool_workers"] == 3, r
    assert_one_kernel_library(r)


@needs_proc
def test_pool_started_by_mindspore_keeps_the_callers_subnormals(script):
    """Workers adopt each caller's floating-point state: a pool started from MindSpore's runtime
    (which may run with flush-to-zero) must not flush a later Python caller's subnormals."""
    r = run_scenario(script, "subnormals")
    assert r["pool_workers"] == 1, r
    assert r["zeros"] == r["expected"] == 0, f"{r['zeros']} subnormal sums flushed to zero"


def test_set_vector_isa_governs_graph_mode_aot_ops(script):
    """After _C.set_vector_isa(isa), one AOT op is one kernel call on that ISA's span kernels, as
    counted by the kernel library `_C` reads (every ISA this CPU has)."""
    isas = supported_isas()
    r = run_scenario(script, "isa", json.dumps(isas))
    for isa in isas:
        assert r[isa] == {i: int(i == isa) for i in ("avx512", "avx2", "baseline")}, (isa, r)
    assert_one_kernel_library(r)


# ---------------------------------------------------------------- the installed files


def readelf_dynamic(path):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) not found")
    return subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("user", ["_C", "libmsaccum_aot.so"])
def test_users_need_the_kernel_library_and_find_it_by_origin(user):
    path = Path(_C.__file__) if user == "_C" else AOT_SO
    dynamic = readelf_dynamic(path)
    assert "[libmsaccum_kernels.so]" in dynamic, dynamic
    search = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[([^\]]*)\]", dynamic)
    assert search and search[0].split(":") == ["$ORIGIN"], dynamic


def test_kernel_library_soname_and_exports():
    """libmsaccum_kernels.so exports the msaccum API and nothing else: not the per-ISA span
    kernels, not standard-library instantiations, not the static CUDA runtime."""
    assert KERNELS_SO.is_file()
    assert "(SONAME)             Library soname: [libmsaccum_kernels.so]" in readelf_dynamic(KERNELS_SO)
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    out = subprocess.run(
        [nm, "-D", "--defined-only", "-C", str(KERNELS_SO)], capture_output=True, text=True, check=True
    ).stdout
    symbols = [line.split(" ", 2)[2] for line in out.splitlines() if line.count(" ") >= 2]
    names = {s.split("(")[0] for s in symbols}
    others = sorted(s for s in symbols if not s.startswith(("msaccum::cpu::", "msaccum::cuda::")))
    assert not others, f"exported beyond the msaccum API: {others[:10]}"
    for name in (
        "accumulate",
        "momentum_update",
        "sum_of_squares",
        "set_num_threads",
        "set_vector_isa",
        "num_threads",
        "vector_isa",
        "pool_workers",
        "kernel_calls",
    ):
        assert f"msaccum::cpu::{name}" in names, name
    assert not any("span_kernels" in s or "isa_" in s for s in names), sorted(names)
    if _C.build_info()["cuda"]:
        assert "msaccum::cuda::accumulate" in names and "msaccum::cuda::sum_of_squares" in names
    for user in (Path(_C.__file__), AOT_SO):  # and the users do not carry kernels of their own
        defined = subprocess.run([nm, "--defined-only", "-C", str(user)], capture_output=True, text=True).stdout
        assert "msaccum::cpu::sum_of_squares" not in defined and "span_kernels" not in defined, user
