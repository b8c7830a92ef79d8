"""benchmarks/overhead/bench_default_mode.py: end to end on a tiny GPT (seconds a process), and
its parity check on made-up weights.

End to end: every contender ran in its own process, round by round; each made the updates it
should (a plain step one per call, an accumulating one per window); the micro-step, update and
ratio figures are recomputed here from the raw call times (medians of per-round ratios, not
ratios of medians); the accumulating contenders' weights equal the big batch's (parity)."""

import json
import os
import statistics
import subprocess

import numpy as np
import pytest

import mindspore_accum
from benchmarks.overhead import bench_default_mode as bench
from tests.repo import module_env, python_m

MODULE = "benchmarks.overhead.bench_default_mode"
N, B, WINDOWS, ROUNDS = 3, 4, 2, 2
TINY = ["--gpt-layers", "1", "--gpt-d-model", "32", "--gpt-heads", "2", "--gpt-seq", "16"]


def test_tiny_gpt_end_to_end(tmp_path):
    out, page = tmp_path / "run.json", tmp_path / "page.md"
    args = ["--models", "gpt", *TINY, "--batch", str(B), "--accum", str(N), "--rounds", str(ROUNDS)]
    args += ["--windows", str(WINDOWS), "--json", str(out), "--report", str(page)]
    p = subprocess.run(
        python_m(MODULE, *args),
        cwd=str(tmp_path),
        env=module_env(dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    has_accumulator = hasattr(mindspore_accum, "GradAccumulator")
    (block,) = json.loads(out.read_text())["blocks"]
    runs = block["runs"]
    assert bool(runs["accumulator"]) == has_accumulator
    present = [c for c in ("tutorial", "trainonestep", "cell", "accumulator") if runs[c]]

    # each contender: ROUNDS processes, each a first window + WINDOWS timed windows of N calls
    for c in present:
        assert len(runs[c]) == ROUNDS, c
        for r in runs[c]:
            assert len(r["first_calls_s"]) == N and len(r["call_times_s"]) == WINDOWS
            assert all(len(w) == N and min(w) > 0 for w in r["call_times_s"])
            per_window = 1 if c in ("cell", "accumulator") else N
            assert r["updates"] == per_window * (1 + WINDOWS), (c, r["updates"])
            calls = r["call_times_s"]
            assert r["micro_step_s"] == pytest.approx(statistics.median(t for w in calls for t in w[:-1]))
            assert r["update_s"] == pytest.approx(statistics.median(sum(w) for w in calls))
            assert r["first_window_s"] == pytest.approx(sum(r["first_calls_s"]))
            cpu = r["cpu_call_times_s"]
            assert len(cpu) == WINDOWS and all(len(w) == N and min(w) >= 0 for w in cpu)
            assert r["cpu_update_s"] == pytest.approx(statistics.median(sum(w) for w in cpu)) and r["cpu_update_s"] > 0

    # ratios: the median over rounds of the ratio inside each round
    summary = block["summary"]["contenders"]
    for c in present:
        for key, ref, ratio in (
            ("micro_step_s", "tutorial", "micro_step / tutorial"),
            ("update_s", "tutorial", "update / tutorial"),
            ("first_window_s", "trainonestep", "first_window / trainonestep"),
        ):
            per = [a[key] / b[key] for a, b in zip(runs[c], runs[ref])]
            got = summary[c]["ratios"][ratio]
            assert got["per_round"] == pytest.approx(per) and got["median"] == pytest.approx(statistics.median(per))
        if c in ("cell", "accumulator"):
            r = summary[c]["ratios"]
            assert summary[c]["targets"] == {
                "micro_step": r["micro_step / tutorial"]["median"] <= 1.05,
                "update": r["update / tutorial"]["median"] <= 1.05,
                "first_window": r["first_window / trainonestep"]["median"] <= 1.5,
            }

    # parity: the accumulating contenders equal the big batch after 2 updates
    parity = block["parity"]
    assert sorted(parity) == sorted(c for c in ("cell", "accumulator") if runs[c])
    for c, v in parity.items():
        assert v["passed"] and v["updates"] == 2 and v["rel_to_weights"] <= 1e-5, (c, v)

    # the table: a header row, a row per contender with its median micro-step, parity rows
    text = p.stdout
    assert "| contender | micro-step (ms) | × tutorial | update: 3 micro-batches (ms) |" in text
    assert "| contender | micro-step CPU (ms) | × tutorial | update CPU: 3 micro-batches (ms) | × tutorial |" in text
    assert (
        "### GPT (examples/gpt_lm: 1 layers, d_model 32, 2 heads, context 16), micro-batch 4 sequences, N = 3" in text
    )
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "(ms)" not in ln]
    for c in present:
        label = bench.LABELS[c].format(plain="nn.Momentum", fused="FusedMomentum")
        (row,) = [ln for ln in rows if ln.startswith(f"| {label} |")]
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert len(cells) == 8 and float(cells[1]) == pytest.approx(summary[c]["micro_step_s"] * 1e3, abs=0.051)
    if not has_accumulator:
        assert "in the user's `@ms.jit` step: not in this build |" in text
    assert text.count("| pass (tolerance 1e-05 x max abs(w)) |") == len(parity) and "FAIL" not in text
    assert "Intel" in text or "AMD" in text or "Machine:" in text
    assert page.read_text().startswith("# The default mode at compiled speed") and "--rounds 2" in page.read_text()


def test_parity_check_flags_weights_off_the_big_batch(tmp_path, monkeypatch):
    """The parity check itself, on weights written here: a contender 2e-5 x max|w| off the big
    batch fails, one 1e-6 off passes, one that made the wrong number of updates fails."""
    rs = np.random.RandomState(0)
    init = {"w": rs.randn(4, 3).astype(np.float32), "b": rs.randn(3).astype(np.float32)}
    big = {k: v - 0.1 for k, v in init.items()}
    w_max = max(float(np.max(np.abs(v))) for v in big.values())
    off = {"cell": 2e-5 * w_max, "accumulator": 1e-6 * w_max, "cell-eager": 0.0}
    updates = {"big": 2, "cell": 2, "accumulator": 2, "cell-eager": 1}

    def fake_child(cfg, timeout):
        c = cfg["contender"]
        final = big if c == "big" else {k: (v.astype(np.float64) + off[c]).astype(np.float32) for k, v in big.items()}
        np.savez(cfg["weights_out"], **{"init:" + k: v for k, v in init.items()}, **final)
        return {"updates": updates[c]}

    monkeypatch.setattr(bench, "run_child", fake_child)
    contenders = ["tutorial", "cell", "cell-eager", "accumulator"]
    block = {
        "settings": dict(model="gpt", optimizer="momentum", parity_updates=2),
        "contenders": contenders,
        "runs": {c: [{}] for c in contenders},
    }
    got = bench.parity(block, str(tmp_path), timeout=1)
    assert {c: v["passed"] for c, v in got.items()} == {"cell": False, "accumulator": True, "cell-eager": False}
    assert got["cell"]["rel_to_weights"] == pytest.approx(2e-5, rel=0.05)
