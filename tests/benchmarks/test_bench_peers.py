"""benchmarks/peers/bench_peers.py end to end on the tiny LM (--quick: GPT 1 x 32, context 32, 4 x 4):
every configuration runs in its own process from the same weights, the table lists all six, and
on windows whose micro-batches hold unequal numbers of real tokens our token-exact accumulation
equals the plain big batch while the mean-of-means peers (the tutorial's Accumulator and
mindspore.boost) do not."""

import json
import os
import re
import subprocess

from tests.repo import module_env, python_m

MODULE = "benchmarks.peers.bench_peers"
NAMES = {
    "big": "plain big batch",
    "ours": "ours (FusedAdamW)",
    "ours_msadamw": "ours (nn.AdamWeightDecay)",
    "boost": "mindspore.boost.GradientAccumulation",
    "tutorial": "tutorial Accumulator",
    "micro": "plain micro-batch",
}


def test_quick_lm(tmp_path):
    out = tmp_path / "peers.json"
    env = module_env(dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3"))
    p = subprocess.run(
        python_m(MODULE, "--quick", "--rounds", "1", "--models", "lm", "--json", str(out)),
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout
    assert "# machine:" in table and "MindSpore" in table and "load average at start" in table
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in NAMES.values():
            rows[cells[0]] = cells
    assert set(rows) == set(NAMES.values()), table
    assert "failed" not in table

    data = json.loads(out.read_text())
    (block,) = data["blocks"]
    runs = block["runs"]
    # the independent facts: the three windows of the distance hold unequal real-token counts ...
    for w in block["data"]["windows"][:3]:
        assert len(w["tokens"]) == 4 and len(set(w["tokens"])) > 1 and max(w["tokens"]) <= 4 * 32, w
    # ... every process started from the same weights and applied the expected number of updates
    (r0,) = runs["big"]
    for c in NAMES:
        (r,) = runs[c]
        assert "error" not in r, (c, r.get("error"))
        assert r["init_checksum"] == r0["init_checksum"], c
        assert r["optimizer_steps"] == (12 if c == "micro" else 3), c
        assert r["time_per_update_s"] > 0 and r["first_update_s"] > 0 and r["peak_rss_mib"] > 100
    dist = {c: runs[c][0].get("distance") for c in NAMES}
    assert dist["big"] is None and dist["micro"] is None
    assert dist["ours"] <= 1e-5 and dist["ours_msadamw"] <= 1e-5, dist
    assert dist["tutorial"] > 1e-4 and dist["boost"] > 1e-4, dist
    # the table prints what the JSON holds
    assert float(rows[NAMES["ours"]][5]) == float(f"{dist['ours']:.2e}")
    assert float(rows[NAMES["tutorial"]][5]) == float(f"{dist['tutorial']:.2e}")
    assert rows[NAMES["ours"]][2] == "1.00" and re.fullmatch(r"[\d.]+", rows[NAMES["tutorial"]][2])
