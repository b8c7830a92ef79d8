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
time floor = N x median(grads-only) + median(optimizer step), both from the floor-time process.
Reported: medians over rounds and the median of the per-round ratios ours / floor.

Models: ``resnet50`` (examples/resnet50.py, CIFAR shapes, 32 x 4, FusedMomentum), ``mlp``
(6 x Dense(W, W) with ReLU, W = 2048: 25.2 M parameters, 16 x 4, FusedMomentum), ``gpt`` (the
GPT-like LM of examples/gpt.py when it exists, FusedAdamW). ``--pynative-models`` repeats
models in PYNATIVE mode. For BatchNorm-free models a separate process checks that ours and the
big batch give the same update (exactness).

    python benchmarks/bench_overhead.py --rounds 3               # all models, GRAPH + MLP in PYNATIVE
    python benchmarks/bench_overhead.py --quick --models mlp --mlp-width 64 --pynative-models ''

Every time is wall time around calls whose results are read back (``asnumpy``), so the work has
finished. ``ONEDNN_MAX_CPU_ISA=AVX2`` is set before MindSpore is imported in every process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples")
MIB = 1024.0 * 1024.0

CONFIGS = ("ours", "floor-time", "plain-micro", "plain-big")
# micro-batch, accumulation steps, optimizer, timed windows per process (one untimed window first)
MODELS = {
    "resnet50": dict(batch=32, accum=4, optimizer="momentum", windows=2, bn_free=False),
    "mlp": dict(batch=16, accum=4, optimizer="momentum", windows=5, bn_free=True),
    "gpt": dict(batch=8, accum=4, optimizer="adamw", windows=3, bn_free=True),
}


# ============================================================================ memory probes (Linux)

