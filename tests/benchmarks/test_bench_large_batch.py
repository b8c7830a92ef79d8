"""benchmarks/kernels/bench_large_batch.py --quick: the LAMB and LARS rows for both parameter
sets, the parity check against PyTorch and the float64 reference passed, finite ratios."""

import json
import math
import os
import subprocess

import pytest

from tests.repo import module_env, python_m

pytest.importorskip("torch")

MODULE = "benchmarks.kernels.bench_large_batch"


def test_quick_rows_parity_and_ratios(tmp_path):
    out = tmp_path / "out.json"
    p = subprocess.run(
        python_m(MODULE, "--quick", "--json", str(out)),
        cwd=str(tmp_path),
        env=module_env(dict(os.environ, GLOG_v="3")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "parity check passed" in p.stdout
    report = json.loads(out.read_text())
    assert report["parity_passed"]
    for errs in report["parity"].values():
        # ours within 1e-5 of float64; PyTorch's sequence within 1e-4 (bench_large_batch.TORCH_TOL)
        assert errs and all(v <= (1e-4 if k.startswith("torch") else 1e-5) for k, v in errs.items()), errs
    rows = report["results"]
    got = {(r["op"], r["set"], r["contender"].split(":")[0].split(" ")[0]) for r in rows}
    assert got == {
        (op, s, c) for op in ("lamb", "lars") for s in ("resnet50", "gpt") for c in ("ceiling", "ours", "pytorch")
    }
    for r in rows:
        assert r["bytes_per_element"] == {"lamb": 40, "lars": 28}[r["op"]]
        assert r["median_ms"] > 0 and math.isfinite(r["gbps"]) and r["gbps"] > 0
        assert math.isfinite(r["vs_ceiling"]) and r["vs_ceiling"] > 0
        assert r["finite"]
        if r["contender"].startswith("ours"):
            assert math.isfinite(r["ours_x_torch"]) and r["ours_x_torch"] > 0
    # the markdown table: a header and 12 rows
    table = [ln for ln in p.stdout.splitlines() if ln.startswith("| LAMB") or ln.startswith("| LARS")]
    assert len(table) == 12
