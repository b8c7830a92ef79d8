"""The GPU check (benchmarks/gpu/check.py) runs its CPU path in CI, so it cannot rot before a
GPU is lent: parity of the three window-end ops against PyTorch and a float64 reference, the
in-place guarantee, and the bandwidth/report code, on PyTorch CPU tensors through DLPack.

PyTorch is a test requirement: with MSACCUM_REQUIRE_TORCH set (CI) a missing torch fails."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("MSACCUM_REQUIRE_TORCH"):
    import torch  # noqa: F401
else:
    pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_quick(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu.check", "--device", "cpu", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["parity_ok"] and report["environment"]["device"] == "cpu"
    parity = report["parity"]
    assert {(r["op"], r["grad"]) for r in parity if r["op"] != "sum_of_squares"} == {
        (op, g) for op in ("accumulate", "momentum", "adamw") for g in ("fp32", "fp16", "bf16")
    }
    for r in parity:
        assert r["ok"], r
        if r["op"] != "sum_of_squares":
            assert r["in_place"] and r["grad_untouched"] and r["ours_vs_ref"] <= 1e-6
            assert r["torch"], "no PyTorch comparison ran"
            assert all(v["ours_vs_torch"] <= 1e-6 for v in r["torch"].values())
    assert max(r["tensors"] for r in parity) >= 40
    assert report["memcheck"] == {"ran": False, "why": "not on a GPU"}
    ops = {e["op"] for e in report["bandwidth"]}
    assert ops == {"accumulate", "momentum", "adamw"}
    for e in report["bandwidth"]:
        assert e["ours_s"] > 0 and e["torch_best"] and e["speedup_vs_torch_best"] > 0
    assert report["copy_bandwidth_Bps"] > 0
    assert "| set | op | grad |" in proc.stdout and "AdamW window end" in proc.stdout
