#!/usr/bin/env python
"""The example against PyTorch on the same machine: the same ResNet50 / CIFAR-10 job, side by side.

Runs examples/resnet50_cifar10/train.py (GradAccumCell + FusedMomentum, MindSpore GRAPH mode)
and benchmarks/vs_pytorch/pytorch_resnet50_cifar10.py (the same work in PyTorch: same model, data order,
augmentation, accumulation, schedule, checkpoint and evaluation of the written file) one after
the other, alternating, each in its own process, and prints a table of medians over
``--repeats`` rounds with the ratio ours / PyTorch. Nothing else should run meanwhile: the two
share the same 2 cores.

    python -m benchmarks.vs_pytorch.bench_vs_pytorch                 # quick: 1,024 images, 1 epoch, 1,000 test images
    python -m benchmarks.vs_pytorch.bench_vs_pytorch --full   # the acceptance job: all images, 2 epochs (~1 hour)

PyTorch is not a dependency of the project. Give the interpreter that has it with
``--torch-python`` (default: this one), e.g. a venv made with ``pip install torch==2.13.0 tqdm``.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from benchmarks.common import rounds as harness
from benchmarks.common.rounds import REPO, module_command

OURS = "examples.resnet50_cifar10.train"
THEIRS = "benchmarks.vs_pytorch.pytorch_resnet50_cifar10"
SHARED_DATA = os.path.join(REPO, "..", "shared", "data", "cifar10-subset")

ROWS = [
    ("wall_time_s", "wall time (s), process start to end", "{:.0f}"),
    ("train_time_s", "training (s)", "{:.0f}"),
    ("first_step_s", "first micro-batch (s, compile included)", "{:.1f}"),
    ("train_images_per_s_after_first_step", "training images/s after the first micro-batch", "{:.2f}"),
    ("eval_time_s", "evaluation of the checkpoint (s)", "{:.0f}"),
    ("test_accuracy", "test accuracy", "{:.4f}"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data-dir",
        default=SHARED_DATA if os.path.isdir(SHARED_DATA) else None,
        help="CIFAR-10 binary folder (default: the project's shared copy when present)",
    )
    p.add_argument("--full", action="store_true", help="all training and test images, 2 epochs")
    p.add_argument("--limit-train", type=int, default=1024)
    p.add_argument("--limit-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accum-steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1, help="rounds (ours, then PyTorch); medians are reported")
    p.add_argument("--torch-python", default=sys.executable, help="a Python interpreter with torch installed")
    p.add_argument("--ours-only", action="store_true")
    p.add_argument("--torch-only", action="store_true")
    p.add_argument("--json", default=None, help="write every run's summary and the medians here")
    p.add_argument("--log-dir", default=None, help="keep each run's stdout here")
    args = p.parse_args(argv)
    if args.data_dir is None:
        p.error("--data-dir is required (no shared CIFAR-10 copy next to the project)")
    if args.full:
        args.limit_train = args.limit_test = None
        args.epochs = 2
    return args


def run_job(name, cmd, workdir, log_dir=None):
    """Runs one job (benchmarks.common.rounds.run_job); returns its JSON summary (the last line of
    its stdout) plus the elapsed time. With ``log_dir`` its whole stdout is kept there as ``<name>.log``."""
    run = harness.run_job(name, cmd, workdir, log_dir)
    summary = run.result
    summary["elapsed_s"] = round(run.wall_s, 2)
    print(
        f"   {name}: wall {summary['wall_time_s']:.0f} s, train {summary['train_time_s']:.0f} s, "
        f"test accuracy {summary['test_accuracy']}",
        flush=True,
    )
    return summary


def main(argv=None):
    args = parse_args(argv)
    common = [
        "--data-dir",
        os.path.abspath(args.data_dir),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--accum-steps",
        str(args.accum_steps),
    ]
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train)]
    if args.limit_test:
        common += ["--limit-test", str(args.limit_test)]
    runs = {"ours": [], "pytorch": []}
    with tempfile.TemporaryDirectory(prefix="bench_vs_pytorch_") as work:
        contenders = [c for c, skip in (("ours", args.torch_only), ("pytorch", args.ours_only)) if not skip]
        for r, order in harness.rounds(args.repeats, contenders):
            for c in order:
                if c == "ours":
                    cmd = module_command(OURS, *common, "--no-progress", "--ckpt-dir", os.path.join(work, f"ours{r}"))
                else:
                    cmd = module_command(
                        THEIRS, *common, "--ckpt-dir", os.path.join(work, f"pt{r}"), python=args.torch_python
                    )
                runs[c].append(run_job(f"{c} #{r + 1}", cmd, work, args.log_dir))
    med = {
        k: {key: statistics.median(s[key] for s in v) for key, _, _ in ROWS if v and v[0].get(key) is not None}
        for k, v in runs.items()
    }
    first = (runs["ours"] or runs["pytorch"])[0]
    print()
    print(
        f"ResNet50 / CIFAR-10, {first['train_images']:,} training images x {args.epochs} epoch(s), "
        f"micro-batch {args.batch_size} x {args.accum_steps}, {first['updates']} updates, "
        f"{first.get('test_images', 0):,} test images; median of {args.repeats} run(s) each"
    )
    print()
    print("| | mindspore_accum (GRAPH) | PyTorch | ours / PyTorch |")
    print("|---|---|---|---|")
    for key, label, fmt in ROWS:
        a, b = med["ours"].get(key), med["pytorch"].get(key)
        ratio = f"{a / b:.3f}" if a is not None and b else ""
        print(
            f"| {label} | {fmt.format(a) if a is not None else ''} | {fmt.format(b) if b is not None else ''} "
            f"| {ratio} |"
        )
    if runs["pytorch"]:
        print(f"\n(PyTorch: {runs['pytorch'][0]['framework']}, {runs['pytorch'][0]['threads']} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "median": med, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
