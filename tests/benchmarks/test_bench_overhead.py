"""benchmarks/overhead/bench_overhead.py end to end on a tiny MLP (width 64): every configuration runs in
its own process, the table and the JSON have their structure, the numbers are positive, the
floors are derived from the right processes, and ours equals the big batch after one update."""

import json
import os
import subprocess

import numpy as np

from tests.repo import module_env, python_m

MODULE = "benchmarks.overhead.bench_overhead"
CONFIGS = ("ours", "floor-time", "plain-micro", "plain-big")


def test_quick_mlp(tmp_path):
    out = tmp_path / "overhead.json"
    env = module_env(dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3"))
    p = subprocess.run(
        python_m(
            MODULE, "--quick", "--models", "mlp", "--mlp-width", "64", "--pynative-models", "", "--json", str(out)
        ),
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout
    assert "### mlp (GRAPH), 4 x 16, FusedMomentum, 24,960 parameters" in table
    for row in (
        "| ours: GradAccumCell 4 x 16 |",
        "| floor-time: 4 x grads-only graph + optimizer |",
        "| plain-micro: TrainOneStepCell 16 (4 updates) |",
        "| plain-big: TrainOneStepCell 64 |",
        "| **memory floor**: plain-micro + accumulators |",
        "| ours_peak / memory_floor |",
        "| ours_time / time_floor |",
        "#### breakdown, mlp (GRAPH)",
    ):
        assert row in table, row
    assert "(pass, tolerance" in table and "FAIL" not in table

    data = json.loads(out.read_text())
    assert data["args"]["rounds"] == 1 and data["machine"]["logical_cpus"] >= 1
    (block,) = data["blocks"]
    st = block["settings"]
    assert (st["model"], st["mode"], st["batch"], st["accum"], st["mlp_width"]) == ("mlp", "graph", 16, 4, 64)
    n_params = 6 * (64 * 64 + 64)
    windows = st["warmup"] + st["windows"] + 1  # + the breakdown window of round 1
    for name in CONFIGS:
        (run,) = block["runs"][name]
        assert run["n_params"] == n_params and run["accumulator_bytes"] == 4 * n_params
        for key in ("peak_rss_mib", "peak_steady_mib", "time_per_window_s", "first_step_s", "first_window_s"):
            assert run[key] > 0, (name, key, run[key])
        assert run["peak_rss_mib"] >= run["milestones"][0][1] > 100  # MindSpore alone is > 100 MiB
        assert len(run["window_s"]) == st["windows"] and all(t > 0 for t in run["window_s"])
        assert run["first_window_phases"] and run["steady_phases"]
        # every window applied exactly one optimizer step (plain-micro: one per micro-batch)
        assert run["global_step"] == windows * (st["accum"] if name == "plain-micro" else 1), name
    ours, floor = block["runs"]["ours"][0], block["runs"]["floor-time"][0]
    assert ours["skipped_updates"] == 0 and ours["micro_step_s"] > 0 and ours["last_call_s"] > 0
    assert all(ours["kernel_costs"][k] > 0 for k in ("accumulate_s", "accumulate_first_s", "sum_of_squares_s"))
    # the breakdown splits ours' last call into its two graphs: the window end is the last phase
    assert ours["steady_phases"][-1]["phase"] == "window end (window-end graph)"
    assert len(ours["call_times_s"][0]) == 4 and len(floor["call_times_s"][0]) == 5
    assert floor["time_floor_s"] == 4 * floor["grads_only_s"] + floor["optimizer_step_s"] > 0
    # accumulation floor: 8 + 3 x 12 + 4 = 48 B/element = 4 plain-loop passes of 12 B/element
    assert floor["kernel_costs"]["ceiling_s"] > 0
    assert abs(floor["accumulation_floor_s"] - (floor["time_floor_s"] + 4 * floor["kernel_costs"]["ceiling_s"])) < 1e-12
    # the floors come from the processes the issue names
    s = block["summary"]
    plain = block["runs"]["plain-micro"][0]
    assert abs(s["memory_floor_mib"] - (plain["peak_rss_mib"] + 4 * n_params / 2**20)) < 1e-6
    assert s["time_floor_s"] == floor["time_floor_s"]
    r = s["ratios"]["ours_peak / memory_floor"]
    assert r["per_round"] == [ours["peak_rss_mib"] / s["memory_floor_mib"]] and r["median"] > 0
    assert s["ratios"]["ours_time / time_floor"]["median"] > 0
    assert s["ratios"]["ours_time / accumulation_floor"]["per_round"] == [
        ours["time_per_window_s"] / floor["accumulation_floor_s"]
    ]
    assert "| **accumulation floor**: time floor + the accumulators' bytes" in table
    # lower quartiles of the calls (NumPy's percentile as the reference): every call but the
    # window's last, and the last call, per position
    o_calls, f_calls = np.array(ours["call_times_s"]), np.array(floor["call_times_s"])
    o_inner, o_last = np.percentile(o_calls[:, :-1], 25), np.percentile(o_calls[:, -1], 25)
    f_inner, f_last = np.percentile(f_calls[:, :-1], 25), np.percentile(f_calls[:, -1], 25)
    (micro_q,) = s["ratios"]["ours_micro_step / grads_only, lower quartiles of the calls"]["per_round"]
    assert abs(micro_q - o_inner / f_inner) < 1e-9 * micro_q
    extra = 4 * floor["kernel_costs"]["ceiling_s"]
    (window_q,) = s["ratios"]["ours_time / accumulation_floor, lower quartiles of the calls"]["per_round"]
    assert abs(window_q - (3 * o_inner + o_last) / (4 * f_inner + f_last + extra)) < 1e-9 * window_q
    assert "| ours_time / accumulation_floor, lower quartiles of the calls |" in table
    ex = block["exactness"]
    assert ex["passed"] and ex["updates_ours"] == 1 and ex["max_abs_update"] > 0
    assert ex["rel_to_update"] <= 1e-4
