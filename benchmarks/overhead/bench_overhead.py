#!/usr/bin/env python
"""What accumulation costs beyond its accumulators (issue 16): GradAccumCell against its floors.

For each model, four configurations, each in its OWN process (peak RSS is per process),
alternated round by round (A B C D, A B C D, ...):

* ``ours``        GradAccumCell, N micro-batches of B per update;
* ``floor-time``  N x a forward+backward graph at batch B that only returns the gradients (a
                  top-level ``nn.Cell``; PYNATIVE: eager ``value_and_grad``) + one plain call of the
                  same optimizer on the last gradients;
* ``plain-micro`` ``nn.TrainOneStepCell`` at batch B with the same optimizer (the memory floor's base);
* ``plain-big``   ``nn.TrainOneStepCell`` at batch N*B with the same optimizer.

Derived, per round: memory floor = plain-micro's peak RSS + the accumulators (4 B x parameters);
time floor = N x median(grads-only) + median(optimizer step), both from the floor-time process;
accumulation floor = time floor + the bytes any accumulation must move per window (each gradient
read, each accumulator written, and read again after the first micro-batch; the window-end check
reads it once) at the speed of a plain ``a += s * b`` loop timed in the floor-time process.
The time floor accumulates nothing: where a model's backward is short against its parameter
bytes (the MLP), no accumulation can reach it; the accumulation floor is what one can.
Reported: medians over rounds and the median of the per-round ratios ours / floor; and the same
ratios on the lower quartile of each call position, because on 2 vCPUs MindSpore's runtime
threads spin on sched_yield and a random 20-50 % of its calls take +20 ms of system time, so a
median can land in either mode from one process to the next.
The worker (one configuration in one process) is benchmarks/overhead/overhead_worker.py.

Models: ``resnet50`` (examples/resnet50_cifar10/model.py, CIFAR shapes, 32 x 4, FusedMomentum), ``mlp``
(6 x Dense(W, W) with ReLU, W = 2048: 25.2 M parameters, 16 x 4, FusedMomentum), ``gpt`` (the
GPT-like LM of examples/gpt_lm/model.py when it exists, FusedAdamW). ``--pynative-models`` repeats
models in PYNATIVE mode. For BatchNorm-free models a separate process checks that ours and the
big batch give the same update (exactness).

    python -m benchmarks.overhead.bench_overhead --rounds 3               # all models, GRAPH + MLP in PYNATIVE
    python -m benchmarks.overhead.bench_overhead --quick --models mlp --mlp-width 64 --pynative-models ''

Every time is wall time around calls whose results are read back (``asnumpy``), so the work has
finished. ``ONEDNN_MAX_CPU_ISA=AVX2`` is set before MindSpore is imported in every process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

from benchmarks.common.rounds import median as _median
from benchmarks.common.rounds import module_command, per_round_ratios, rounds, run_worker

WORKER = "benchmarks.overhead.overhead_worker"
MIB = 1024.0 * 1024.0

CONFIGS = ("ours", "floor-time", "plain-micro", "plain-big")
# micro-batch, accumulation steps, optimizer, timed windows per process (one untimed window first)
MODELS = {
    "resnet50": dict(batch=32, accum=4, optimizer="momentum", windows=2, bn_free=False),
    # 30-ms calls: more windows, so the median is not one of MindSpore's slow calls after compiling
    "mlp": dict(batch=16, accum=4, optimizer="momentum", windows=20, bn_free=True),
    "gpt": dict(batch=8, accum=4, optimizer="adamw", windows=3, bn_free=True),
}


# ============================================================================ the driver


def run_child(cfg: dict, timeout: float) -> dict:
    try:
        run = run_worker(module_command(WORKER, json.dumps(cfg)), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"bench_overhead: {cfg['model']}/{cfg['mode']}/{cfg['config']} timed out after {timeout:.0f} s"
        ) from None
    if run.result is None:
        sys.stderr.write(run.proc.stderr[-6000:])
        raise SystemExit(
            f"bench_overhead: {cfg['model']}/{cfg['mode']}/{cfg['config']} failed (exit code {run.proc.returncode})"
        )
    out = run.result
    out["process_wall_s"] = run.wall_s
    try:
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return out


def _quartile(xs):
    """The 25th percentile (linear interpolation, as NumPy's default)."""
    xs = sorted(xs)
    pos = 0.25 * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def _fast_calls(run: dict) -> dict:
    """25th percentiles of a process's timed calls, per position: the micro-steps (ours) or
    grads-only calls (floor-time) -- every call but the window's last -- and the last call (ours:
    micro-step + window end; floor-time: the optimizer step). On 2 vCPUs MindSpore's runtime
    threads spin (sched_yield) and a random share of its calls takes +20 ms of system time; the
    lower quartile compares the calls that escaped it, where a median can fall either side."""
    calls = run["call_times_s"]
    return {
        "inner": _quartile([t for times in calls for t in times[:-1]]),
        "last": _quartile([times[-1] for times in calls]),
    }


def summarise(block: dict) -> dict:
    """Medians over rounds and medians of per-round ratios."""
    runs = block["runs"]
    rounds = len(runs["ours"])
    acc_mib = runs["ours"][0]["accumulator_bytes"] / MIB
    s = {"accumulator_mib": acc_mib, "n_params": runs["ours"][0]["n_params"], "rounds": rounds}
    for name in CONFIGS:
        rs = runs[name]
        s[name] = {
            k: _median([r[k] for r in rs])
            for k in (
                "peak_rss_mib",
                "peak_steady_mib",
                "peak_first_windows_mib",
                "time_per_window_s",
                "first_step_s",
                "first_window_s",
            )
        }
    s["floor-time"].update(
        grads_only_s=_median([r["grads_only_s"] for r in runs["floor-time"]]),
        optimizer_step_s=_median([r["optimizer_step_s"] for r in runs["floor-time"]]),
        time_floor_s=_median([r["time_floor_s"] for r in runs["floor-time"]]),
        accumulation_floor_s=_median([r["accumulation_floor_s"] for r in runs["floor-time"]]),
    )
    s["ours"].update(
        micro_step_s=_median([r["micro_step_s"] for r in runs["ours"]]),
        last_call_s=_median([r["last_call_s"] for r in runs["ours"]]),
    )
    mem_floor = [p["peak_rss_mib"] + acc_mib for p in runs["plain-micro"]]
    steady_floor = [
        None if p["peak_steady_mib"] is None else p["peak_steady_mib"] + acc_mib for p in runs["plain-micro"]
    ]
    s["memory_floor_mib"] = _median(mem_floor)
    s["steady_memory_floor_mib"] = _median(steady_floor)
    s["time_floor_s"] = s["floor-time"]["time_floor_s"]

    def ratios(num, den):
        out = per_round_ratios(num, den)
        return {"median": _median(out), "per_round": out}

    ours = runs["ours"]
    s["ratios"] = {
        "ours_peak / memory_floor": ratios([r["peak_rss_mib"] for r in ours], mem_floor),
        "ours_steady_peak / steady_memory_floor": ratios([r["peak_steady_mib"] for r in ours], steady_floor),
        "ours_time / time_floor": ratios(
            [r["time_per_window_s"] for r in ours], [r["time_floor_s"] for r in runs["floor-time"]]
        ),
        "ours_time / accumulation_floor": ratios(
            [r["time_per_window_s"] for r in ours], [r["accumulation_floor_s"] for r in runs["floor-time"]]
        ),
        "ours_time / floor-time_window": ratios(
            [r["time_per_window_s"] for r in ours], [r["time_per_window_s"] for r in runs["floor-time"]]
        ),
        "ours_time / plain-micro_window": ratios(
            [r["time_per_window_s"] for r in ours], [r["time_per_window_s"] for r in runs["plain-micro"]]
        ),
        "ours_peak / plain-big_peak": ratios(
            [r["peak_rss_mib"] for r in ours], [r["peak_rss_mib"] for r in runs["plain-big"]]
        ),
        "ours_time / plain-big_time": ratios(
            [r["time_per_window_s"] for r in ours], [r["time_per_window_s"] for r in runs["plain-big"]]
        ),
        "ours_micro_step / grads_only": ratios(
            [r["micro_step_s"] for r in ours], [r["grads_only_s"] for r in runs["floor-time"]]
        ),
    }
    # the same comparisons on the lower quartile of the calls (_fast_calls)
    n = block["settings"]["accum"]
    fast_ours = [_fast_calls(r) for r in ours]
    fast_floor = [_fast_calls(r) for r in runs["floor-time"]]
    s["ratios"]["ours_micro_step / grads_only, lower quartiles of the calls"] = ratios(
        [f["inner"] for f in fast_ours], [f["inner"] for f in fast_floor]
    )
    s["ratios"]["ours_time / accumulation_floor, lower quartiles of the calls"] = ratios(
        [(n - 1) * f["inner"] + f["last"] for f in fast_ours],
        [
            n * f["inner"] + f["last"] + (r["accumulation_floor_s"] - r["time_floor_s"])
            for f, r in zip(fast_floor, runs["floor-time"])
        ],
    )
    s["ours_minus_memory_floor_mib"] = _median([r["peak_rss_mib"] - f for r, f in zip(ours, mem_floor)])
    s["ours_minus_plain_micro_mib"] = _median(
        [r["peak_rss_mib"] - p["peak_rss_mib"] for r, p in zip(ours, runs["plain-micro"])]
    )
    return s


def _f(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)


def render(block: dict) -> str:
    s, c = block["summary"], block["settings"]
    n, b = c["accum"], c["batch"]
    opt = {"momentum": "FusedMomentum", "adamw": "FusedAdamW"}[c["optimizer"]]
    floor_label = "grads-only graph" if c["mode"] == "graph" else "eager grads-only"
    lines = [
        f"### {c['model']} ({c['mode'].upper()}), {n} x {b}, {opt}, {s['n_params']:,} parameters "
        f"(accumulators {s['accumulator_mib']:,.1f} MiB); medians of {s['rounds']} round(s), "
        f"{c['windows']} timed window(s) each",
        "",
        f"| configuration | peak RSS (MiB) | steady-state peak (MiB) | time per {n} x {b} samples (s) "
        "| first step (s) | first window (s) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    names = {
        "ours": f"ours: GradAccumCell {n} x {b}",
        "floor-time": f"floor-time: {n} x {floor_label} + optimizer",
        "plain-micro": f"plain-micro: TrainOneStepCell {b} ({n} updates)",
        "plain-big": f"plain-big: TrainOneStepCell {n * b}",
    }
    for name in CONFIGS:
        r = s[name]
        lines.append(
            f"| {names[name]} | {_f(r['peak_rss_mib'])} | {_f(r['peak_steady_mib'])} | "
            f"{_f(r['time_per_window_s'], '{:.3f}')} | {_f(r['first_step_s'], '{:.2f}')} | "
            f"{_f(r['first_window_s'], '{:.2f}')} |"
        )
    ft = s["floor-time"]
    lines.append(
        f"| **memory floor**: plain-micro + accumulators | {_f(s['memory_floor_mib'])} | "
        f"{_f(s['steady_memory_floor_mib'])} | | | |"
    )
    lines.append(
        f"| **time floor**: {n} x {_f(ft['grads_only_s'], '{:.3f}')} s grads-only + "
        f"{_f(ft['optimizer_step_s'], '{:.3f}')} s optimizer | | | {_f(s['time_floor_s'], '{:.3f}')} | | |"
    )
    lines.append(
        f"| **accumulation floor**: time floor + the accumulators' bytes at a plain loop's speed | | | "
        f"{_f(ft['accumulation_floor_s'], '{:.3f}')} | | |"
    )
    lines += ["", "| ratio | median of per-round ratios | per round |", "|---|--:|---|"]
    for key, v in s["ratios"].items():
        per = ", ".join(_f(x, "{:.3f}") for x in v["per_round"])
        lines.append(f"| {key} | {_f(v['median'], '{:.3f}')} | {per} |")
    lines.append(f"| ours peak - memory floor (MiB) | {_f(s['ours_minus_memory_floor_mib'], '{:+,.0f}')} | |")
    lines.append(
        f"| ours micro-step / last call (micro-step + window end) (s) | "
        f"{_f(s['ours']['micro_step_s'], '{:.3f}')} / {_f(s['ours']['last_call_s'], '{:.3f}')} | |"
    )
    ours0, ft0 = block["runs"]["ours"][0], block["runs"]["floor-time"][0]
    window_end = (
        None
        if s["ours"]["last_call_s"] is None or s["ours"]["micro_step_s"] is None
        else s["ours"]["last_call_s"] - s["ours"]["micro_step_s"]
    )
    lines.append(
        f"| time: ours window end (last call - micro-step) vs optimizer step (s) | "
        f"{_f(window_end, '{:.3f}')} vs {_f(ft['optimizer_step_s'], '{:.3f}')} | |"
    )
    kc = ours0.get("kernel_costs")
    if kc:
        lines.append(
            f"| our kernels alone, round 1 (s): accumulate first / later micro-batch, sum of squares | "
            f"{kc['accumulate_first_s']:.4f} / {kc['accumulate_s']:.4f}, {kc['sum_of_squares_s']:.4f} | "
            f"window: {kc['accumulate_first_s'] + (c['accum'] - 1) * kc['accumulate_s'] + kc['sum_of_squares_s']:.4f} |"
        )
    del ft0
    ex = block.get("exactness")
    if ex:
        lines.append(
            f"| exactness, one update: max abs(w_ours - w_big) / max abs(update) | "
            f"{ex['rel_to_update']:.2e} ({'pass' if ex['passed'] else 'FAIL'}, tolerance {ex['tolerance']:g}) | "
            f"max abs diff {ex['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines)


def render_breakdown(block: dict) -> str:
    """Round 1: RSS milestones, every call of the first window (cumulative peak: compilation
    included), and the largest per-call peak of a steady window (HWM reset before each call)."""
    runs = block["runs"]
    c = block["settings"]
    lines = [
        f"#### breakdown, {c['model']} ({c['mode'].upper()}), round 1: RSS (MiB) around each call",
        "",
        "| configuration | phase | RSS before | peak | RSS after | s |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for name in CONFIGS:
        r = runs[name][0]
        for label, value in r["milestones"][:3]:
            lines.append(f"| {name} | {label} | | | {value:,.0f} | |")
        for row in r["first_window_phases"]:
            lines.append(
                f"| {name} | first window: {row['phase']} | {row['rss_before_mib']:,.0f} | "
                f"{row['peak_mib']:,.0f} | {row['rss_after_mib']:,.0f} | {row['seconds']:.3f} |"
            )
        for row in r["steady_phases"] or []:
            lines.append(
                f"| {name} | steady window: {row['phase']} | {row['rss_before_mib']:,.0f} | "
                f"{row['peak_mib']:,.0f} | {row['rss_after_mib']:,.0f} | {row['seconds']:.3f} |"
            )
    return "\n".join(lines)


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        from importlib import metadata

        info["mindspore"] = metadata.version("mindspore")
    except Exception:  # noqa: BLE001
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    info["ONEDNN_MAX_CPU_ISA"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "AVX2 (set in each worker)")
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated: resnet50,mlp,gpt (default: all; gpt only when examples/gpt_lm/model.py exists)",
    )
    p.add_argument("--pynative-models", default="mlp", help="models also run in PYNATIVE mode ('' for none)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternated configurations (>= 1)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per process (default per model)")
    p.add_argument("--warmup", type=int, default=1, help="untimed windows first (>= 1: graph compilation)")
    p.add_argument("--mlp-width", type=int, default=2048)
    p.add_argument("--mlp-layers", type=int, default=6)
    p.add_argument("--gpt-layers", type=int, default=4)
    p.add_argument("--gpt-d-model", type=int, default=256)
    p.add_argument("--gpt-heads", type=int, default=4)
    p.add_argument("--gpt-seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=None, help="micro-batch size (default per model)")
    p.add_argument("--accum", type=int, default=None, help="micro-batches per update (default 4)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-call RSS diagnostic window of round 1")
    p.add_argument("--quick", action="store_true", help="1 round, 1 timed window: a smoke run")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    p.add_argument("--json", help="write every raw number here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.windows = 1, 1
    if args.rounds < 1 or args.warmup < 1 or (args.windows is not None and args.windows < 1):
        p.error("--rounds, --warmup and --windows must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    have_gpt = importlib.util.find_spec("examples.gpt_lm.model") is not None
    models = args.models.split(",") if args.models else [m for m in MODELS if m != "gpt" or have_gpt]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if "gpt" in models and not have_gpt:
        raise SystemExit("--models gpt: examples/gpt_lm/model.py does not exist in this checkout")
    pyn = [m for m in args.pynative_models.split(",") if m] if args.pynative_models else []
    configs = CONFIGS
    blocks = []
    for mode, names in (("graph", models), ("pynative", pyn)):
        for m in names:
            spec = MODELS[m]
            settings = dict(
                model=m,
                mode=mode,
                batch=args.batch or spec["batch"],
                accum=args.accum or spec["accum"],
                optimizer=spec["optimizer"],
                windows=args.windows or spec["windows"],
                warmup=args.warmup,
                mlp_width=args.mlp_width,
                mlp_layers=args.mlp_layers,
                gpt_layers=args.gpt_layers,
                gpt_d_model=args.gpt_d_model,
                gpt_heads=args.gpt_heads,
                gpt_seq=args.gpt_seq,
                seed=0,
                bn_free=spec["bn_free"],
            )
            blocks.append({"settings": settings, "runs": {c: [] for c in configs}})
    info = machine_info()
    print(
        f"# {info.get('cpu', '?')}, {info['logical_cpus']} CPUs, MindSpore {info.get('mindspore', '?')}, "
        f"load average at start {info.get('load_average_at_start')}",
        flush=True,
    )
    total = args.rounds * len(blocks) * len(configs) + sum(1 for bl in blocks if bl["settings"]["bn_free"])
    bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, desc="bench_overhead", unit="proc")
    loads = []
    for r, order in rounds(args.rounds, configs):
        for bl in blocks:
            st = bl["settings"]
            for name in order:
                bar.set_postfix_str(f"round {r + 1} {st['model']}/{st['mode']}/{name}")
                cfg = dict(st, config=name, breakdown=(r == 0 and not args.no_breakdown))
                res = run_child(cfg, args.timeout)
                bl["runs"][name].append(res)
                loads.append(res.get("load_average_after"))
                bar.update(1)
    for bl in blocks:
        st = bl["settings"]
        if st["bn_free"]:
            bar.set_postfix_str(f"exactness {st['model']}/{st['mode']}")
            bl["exactness"] = run_child(dict(st, config="exact", exact_tol=1e-4), args.timeout)
            bar.update(1)
    bar.close()
    ok = True
    print()
    for bl in blocks:
        bl["summary"] = summarise(bl)
        print(render(bl))
        print()
        if not args.no_breakdown:
            print(render_breakdown(bl))
            print()
        if bl.get("exactness") and not bl["exactness"]["passed"]:
            ok = False
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(
        f"load average (1 min) after each process: {[x[0] for x in loads if x]}; at the end "
        f"{info['load_average_at_end']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "blocks": blocks}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
