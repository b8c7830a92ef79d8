"""benchmarks/overhead/call_modes_mlp.py on a tiny MLP: one process per graph, the table's rows, quartiles
in order, and a clear error for a bad argument."""

import os
import subprocess

from tests.repo import module_env, python_m

MODULE = "benchmarks.overhead.call_modes_mlp"
ENV = module_env(dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3"))


def test_tiny_mlp_table(tmp_path):
    p = subprocess.run(
        python_m(MODULE, "--rounds", "1", "--calls", "8", "--width", "64", "--slow-ms", "0"),
        cwd=str(tmp_path),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in p.stdout.splitlines() if line.startswith("| 1 |")]
    assert [r[1].strip() for r in rows] == ["grads-only", "grads-only + accumulate", "ours micro-step"]
    for r in rows:
        median, p25, p75 = (float(r[i]) for i in (2, 3, 4))
        assert 0 < p25 <= median <= p75
        assert r[5].strip() == "100 %"  # --slow-ms 0: every call counts as slow
        assert r[6].strip().startswith("nan / ")  # no fast call to average


def test_bad_argument_names_it(tmp_path):
    p = subprocess.run(
        python_m(MODULE, "--calls", "0"), cwd=str(tmp_path), env=ENV, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "--calls must be >= 1, got 0" in p.stderr
