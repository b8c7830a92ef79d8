#!/usr/bin/env python
"""The GPT example against its PyTorch twin: same recipe, identical initial weights, side by side.

Writes the initial weights once (``python -m examples.gpt_lm.train --save-init``), then runs
examples/gpt_lm/train.py (GradAccumCell + FusedAdamW, MindSpore GRAPH mode) and
benchmarks/vs_pytorch/pytorch_gpt_lm.py (PyTorch, AdamW(fused=True), token-sum / window-tokens
accumulation as Hugging Face transformers does it) alternately, each in its own process, both
from those weights, and prints a table of medians over ``--repeats`` rounds, the largest
relative difference between the two runs' first losses (micro-batch losses and per-update window
losses), and writes both loss curves (JSON) and a plot (PNG). Nothing else should run meanwhile:
the two share the same cores.

    python -m benchmarks.vs_pytorch.bench_gpt_vs_pytorch --torch-python /tmp/torchvenv/bin/python \
        --updates 200 --plot docs/gpt_vs_pytorch_loss.png --curves docs/gpt_vs_pytorch_curves.json

Training flags not listed here can be passed after ``--`` and go to both scripts.
PyTorch is not a dependency of the project: give the interpreter that has it with --torch-python.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import rounds as harness
from benchmarks.common.rounds import module_command, worker_env

OURS = "examples.gpt_lm.train"
THEIRS = "benchmarks.vs_pytorch.pytorch_gpt_lm"

ROWS = [
    ("wall_time_s", "wall time (s), process start to end", "{:.0f}"),
    ("train_time_s", "training (s), evaluations included", "{:.0f}"),
    ("first_step_s", "first micro-batch (s, compilation included)", "{:.2f}"),
    ("tokens_per_s", "training tokens/s", "{:.0f}"),
    ("tokens_per_s_after_first_step", "training tokens/s after the first micro-batch", "{:.0f}"),
    ("eval_bits_per_byte", "held-out bits per byte", "{:.4f}"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accum-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--updates", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph", help="MindSpore mode of the example")
    p.add_argument("--repeats", type=int, default=1, help="rounds (ours, then PyTorch); medians are reported")
    p.add_argument("--torch-python", default=sys.executable, help="a Python interpreter with torch installed")
    p.add_argument("--first", type=int, default=5, help="compare the first N losses")
    p.add_argument("--curves", default=None, help="write both runs' loss curves (JSON) here")
    p.add_argument("--plot", default=None, help="write the loss-curve plot (PNG) here")
    p.add_argument("--json", default=None, help="write every run's summary and the medians here")
    p.add_argument("--log-dir", default=None, help="keep each run's stdout here")
    p.add_argument(
        "--from-json",
        nargs=2,
        default=None,
        metavar=("OURS", "PYTORCH"),
        help="run nothing: compare, plot and tabulate two summaries already written with --summary-json",
    )
    p.add_argument("extra", nargs="*", help="more flags for both scripts (after --)")
    return p.parse_args(argv)


def run_job(name, cmd, workdir, log_dir=None):
    """Runs one job (benchmarks.common.rounds.run_job); returns its JSON summary (the last line of its stdout)."""
    s = harness.run_job(name, cmd, workdir, log_dir).result
    print(
        f"   {name}: wall {s['wall_time_s']:.0f} s, {s['tokens_per_s']:.0f} tokens/s, "
        f"held-out {s['eval_bits_per_byte']:.4f} bits/byte",
        flush=True,
    )
    return s


def max_rel_diff(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def plot_curves(path, ours, theirs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    u = range(1, len(ours["update_losses"]) + 1)
    ax.plot(u, ours["update_losses"], lw=1.2, label="mindspore_accum (GradAccumCell + FusedAdamW)")
    ax.plot(u, theirs["update_losses"], lw=1.0, ls="--", label="PyTorch (AdamW fused)")
    for s, m, lab in ((ours, "o", "held-out, ours"), (theirs, "x", "held-out, PyTorch")):
        ax.plot([e["update"] for e in s["evals"]], [e["eval_loss"] for e in s["evals"]], m, ms=5, label=lab)
    ax.set_xlabel("update")
    ax.set_ylabel("cross entropy (nats / byte)")
    ax.set_title(f"byte-level GPT, {ours['params']:,} params, same initial weights", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    common = [
        "--layers",
        str(args.layers),
        "--d-model",
        str(args.d_model),
        "--heads",
        str(args.heads),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--accum-steps",
        str(args.accum_steps),
        "--lr",
        repr(args.lr),
        "--updates",
        str(args.updates),
        "--seed",
        str(args.seed),
        "--no-progress",
        *args.extra,
    ]
    runs = {"ours": [], "pytorch": []}
    t0 = time.perf_counter()
    if args.from_json:
        for key, path in zip(("ours", "pytorch"), args.from_json):
            with open(path) as f:
                runs[key].append(json.loads(f.read().strip().splitlines()[-1]))
        args.repeats = 1
    else:
        run_rounds(args, common, runs)
    report(args, runs, t0)
    return 0


def run_rounds(args, common, runs):
    with tempfile.TemporaryDirectory(prefix="bench_gpt_") as work:
        init = os.path.join(work, "init.npz")
        subprocess.run(
            module_command(OURS, *common, "--save-init", init),
            check=True,
            stdout=subprocess.DEVNULL,
            env=worker_env(cpu_isa_fix=False),
        )
        common += ["--init-weights", init]
        for r, order in harness.rounds(args.repeats, ("ours", "pytorch")):
            for c in order:
                if c == "ours":
                    cmd = module_command(OURS, *common, "--mode", args.mode, "--ckpt-dir", os.path.join(work, f"ck{r}"))
                else:
                    cmd = module_command(THEIRS, *common, python=args.torch_python)
                runs[c].append(run_job(f"{c} #{r + 1}", cmd, work, args.log_dir))


def report(args, runs, t0):
    med = {
        k: {key: statistics.median(s[key] for s in v) for key, _, _ in ROWS if v[0].get(key) is not None}
        for k, v in runs.items()
    }
    ours, theirs = runs["ours"][0], runs["pytorch"][0]
    n = args.first
    rel_micro = max_rel_diff(ours["first_losses"][:n], theirs["first_losses"][:n])
    rel_update = max_rel_diff(ours["update_losses"][:n], theirs["update_losses"][:n])
    rel_all = max_rel_diff(ours["update_losses"], theirs["update_losses"])
    common_n = min(len(ours["update_losses"]), len(theirs["update_losses"]))
    print()
    print(
        f"byte-level GPT {ours['params']:,} params ({ours['layers']} layers, d_model {ours['d_model']}), seq-len "
        f"{ours['seq_len']}, micro-batch {ours['micro_batch']} x {ours['accum_steps']}, {ours['updates']} updates, "
        f"lr {ours['peak_lr']:g}; "
        + (
            f"from {' and '.join(args.from_json)}"
            if args.from_json
            else f"median of {args.repeats} run(s) each ({time.perf_counter() - t0:.0f} s in all)"
        )
    )
    for key in (
        "layers",
        "d_model",
        "heads",
        "seq_len",
        "micro_batch",
        "accum_steps",
        "peak_lr",
        "warmup_updates",
        "total_updates",
        "params",
    ):
        if ours.get(key) != theirs.get(key):
            raise SystemExit(f"the two runs differ in {key}: {ours.get(key)} vs {theirs.get(key)}")
    print()
    print(f"| | mindspore_accum ({ours.get('mode', args.mode).upper()}) | PyTorch | ours / PyTorch |")
    print("|---|--:|--:|--:|")
    for key, label, fmt in ROWS:
        a, b = med["ours"].get(key), med["pytorch"].get(key)
        ratio = f"{a / b:.3f}" if a is not None and b else ""
        print(
            f"| {label} | {fmt.format(a) if a is not None else ''} | {fmt.format(b) if b is not None else ''} "
            f"| {ratio} |"
        )
    print()
    print(f"first {n} micro-batch losses, ours:    {['%.7f' % v for v in ours['first_losses'][:n]]}")
    print(f"first {n} micro-batch losses, PyTorch: {['%.7f' % v for v in theirs['first_losses'][:n]]}")
    print(
        f"largest relative difference: {rel_micro:.2e} (micro-batch losses), {rel_update:.2e} (first {n} "
        f"window losses, i.e. after 0..{n - 1} updates); over the {common_n} window losses both runs have: "
        f"{rel_all:.2e}"
    )
    result = {
        "first_n": n,
        "compared_update_losses": common_n,
        "max_rel_diff_first_micro_losses": rel_micro,
        "max_rel_diff_first_update_losses": rel_update,
        "max_rel_diff_all_update_losses": rel_all,
    }
    if args.curves:
        with open(args.curves, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    **result,
                    "ours": {k: ours[k] for k in ("framework", "first_losses", "update_losses", "evals")},
                    "pytorch": {k: theirs[k] for k in ("framework", "first_losses", "update_losses", "evals")},
                },
                f,
                indent=1,
            )
        print(f"curves -> {args.curves}")
    if args.plot:
        plot_curves(args.plot, ours, theirs)
        print(f"plot -> {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "median": med, **result, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
