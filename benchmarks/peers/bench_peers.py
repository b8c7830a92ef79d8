#!/usr/bin/env python
"""The peer head-to-head (issue 14): GradAccumCell against MindSpore's own accumulation patterns.

Two models, six configurations, each configuration in its OWN process (peak RSS is per process),
rounds alternated (every round runs every configuration once, the order rotated by one per
round); medians over rounds, ratios as the median of per-round ratios.

* ``lm``: examples/gpt_lm/model.py's GPT + ``LMLoss`` (loss_sum, num_items) on examples/gpt_lm/data.py's
  chunks of the Python standard library (real text, padded to --lm-seq). Default 7 layers,
  d_model 512, 8 heads, context 128: 22.2 M parameters; micro-batch 8 x 4.
* ``resnet50``: examples/resnet50_cifar10/model.py (CIFAR stem, BatchNorm) on real CIFAR-10 images from
  --cifar-dir when present (else random images, said so); micro-batch 32 x 4.

Configurations (every optimizer AdamW: lr 1e-3, betas 0.9/0.999, eps 1e-6, weight decay 0.01):

1. ``plain big batch``: nn.TrainOneStepCell at N*B with nn.AdamWeightDecay and the exact loss
   (LM: token mean over the whole big batch, = sum of token losses / number of real tokens).
2. ``ours (FusedAdamW)``: GradAccumCell(loss, FusedAdamW, N) -- LM: the (loss_sum, num_items)
   contract; ResNet: mean loss, micro_batch_weight="size".
3. ``ours (nn.AdamWeightDecay)``: the same cell with MindSpore's optimizer inside.
4. ``mindspore.boost.GradientAccumulation``: driven as its tutorial does (peer_cells.py), mean loss
   per micro-batch (LM: the micro-batch token mean).
5. ``tutorial Accumulator``: MindSpore's 2.x gradient-accumulation tutorial (peer_cells.py): loss /
   N, value_and_grad in an ms.jit train_step, HyperMap assign_add, optimizer every N-th step.
6. ``plain micro-batch``: nn.TrainOneStepCell at B (N updates per window): the memory reference.

Measured per process: time per update (a window of N micro-batches; median over --updates timed
windows after --warmup untimed ones), the first window (compilation included), peak RSS (ru_maxrss), and the
weights after 3 updates, compared by the driver with the plain big batch's of the same round:
max|w - w_big| / max|w_big| over all trainable parameters. All processes start from the same
weights (a file the first process writes) and see the same windows (a file the driver writes;
the big batch is the concatenation of the window's N micro-batches).

LM windows: with --lm-windows unequal (default) the windows are the first ones of the example's
training stream (examples.gpt_lm.data.TrainStream, seed 0) whose N micro-batches hold unequal numbers of real
tokens -- at context 128 only ~0.7 % of the chunks are short file tails, so most windows hold
equal counts, where the mean of micro-batch means equals the token mean; ``stream`` takes the
stream's windows as they come. The token counts are printed.

    python -m benchmarks.peers.bench_peers                        # both models, 3 rounds, GRAPH
    python -m benchmarks.peers.bench_peers --quick --rounds 1     # tiny sizes: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common.rounds import REPO as ROOT
from benchmarks.common.rounds import module_command, rounds, run_worker

DEFAULT_CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10-subset")

CONFIGS = {  # id -> table name (fixed)
    "big": "plain big batch",
    "ours": "ours (FusedAdamW)",
    "ours_msadamw": "ours (nn.AdamWeightDecay)",
    "boost": "mindspore.boost.GradientAccumulation",
    "tutorial": "tutorial Accumulator",
    "micro": "plain micro-batch",
}
ADAMW = dict(learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
DISTANCE_AFTER = 3  # updates


# ============================================================================ data (driver side, NumPy only)


def lm_windows(cfg: dict, count: int) -> dict:
    import numpy as np

    from examples.gpt_lm import data as lm_data

    train, _, desc = lm_data.resolve_files()
    corpus = lm_data.Corpus(train, cfg["seq"])
    stream = lm_data.TrainStream(corpus, cfg["batch"], seed=0)
    n = cfg["accum"]
    xs, ys, picked, scanned, unequal = [], [], [], 0, 0
    while len(picked) < count:
        if scanned >= 100_000:
            raise SystemExit("bench_peers: no LM window with unequal token counts in 100,000 windows")
        batches = [stream.batch(scanned * n + i) for i in range(n)]
        tokens = [int((y != lm_data.PAD).sum()) for _, y in batches]
        is_unequal = len(set(tokens)) > 1
        unequal += is_unequal
        if cfg["lm_windows"] == "stream" or is_unequal:
            picked.append({"stream_window": scanned, "tokens": tokens})
            xs.append(np.stack([x for x, _ in batches]))
            ys.append(np.stack([y for _, y in batches]))
        scanned += 1
    return {
        "x": np.stack(xs),
        "y": np.stack(ys),
        "windows": picked,
        "corpus": desc,
        "stream_windows_scanned": scanned,
        "stream_windows_unequal": unequal,
    }


def resnet_windows(cfg: dict, count: int) -> dict:
    import numpy as np

    from examples.resnet50_cifar10 import data as cd

    n, b = cfg["accum"], cfg["batch"]
    need = count * n * b
    d = cd.resolve_data_dir(cfg["cifar_dir"]) if cfg.get("cifar_dir") else None
    files = sorted(__import__("glob").glob(os.path.join(d, cd.TRAIN_GLOB))) if d else []
    if files:
        raw = np.fromfile(files[0], np.uint8, count=need * cd.RECORD_BYTES)
        if raw.size < need * cd.RECORD_BYTES:
            raise SystemExit(f"bench_peers: {files[0]} holds fewer than {need} images")
        raw = raw.reshape(need, cd.RECORD_BYTES)
        imgs = raw[:, 1:].reshape(need, 3, 32, 32).transpose(0, 2, 3, 1)
        x = np.stack([cd.normalize_chw(im) for im in imgs])
        y = raw[:, 0].astype(np.int32)
        source = f"CIFAR-10 {files[0]} (first {need} images, normalised, no augmentation)"
    else:
        rs = np.random.RandomState(0)
        x = rs.randn(need, 3, 32, 32).astype(np.float32)
        y = rs.randint(0, 10, need).astype(np.int32)
        source = f"RANDOM images (no CIFAR-10 binaries in {cfg.get('cifar_dir')!r})"
    return {"x": x.reshape(count, n, b, 3, 32, 32), "y": y.reshape(count, n, b), "source": source}


# ============================================================================ the worker


def build(cfg: dict):
    """(net, mean-loss cell, ours' loss cell). Imports MindSpore (after the environment is set)."""
    import mindspore as ms
    from mindspore import nn

    ms.set_seed(0)
    if cfg["model"] == "lm":
        from examples.gpt_lm import model as gpt

        net = gpt.GPT(cfg["layers"], cfg["d_model"], cfg["heads"], max_positions=cfg["seq"], seed=0)
        pair = gpt.LMLoss(net)
        return net, gpt.TokenMeanLoss(pair), pair
    from examples.resnet50_cifar10 import model as resnet50

    net = resnet50.ResNet50(num_classes=10, norm=cfg["norm"])
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    return net, loss, loss


def _same_start(net, path: str) -> float:
    """Loads the initial weights from ``path``; the first process writes them. Returns a checksum."""
    import numpy as np
    from mindspore import Tensor

    params = net.get_parameters()
    if os.path.exists(path):
        with np.load(path) as z:
            for p in params:
                p.set_data(Tensor(z[p.name]))
    else:
        tmp = path + f".{os.getpid()}.npz"
        np.savez(tmp, **{p.name: p.asnumpy() for p in params})
        os.replace(tmp, path)
    return float(sum(float(np.abs(p.asnumpy()).sum()) for p in net.trainable_params()))


def worker(cfg: dict) -> dict:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    ms.set_context(mode=ms.GRAPH_MODE if cfg["mode"] == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    from benchmarks.peers import peer_cells
    from mindspore_accum import FusedAdamW, GradAccumCell

    net, mean_loss, ours_loss = build(cfg)
    checksum = _same_start(net, cfg["init_path"])
    params = net.trainable_params()
    n, kind = cfg["accum"], cfg["config"]
    with np.load(cfg["data_path"]) as z:
        wx, wy = z["x"], z["y"]
    windows = wx.shape[0]
    if kind == "big":  # one batch of N*B per window: the concatenation of its micro-batches
        data = [
            [(Tensor(wx[w].reshape((-1,) + wx.shape[3:])), Tensor(wy[w].reshape((-1,) + wy.shape[3:])))]
            for w in range(windows)
        ]
    else:
        data = [[(Tensor(wx[w, i]), Tensor(wy[w, i])) for i in range(n)] for w in range(windows)]
    del wx, wy

    optimizer = FusedAdamW(params, **ADAMW) if kind == "ours" else nn.AdamWeightDecay(params, **ADAMW)
    if kind in ("big", "micro"):
        step = nn.TrainOneStepCell(mean_loss, optimizer)
    elif kind in ("ours", "ours_msadamw"):
        step = GradAccumCell(ours_loss, optimizer, n)
    elif kind == "boost":
        step = peer_cells.boost_cell(mean_loss, optimizer, n)
    elif kind == "tutorial":
        step = peer_cells.tutorial_step(mean_loss, optimizer, n, params)
    else:
        raise ValueError(kind)
    if isinstance(step, nn.Cell):
        step.set_train()
    net.set_train()
    last = params[-1]

    def run_window(w):
        losses = [float(step(*inputs).asnumpy()) for inputs in data[w]]
        float(last.asnumpy().ravel()[0])  # a weight the update wrote: the window has finished
        return losses

    times, losses, peak_before_snapshot = [], [], None
    for w in range(windows):
        t0 = time.perf_counter()
        losses.append(run_window(w))
        times.append(time.perf_counter() - t0)
        if w + 1 == DISTANCE_AFTER and cfg.get("snapshot_dir"):
            peak_before_snapshot = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            os.makedirs(cfg["snapshot_dir"], exist_ok=True)
            for i, p in enumerate(params):  # one parameter at a time: little extra memory
                np.save(os.path.join(cfg["snapshot_dir"], f"{i}.npy"), p.asnumpy())
    updates = int(optimizer.global_step.asnumpy()) if hasattr(optimizer, "global_step") else None
    timed = times[cfg["warmup"] : cfg["warmup"] + cfg["updates"]]
    return dict(
        first_update_s=times[0],
        update_s=timed,
        time_per_update_s=float(np.median(timed)),
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        peak_before_snapshot_mib=peak_before_snapshot,
        losses=losses,
        init_checksum=checksum,
        optimizer_steps=updates,
        n_params=int(sum(int(np.prod(p.shape)) for p in params)),
    )


# ============================================================================ the driver


def _error_message(stderr: str, code) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    hits = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b:?", ln)]
    msg = (hits[-1] if hits else (lines[-1] if lines else "")).replace("|", "/")
    return f"exit code {code}: {msg[:300]}"


def run_child(cfg: dict, timeout: float) -> dict:
    try:
        run = run_worker(module_command("benchmarks.peers.bench_peers", "--worker", json.dumps(cfg)), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if run.result is None:
        return {"error": _error_message(run.proc.stderr, run.proc.returncode), "stderr_tail": run.proc.stderr[-3000:]}
    out = run.result
    out["process_wall_s"] = run.wall_s
    out["load_average_after"] = list(os.getloadavg())
    return out


def distance(snap_dir: str, ref_dir: str):
    """max |w - w_ref| / max |w_ref| over all trainable parameters (the files of two snapshots)."""
    import numpy as np

    files = sorted(os.listdir(ref_dir), key=lambda f: int(f.split(".")[0]))
    if sorted(os.listdir(snap_dir)) != sorted(files):
        return None
    diff = ref = 0.0
    for f in files:
        a, b = np.load(os.path.join(snap_dir, f)), np.load(os.path.join(ref_dir, f))
        diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
        ref = max(ref, float(np.max(np.abs(b))) if b.size else 0.0)
    return diff / ref if ref > 0 else None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def summarise(block: dict) -> dict:
    runs, out = block["runs"], {}
    ours = runs["ours"]
    for c in block["configs"]:
        rs = runs[c]
        ok = [r for r in rs if "error" not in r]

        def ratio(key, rs=rs):
            return _median(
                [
                    r[key] / o[key] if ("error" not in r and "error" not in o and o[key]) else None
                    for r, o in zip(rs, ours)
                ]
            )

        out[c] = dict(
            time_per_update_s=_median([r["time_per_update_s"] for r in ok]),
            time_ratio=ratio("time_per_update_s"),
            peak_rss_mib=_median([r["peak_rss_mib"] for r in ok]),
            rss_ratio=ratio("peak_rss_mib"),
            first_update_s=_median([r["first_update_s"] for r in ok]),
            distance=_median([r.get("distance") for r in ok]),
            errors=sorted({r["error"] for r in rs if "error" in r}),
            ok_rounds=len(ok),
        )
    return out


def _f(x, fmt):
    return "n/a" if x is None else fmt.format(x)


def render(block: dict) -> str:
    st, s = block["settings"], block["summary"]
    n, b = st["accum"], st["batch"]
    what = (
        f"GPT {st['layers']} layers, d_model {st['d_model']}, {st['heads']} heads, context {st['seq']}"
        if st["model"] == "lm"
        else f"ResNet50 ({st['norm']} norm), CIFAR-10 shapes"
    )
    params = next((r["n_params"] for rs in block["runs"].values() for r in rs if "n_params" in r), None)
    lines = [
        f"### {st['model']} ({st['mode'].upper()}): {what}, {_f(params, '{:,}')} parameters, "
        f"{n} x {b} per update; AdamW (lr 1e-3, wd 0.01); medians of {len(block['runs']['ours'])} round(s), "
        f"{st['updates']} timed update(s) per process",
        "",
    ]
    if st["model"] == "lm":
        wins = block["data"]["windows"][:DISTANCE_AFTER]
        lines.append(
            f"Data: {block['data']['corpus']}; the {DISTANCE_AFTER} updates of the distance use stream "
            f"windows {[w['stream_window'] for w in wins]} with real tokens per micro-batch "
            f"{[w['tokens'] for w in wins]} (--lm-windows {st['lm_windows']}; "
            f"{block['data']['stream_windows_unequal']} of the {block['data']['stream_windows_scanned']} "
            "stream windows scanned hold unequal counts)."
        )
    else:
        lines.append(
            f"Data: {block['data']['source']}."
            + (
                " BatchNorm: per-micro-batch statistics, so no accumulation equals the big batch "
                "(--resnet-norm group removes that)."
                if st["norm"] == "batch"
                else ""
            )
        )
    lines.append(
        f"Time/update: one window of {n} micro-batches (plain big batch: one step of {n * b}; plain micro-batch: "
        f"{n} steps of {b}), after {st['warmup']} untimed window(s) (the first: compilation, 'first update'). "
        "Distance: max|w - w_big| / "
        "max|w_big| over all trainable parameters after 3 updates, same start, same data."
    )
    lines += [
        "",
        "| config | time/update median (s) | ratio to ours (FusedAdamW) | peak RSS MiB | "
        "RSS ratio vs ours | distance after 3 updates from big batch | first update (s) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for c in block["configs"]:
        r = s[c]
        if r["ok_rounds"] == 0:
            lines.append(f"| {CONFIGS[c]} | failed: {'; '.join(r['errors'])} | | | | | |")
            continue
        dist = "(reference)" if c == "big" else ("--" if c == "micro" else _f(r["distance"], "{:.2e}"))
        note = f" ({len(r['errors'])} round(s) failed: {'; '.join(r['errors'])})" if r["errors"] else ""
        lines.append(
            f"| {CONFIGS[c]}{note} | {_f(r['time_per_update_s'], '{:.3f}')} | "
            f"{_f(r['time_ratio'], '{:.2f}')} | {_f(r['peak_rss_mib'], '{:,.0f}')} | "
            f"{_f(r['rss_ratio'], '{:.2f}')} | {dist} | "
            f"{_f(r['first_update_s'], '{:.2f}')} |"
        )
    return "\n".join(lines)


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for key, name in (("Model name", "cpu"), ("CPU(s)", "cpus"), ("Core(s) per socket", "cores_per_socket")):
            m = re.search(rf"^{re.escape(key)}:\s*(.+)$", out, re.M)
            if m:
                info[name] = m.group(1).strip()
    except OSError:
        pass
    try:
        from importlib import metadata

        info["mindspore"] = metadata.version("mindspore")
    except Exception:  # noqa: BLE001
        info["mindspore"] = "?"
    info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lm,resnet50", help="comma-separated: lm,resnet50")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--updates", type=int, default=3, help="timed updates per process (after the warm-up)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed updates first (>= 1: the first holds the graph compilation)"
    )
    p.add_argument("--accum", type=int, default=4, help="micro-batches per update (N)")
    p.add_argument("--lm-batch", type=int, default=8)
    p.add_argument("--lm-layers", type=int, default=7)
    p.add_argument("--lm-d-model", type=int, default=512)
    p.add_argument("--lm-heads", type=int, default=8)
    p.add_argument("--lm-seq", type=int, default=128)
    p.add_argument("--lm-windows", choices=("unequal", "stream"), default="unequal")
    p.add_argument("--resnet-batch", type=int, default=32)
    p.add_argument("--resnet-norm", choices=("batch", "group"), default="batch")
    p.add_argument("--cifar-dir", default=DEFAULT_CIFAR, help="CIFAR-10 binaries (else random images)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="subset of: " + ",".join(CONFIGS))
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (GPT 1 x 32, context 32, 4 x 4; ResNet50 4 x 4), 2 timed updates",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per process")
    p.add_argument("--json", help="write every raw number here")
    p.add_argument("--work-dir", help="for the data, initial weights and snapshots (default: a temporary folder)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.lm_layers, args.lm_d_model, args.lm_heads, args.lm_seq, args.lm_batch = 1, 32, 2, 32, 4
        args.resnet_batch, args.updates = 4, 2
    if min(args.rounds, args.updates, args.accum, args.warmup) < 1:
        p.error("--rounds, --updates, --warmup and --accum must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS] + [m for m in args.models.split(",") if m not in ("lm", "resnet50")]
    if bad or "ours" not in configs or "big" not in configs:
        raise SystemExit(f"bench_peers: unknown {bad}; --configs must include 'big' and 'ours'")
    info = machine_info()
    print(
        f"# machine: {info.get('cpu', '?')}, {info.get('cpus', info['logical_cpus'])} CPUs "
        f"({info.get('cores_per_socket', '?')} cores per socket), MindSpore {info['mindspore']}, Python "
        f"{info['python']}, ONEDNN_MAX_CPU_ISA=AVX2 in every worker; load average at start "
        f"{info['load_average_at_start']}",
        flush=True,
    )
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_peers_")
    os.makedirs(work, exist_ok=True)
    windows = max(DISTANCE_AFTER, args.warmup + args.updates)
    blocks = []
    for m in args.models.split(","):
        if m == "lm":
            st = dict(
                model=m,
                batch=args.lm_batch,
                layers=args.lm_layers,
                d_model=args.lm_d_model,
                heads=args.lm_heads,
                seq=args.lm_seq,
                lm_windows=args.lm_windows,
            )
        else:
            st = dict(model=m, batch=args.resnet_batch, norm=args.resnet_norm, cifar_dir=args.cifar_dir)
        st.update(mode=args.mode, accum=args.accum, updates=args.updates, warmup=args.warmup)
        data = lm_windows(st, windows) if m == "lm" else resnet_windows(st, windows)
        import numpy as np

        st["data_path"] = os.path.join(work, f"data_{m}.npz")
        np.savez(st["data_path"], x=data.pop("x"), y=data.pop("y"))
        st["init_path"] = os.path.join(work, f"init_{m}.npz")
        blocks.append({"settings": st, "data": data, "configs": configs, "runs": {c: [] for c in configs}})
    try:
        from tqdm import tqdm

        bar = tqdm(total=args.rounds * len(blocks) * len(configs), file=sys.stderr, desc="bench_peers", unit="proc")
    except ImportError:
        bar = None
    t_start = time.perf_counter()
    for r, order in rounds(args.rounds, configs, rotate=True):
        for bl in blocks:
            st = bl["settings"]
            snaps = os.path.join(work, f"snap_{st['model']}_round{r}")
            for c in order:
                label = f"round {r + 1}/{args.rounds} {st['model']} {CONFIGS[c]}"
                if bar is not None:
                    bar.set_postfix_str(label)
                else:
                    print(f"[{time.perf_counter() - t_start:7.0f} s] {label}", file=sys.stderr, flush=True)
                snap = None if c == "micro" else os.path.join(snaps, c)
                res = run_child(dict(st, config=c, snapshot_dir=snap), args.timeout)
                res["round"] = r
                bl["runs"][c].append(res)
                if "error" in res:
                    print(f"  {label}: {res['error']}", file=sys.stderr, flush=True)
                if bar is not None:
                    bar.update(1)
            ref = os.path.join(snaps, "big")
            for c in configs:
                res = bl["runs"][c][-1]
                if c not in ("big", "micro") and "error" not in res and os.path.isdir(ref):
                    res["distance"] = distance(os.path.join(snaps, c), ref)
            shutil.rmtree(snaps, ignore_errors=True)
    if bar is not None:
        bar.close()
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = time.perf_counter() - t_start
    print()
    for bl in blocks:
        bl["summary"] = summarise(bl)
        print(render(bl))
        print()
    print(
        f"load average at start {info['load_average_at_start']}, at the end {info['load_average_at_end']}; "
        f"wall {info['wall_s']:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "blocks": blocks}, f, indent=1)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