def _status_mib(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if key == "VmHWM":
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return float("nan")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def hwm_mib() -> float:
    """Peak RSS of this process since start or since the last reset_hwm()."""
    return _status_mib("VmHWM")


def reset_hwm() -> bool:
    """Resets VmHWM (and so ru_maxrss' source) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ============================================================================ the worker

def _import_mindspore(mode: str):
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    return ms


def build_model(cfg: dict):
    """(network, loss cell for the plain cells, loss cell for ours, numpy inputs of the big batch
    N*B). Same seed, same weights and data in every process."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn

    ms.set_seed(cfg.get("seed", 0))
    rs = np.random.RandomState(cfg.get("seed", 0))
    total = cfg["batch"] * cfg["accum"]
    ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    if cfg["model"] == "resnet50":
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
        from resnet50 import ResNet50

        net = ResNet50(num_classes=10)
        data = (rs.randn(total, 3, 32, 32).astype(np.float32), rs.randint(0, 10, total).astype(np.int32))
        loss = nn.WithLossCell(net, ce)
        return net, loss, loss, data
    if cfg["model"] == "mlp":
        width, depth = cfg["mlp_width"], cfg["mlp_layers"]
        layers = []
        for i in range(depth):
            layers.append(nn.Dense(width, width))
            if i < depth - 1:
                layers.append(nn.ReLU())
        net = nn.SequentialCell(layers)
        data = (rs.randn(total, width).astype(np.float32), rs.randint(0, width, total).astype(np.int32))
        loss = nn.WithLossCell(net, ce)
        return net, loss, loss, data
    if cfg["model"] == "gpt":
        return _build_gpt(cfg, rs, total)
    raise ValueError(cfg["model"])


def _build_gpt(cfg, rs, total):
    """examples/gpt.py's GPT (its training script's default size: 4 layers, d_model 256, 4 heads,
    context 128) on random byte tokens without padding. Ours gets the token-exact pair contract
    (``LMLoss``: loss_sum, num_items); the plain cells the token mean loss_sum / num_items, the
    same gradient when nothing is padded."""
    import numpy as np

    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    import gpt  # examples/gpt.py (merged from main)

    seq = cfg["gpt_seq"]
    net = gpt.GPT(cfg["gpt_layers"], cfg["gpt_d_model"], cfg["gpt_heads"], max_positions=seq, seed=cfg.get("seed", 0))
    pair = gpt.LMLoss(net)
    tokens = rs.randint(0, gpt.VOCAB, (total, seq + 1)).astype(np.int32)
    return net, gpt.TokenMeanLoss(pair), pair, (tokens[:, :-1].copy(), tokens[:, 1:].copy())


def make_optimizer(cfg: dict, params):
    from mindspore_accum import FusedAdamW, FusedMomentum

    if cfg["optimizer"] == "momentum":
        return FusedMomentum(params, 0.01, 0.9, weight_decay=5e-4)
    return FusedAdamW(params, 3e-4, weight_decay=0.1)


def _param_count(params) -> int:
    total = 0
    for p in params:
        n = 1
        for d in p.shape:
            n *= int(d)
        total += n
    return total


class _Phases:
    """RSS before, peak during, RSS after and seconds of each labelled phase."""

    def __init__(self):
        self.rows = []

    def run(self, label, fn, reset=True):
        if reset:
            reset_hwm()
        before = rss_mib()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        self.rows.append(dict(phase=label, rss_before_mib=before, peak_mib=hwm_mib(), rss_after_mib=rss_mib(),
                              seconds=seconds))
        return out


def worker(cfg: dict) -> dict:
    t_start = time.perf_counter()
    ms = _import_mindspore(cfg["mode"])
    import numpy as np
    from mindspore import Tensor, nn

    milestones = [("imported mindspore", rss_mib())]
    net, loss_cell, ours_loss_cell, data = build_model(cfg)
    params = net.trainable_params()
    n_params = _param_count(params)
    n, b, kind = cfg["accum"], cfg["batch"], cfg["config"]
    micro = [tuple(Tensor(a[i * b:(i + 1) * b]) for a in data) for i in range(n)]
    big = tuple(Tensor(a) for a in data) if kind == "plain-big" else None
    milestones.append(("model and data built", rss_mib()))
    optimizer = make_optimizer(cfg, params)
    graph = cfg["mode"] == "graph"

    if kind == "ours":
        from mindspore_accum import GradAccumCell

        cell = GradAccumCell(ours_loss_cell, optimizer, n)
        cell.set_train()

        def call(i):
            return float(cell(*micro[i]).asnumpy())

        calls = [(f"micro-step {i + 1}" + (" + window end" if i == n - 1 else ""), lambda i=i: call(i))
                 for i in range(n)]

        def split_last():  # the last call as its two graphs (what cell(...) does), for the breakdown
            micro_fn = cell._micro_step_graph if graph else cell._micro_step
            return [(f"micro-step {n} (micro-step graph)", lambda: float(micro_fn(*micro[n - 1]).asnumpy())),
                    ("window end (window-end graph)", lambda: cell._finish_window())]
    elif kind in ("plain-micro", "plain-big"):
        cell = nn.TrainOneStepCell(loss_cell, optimizer)
        cell.set_train()
        if kind == "plain-micro":
            calls = [(f"step {i + 1} (batch {b})", lambda i=i: float(cell(*micro[i]).asnumpy())) for i in range(n)]
        else:
            calls = [(f"step (batch {n * b})", lambda: float(cell(*big).asnumpy()))]
        split_last = None
    elif kind == "floor-time":
        grad_fn = ms.value_and_grad(loss_cell, None, optimizer.parameters)

        class GradsOnly(nn.Cell):  # a top-level Cell: MindSpore's fastest dispatch of a graph
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.loss_cell, self.grad_fn = loss_cell, grad_fn

            def construct(self, *inputs):
                return self.grad_fn(*inputs)

        grads_only = GradsOnly().set_train() if graph else grad_fn
        held = {}

        def grads(i):
            held.pop("grads", None)  # at most one gradient set alive, as in a training loop
            loss, g = grads_only(*micro[i])
            held["grads"] = g
            return float(loss.asnumpy())

        def update():
            optimizer(held.pop("grads"))
            return int(optimizer.global_step.asnumpy())  # written last by the update: it has finished

        calls = [(f"grads-only {i + 1}", lambda i=i: grads(i)) for i in range(n)] + [("optimizer step", update)]
        split_last = None
    else:
        raise ValueError(kind)
    milestones.append(("cell built", rss_mib()))

    def window(phases=None, split=False):
        todo = calls[:-1] + split_last() if split else calls
        times = []
        for label, fn in todo:
            if phases is None:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            else:
                phases.run(label, fn, reset=phases is not first_window_phases)
                times.append(phases.rows[-1]["seconds"])
        return times

    breakdown = cfg.get("breakdown", False)
    # ---- the first (untimed) windows: graph compilation; phases without HWM resets (cumulative peak)
    first_window_phases = _Phases()
    t0 = time.perf_counter()
    first_times = window(first_window_phases, split=breakdown and split_last is not None)
    first_window_s = time.perf_counter() - t0
    for _ in range(cfg["warmup"] - 1):
        window()
    peak_first = hwm_mib()
    milestones.append(("after the untimed window(s)", rss_mib()))
    steady_ok = reset_hwm()
    # ---- timed windows
    windows, per_call = [], []
    for _ in range(cfg["windows"]):
        t0 = time.perf_counter()
        times = window()
        windows.append(time.perf_counter() - t0)
        per_call.append(times)
    peak_steady = hwm_mib()
    # ---- one diagnostic window: the peak of every call on its own (HWM reset before each)
    steady_phases = None
    if breakdown:
        steady_phases = _Phases()
        window(steady_phases, split=split_last is not None)
    milestones.append(("end", rss_mib()))
    kernel_costs = _kernel_costs(params) if (breakdown and kind == "ours") else None

    result = dict(
        n_params=n_params, accumulator_bytes=4 * n_params,
        peak_rss_mib=max(peak_first, peak_steady if steady_ok else peak_first),
        peak_first_windows_mib=peak_first, peak_steady_mib=peak_steady if steady_ok else None,
        window_s=windows, time_per_window_s=float(np.median(windows)),
        first_step_s=first_times[0], first_window_s=first_window_s,
        call_labels=[label for label, _ in calls], call_times_s=per_call,
        milestones=milestones, first_window_phases=first_window_phases.rows,
        steady_phases=steady_phases.rows if steady_phases else None,
        global_step=int(optimizer.global_step.asnumpy()), kernel_costs=kernel_costs,
    )
    if kind == "floor-time":
        grads_times = [t for times in per_call for t in times[:-1]]
        opt_times = [times[-1] for times in per_call]
        result.update(grads_only_s=float(np.median(grads_times)), optimizer_step_s=float(np.median(opt_times)))
        result["time_floor_s"] = n * result["grads_only_s"] + result["optimizer_step_s"]
    if kind == "ours":
        result["micro_step_s"] = float(np.median([t for times in per_call for t in times[:-1]] or [float("nan")]))
        result["last_call_s"] = float(np.median([times[-1] for times in per_call]))
        result["skipped_updates"] = int(cell.skipped_updates.asnumpy())
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _kernel_costs(params) -> dict:
    """Median seconds of our kernels alone on NumPy arrays shaped like the parameters: what a
    micro-step must add to the grads-only graph (accumulate: 8 B/element for the first
    micro-batch, 12 after) and the window-end check (sum of squares, 4 B/element). Run after every
    peak was recorded (the arrays take 2-3 x the parameters' bytes)."""
    import numpy as np
    from mindspore_accum import kernels

    rs = np.random.RandomState(1)
    acc = [np.zeros(tuple(p.shape), np.float32) for p in params]
    grad = [rs.standard_normal(tuple(p.shape)).astype(np.float32) for p in params]

    def timed(fn, repeats=7):
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    return dict(accumulate_s=timed(lambda: kernels.accumulate(acc, grad, 0.5)),
                accumulate_first_s=timed(lambda: kernels.accumulate(acc, grad, 0.5, overwrite=True)),
                sum_of_squares_s=timed(lambda: kernels.sum_of_squares(acc)))


def worker_exact(cfg: dict) -> dict:
    """One update of ours (N micro-batches) and of plain-big (one batch of N*B) from the same
    weights on the same samples: the distance between the two updates."""
    ms = _import_mindspore(cfg["mode"])
    import numpy as np
    from mindspore import Tensor, nn
    from mindspore_accum import GradAccumCell

    n, b = cfg["accum"], cfg["batch"]
    net_a, _, loss_a, data = build_model(cfg)
    net_b, loss_b, _, _ = build_model(cfg)
    for pa, pb in zip(net_a.get_parameters(), net_b.get_parameters()):
        pb.set_data(Tensor(pa.asnumpy().copy()))
    before = [p.asnumpy().astype(np.float64) for p in net_a.trainable_params()]
    # The check is on the accumulated gradient, so it uses momentum SGD (linear in the gradient):
    # AdamW's first step is ~lr * g / (|g| + eps), which turns float32 rounding in near-zero
    # gradient entries into O(1) relative differences of the update.
    check = dict(cfg, optimizer="momentum")
    ours = GradAccumCell(loss_a, make_optimizer(check, net_a.trainable_params()), n)
    big = nn.TrainOneStepCell(loss_b, make_optimizer(check, net_b.trainable_params()))
    ours.set_train()
    big.set_train()
    for i in range(n):
        ours(*(Tensor(a[i * b:(i + 1) * b]) for a in data))
    big(*(Tensor(a) for a in data))
    wa = [p.asnumpy().astype(np.float64) for p in net_a.trainable_params()]
    wb = [p.asnumpy().astype(np.float64) for p in net_b.trainable_params()]
    du = max(float(np.max(np.abs(a - c))) for a, c in zip(wa, wb))
    upd = max(float(np.max(np.abs(c - w0))) for c, w0 in zip(wb, before))
    wmax = max(float(np.max(np.abs(c))) for c in wb)
    rel_update = du / upd if upd > 0 else float("inf")
    return dict(max_abs_diff=du, max_abs_update=upd, rel_to_update=rel_update, rel_to_weights=du / wmax,
                updates_ours=int(ours.optimizer.global_step.asnumpy()), tolerance=cfg["exact_tol"],
                passed=bool(rel_update <= cfg["exact_tol"] and upd > 0 and int(ours.optimizer.global_step.asnumpy()) == 1))


# ============================================================================ the driver

def run_child(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    env = dict(os.environ)
    env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    env.setdefault("GLOG_v", "3")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench_overhead: {cfg['model']}/{cfg['mode']}/{cfg['config']} timed out after {timeout:.0f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"bench_overhead: {cfg['model']}/{cfg['mode']}/{cfg['config']} failed "
                         f"(exit code {proc.returncode})")
    out = json.loads(lines[-1])
    out["process_wall_s"] = time.perf_counter() - t0
    try:
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return out


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def summarise(block: dict) -> dict:
    """Medians over rounds and medians of per-round ratios."""
    runs = block["runs"]
    rounds = len(runs["ours"])
    acc_mib = runs["ours"][0]["accumulator_bytes"] / MIB
    s = {"accumulator_mib": acc_mib, "n_params": runs["ours"][0]["n_params"], "rounds": rounds}
    for name in CONFIGS:
        rs = runs[name]
        s[name] = {k: _median([r[k] for r in rs]) for k in
                   ("peak_rss_mib", "peak_steady_mib", "peak_first_windows_mib", "time_per_window_s",
                    "first_step_s", "first_window_s")}
    s["floor-time"].update(grads_only_s=_median([r["grads_only_s"] for r in runs["floor-time"]]),
                           optimizer_step_s=_median([r["optimizer_step_s"] for r in runs["floor-time"]]),
                           time_floor_s=_median([r["time_floor_s"] for r in runs["floor-time"]]))
    s["ours"].update(micro_step_s=_median([r["micro_step_s"] for r in runs["ours"]]),
                     last_call_s=_median([r["last_call_s"] for r in runs["ours"]]))
    mem_floor = [p["peak_rss_mib"] + acc_mib for p in runs["plain-micro"]]
    steady_floor = [None if p["peak_steady_mib"] is None else p["peak_steady_mib"] + acc_mib
                    for p in runs["plain-micro"]]
    s["memory_floor_mib"] = _median(mem_floor)
    s["steady_memory_floor_mib"] = _median(steady_floor)
    s["time_floor_s"] = s["floor-time"]["time_floor_s"]

    def ratios(num, den):
        out = [None if (a is None or c is None) else a / c for a, c in zip(num, den)]
        return {"median": _median(out), "per_round": out}

    ours = runs["ours"]
    s["ratios"] = {
        "ours_peak / memory_floor": ratios([r["peak_rss_mib"] for r in ours], mem_floor),
        "ours_steady_peak / steady_memory_floor": ratios([r["peak_steady_mib"] for r in ours], steady_floor),
        "ours_time / time_floor": ratios([r["time_per_window_s"] for r in ours],
                                         [r["time_floor_s"] for r in runs["floor-time"]]),
        "ours_time / floor-time_window": ratios([r["time_per_window_s"] for r in ours],
                                                [r["time_per_window_s"] for r in runs["floor-time"]]),
        "ours_time / plain-micro_window": ratios([r["time_per_window_s"] for r in ours],
                                                 [r["time_per_window_s"] for r in runs["plain-micro"]]),
        "ours_peak / plain-big_peak": ratios([r["peak_rss_mib"] for r in ours],
                                             [r["peak_rss_mib"] for r in runs["plain-big"]]),
        "ours_time / plain-big_time": ratios([r["time_per_window_s"] for r in ours],
                                             [r["time_per_window_s"] for r in runs["plain-big"]]),
        "ours_micro_step / grads_only": ratios([r["micro_step_s"] for r in ours],
                                               [r["grads_only_s"] for r in runs["floor-time"]]),
    }
    s["ours_minus_memory_floor_mib"] = _median([r["peak_rss_mib"] - f for r, f in zip(ours, mem_floor)])
    s["ours_minus_plain_micro_mib"] = _median([r["peak_rss_mib"] - p["peak_rss_mib"]
                                                for r, p in zip(ours, runs["plain-micro"])])
    return s


def _f(x, fmt="{:,.0f}"):
    return "n/a" if x is None else fmt.format(x)


def render(block: dict) -> str:
    s, c = block["summary"], block["settings"]
    n, b = c["accum"], c["batch"]
    opt = {"momentum": "FusedMomentum", "adamw": "FusedAdamW"}[c["optimizer"]]
    floor_label = "grads-only graph" if c["mode"] == "graph" else "eager grads-only"
    lines = [f"### {c['model']} ({c['mode'].upper()}), {n} x {b}, {opt}, {s['n_params']:,} parameters "
             f"(accumulators {s['accumulator_mib']:,.1f} MiB); medians of {s['rounds']} round(s), "
             f"{c['windows']} timed window(s) each", "",
             f"| configuration | peak RSS (MiB) | steady-state peak (MiB) | time per {n} x {b} samples (s) "
             "| first step (s) | first window (s) |",
             "|---|--:|--:|--:|--:|--:|"]
    names = {"ours": f"ours: GradAccumCell {n} x {b}",
             "floor-time": f"floor-time: {n} x {floor_label} + optimizer",
             "plain-micro": f"plain-micro: TrainOneStepCell {b} ({n} updates)",
             "plain-big": f"plain-big: TrainOneStepCell {n * b}"}
    for name in CONFIGS:
        r = s[name]
        lines.append(f"| {names[name]} | {_f(r['peak_rss_mib'])} | {_f(r['peak_steady_mib'])} | "
                     f"{_f(r['time_per_window_s'], '{:.3f}')} | {_f(r['first_step_s'], '{:.2f}')} | "
                     f"{_f(r['first_window_s'], '{:.2f}')} |")
    ft = s["floor-time"]
    lines.append(f"| **memory floor**: plain-micro + accumulators | {_f(s['memory_floor_mib'])} | "
                 f"{_f(s['steady_memory_floor_mib'])} | | | |")
    lines.append(f"| **time floor**: {n} x {_f(ft['grads_only_s'], '{:.3f}')} s grads-only + "
                 f"{_f(ft['optimizer_step_s'], '{:.3f}')} s optimizer | | | {_f(s['time_floor_s'], '{:.3f}')} | | |")
    lines += ["", "| ratio | median of per-round ratios | per round |", "|---|--:|---|"]
    for key, v in s["ratios"].items():
        per = ", ".join(_f(x, "{:.3f}") for x in v["per_round"])
        lines.append(f"| {key} | {_f(v['median'], '{:.3f}')} | {per} |")
    lines.append(f"| ours peak - memory floor (MiB) | {_f(s['ours_minus_memory_floor_mib'], '{:+,.0f}')} | |")
    lines.append(f"| ours micro-step / last call (micro-step + window end) (s) | "
                 f"{_f(s['ours']['micro_step_s'], '{:.3f}')} / {_f(s['ours']['last_call_s'], '{:.3f}')} | |")
    ours0, ft0 = block["runs"]["ours"][0], block["runs"]["floor-time"][0]
    window_end = (None if s["ours"]["last_call_s"] is None or s["ours"]["micro_step_s"] is None
                  else s["ours"]["last_call_s"] - s["ours"]["micro_step_s"])
    lines.append(f"| time: ours window end (last call - micro-step) vs optimizer step (s) | "
                 f"{_f(window_end, '{:.3f}')} vs {_f(ft['optimizer_step_s'], '{:.3f}')} | |")
    kc = ours0.get("kernel_costs")
    if kc:
        lines.append(f"| our kernels alone, round 1 (s): accumulate first / later micro-batch, sum of squares | "
                     f"{kc['accumulate_first_s']:.4f} / {kc['accumulate_s']:.4f}, {kc['sum_of_squares_s']:.4f} | "
                     f"window: {kc['accumulate_first_s'] + (c['accum'] - 1) * kc['accumulate_s'] + kc['sum_of_squares_s']:.4f} |")
    del ft0
    ex = block.get("exactness")
    if ex:
        lines.append(f"| exactness, one update: max abs(w_ours - w_big) / max abs(update) | "
                     f"{ex['rel_to_update']:.2e} ({'pass' if ex['passed'] else 'FAIL'}, tolerance {ex['tolerance']:g}) | "
                     f"max abs diff {ex['max_abs_diff']:.2e} |")
    return "\n".join(lines)


def render_breakdown(block: dict) -> str:
    """Round 1: RSS milestones, every call of the first window (cumulative peak: compilation
    included), and the largest per-call peak of a steady window (HWM reset before each call)."""
    runs = block["runs"]
    c = block["settings"]
    lines = [f"#### breakdown, {c['model']} ({c['mode'].upper()}), round 1: RSS (MiB) around each call", "",
             "| configuration | phase | RSS before | peak | RSS after | s |", "|---|---|--:|--:|--:|--:|"]
    for name in CONFIGS:
        r = runs[name][0]
        for label, value in r["milestones"][:3]:
            lines.append(f"| {name} | {label} | | | {value:,.0f} | |")
        for row in r["first_window_phases"]:
            lines.append(f"| {name} | first window: {row['phase']} | {row['rss_before_mib']:,.0f} | "
                         f"{row['peak_mib']:,.0f} | {row['rss_after_mib']:,.0f} | {row['seconds']:.3f} |")
        for row in r["steady_phases"] or []:
            lines.append(f"| {name} | steady window: {row['phase']} | {row['rss_before_mib']:,.0f} | "
                         f"{row['peak_mib']:,.0f} | {row['rss_after_mib']:,.0f} | {row['seconds']:.3f} |")
    return "\n".join(lines)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "logical_cpus": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
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
    p.add_argument("--models", default=None,
                   help="comma-separated: resnet50,mlp,gpt (default: all; gpt only when examples/gpt.py exists)")
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
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.windows = 1, 1
    if args.rounds < 1 or args.warmup < 1 or (args.windows is not None and args.windows < 1):
        p.error("--rounds, --warmup and --windows must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        cfg = json.loads(args.worker)
        print(json.dumps(worker_exact(cfg) if cfg["config"] == "exact" else worker(cfg)), flush=True)
        return 0
    from tqdm import tqdm

    have_gpt = os.path.isfile(os.path.join(EXAMPLES, "gpt.py"))
    models = args.models.split(",") if args.models else [m for m in MODELS if m != "gpt" or have_gpt]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    if "gpt" in models and not have_gpt:
        raise SystemExit("--models gpt: examples/gpt.py does not exist in this checkout")
    pyn = [m for m in args.pynative_models.split(",") if m] if args.pynative_models else []
    configs = CONFIGS
    blocks = []
    for mode, names in (("graph", models), ("pynative", pyn)):
        for m in names:
            spec = MODELS[m]
            settings = dict(model=m, mode=mode, batch=args.batch or spec["batch"], accum=args.accum or spec["accum"],
                            optimizer=spec["optimizer"], windows=args.windows or spec["windows"], warmup=args.warmup,
                            mlp_width=args.mlp_width, mlp_layers=args.mlp_layers, gpt_layers=args.gpt_layers,
                            gpt_d_model=args.gpt_d_model, gpt_heads=args.gpt_heads, gpt_seq=args.gpt_seq, seed=0, bn_free=spec["bn_free"])
            blocks.append({"settings": settings, "runs": {c: [] for c in configs}})
    info = machine_info()
    print(f"# {info.get('cpu', '?')}, {info['logical_cpus']} CPUs, MindSpore {info.get('mindspore', '?')}, "
          f"load average at start {info.get('load_average_at_start')}", flush=True)
    total = args.rounds * len(blocks) * len(configs) + sum(1 for bl in blocks if bl["settings"]["bn_free"])
    bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, desc="bench_overhead", unit="proc")
    loads = []
    for r in range(args.rounds):
        for bl in blocks:
            st = bl["settings"]
            for name in configs:
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
    print(f"load average (1 min) after each process: {[x[0] for x in loads if x]}; at the end "
          f"{info['load_average_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "blocks": blocks}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
