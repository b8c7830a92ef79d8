#!/usr/bin/env python
"""The large-batch study (issue 27): what goes wrong at very large effective batches, and what helps.

Effective batches from 32 to 4,096 through accumulation (``GradAccumCell``; micro-batches of 32 at
batch 32, else min(128, B/4): without BatchNorm the micro-batch changes the speed, not the update),
at a fixed budget of epochs, each run in its own process, results cached as JSON:

* **CIFAR-10** (the 10,000 + 10,000 image subset, ``--data``), a 4-layer GroupNorm CNN (no
  BatchNorm: an accumulated update is exactly the large batch's update), four methods:

  - ``sgd``     momentum SGD at the base learning rate whatever the batch (``FusedMomentum``);
  - ``scaled``  the linear scaling rule with warm-up (``mindspore_accum.large_batch``);
  - ``lars``    ``FusedLARS`` with warm-up and square-root scaling;
  - ``grow``    a growing batch in place of learning-rate decay (Smith et al. 2017): the batch
    is B/4, then B/2, then B where the others divide the rate by 2 (an ``accumulation_steps``
    schedule), the rate that of batch B/4 by the scaling rule, never decayed.

  All but ``grow`` divide the rate by 2 at 50 % and 75 % of the updates; ``sgd`` and ``scaled``
  coincide at batch 32 (one run, shown in both rows). Base rates were picked at batch 32
  (``--sweep`` runs that sweep), then each method's rule sets the rate at the other batches.
* **GPT** (examples/gpt_lm, bytes of the standard library's sources), ``FusedAdamW`` vs
  ``FusedLAMB`` at a fixed number of training sequences, square-root scaling with warm-up.

    python -m benchmarks.batch_size_study.large_batch_study --quick        # ~2 min on 2 quiet cores
    python -m benchmarks.batch_size_study.large_batch_study                # the full study (~90 min of runs)
    python -m benchmarks.batch_size_study.large_batch_study --sweep        # the base-rate sweep
    python -m benchmarks.batch_size_study.large_batch_study --report-only  # rewrite the report

Results: ``<out-dir>/large_batch_study_runs/<profile>/<name>.json``; the report
``<out-dir>/large_batch_study.md`` and its PNGs. A cached result whose configuration matches is
reused (``--force`` reruns). ``ONEDNN_MAX_CPU_ISA=AVX2`` is set before MindSpore is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from benchmarks.batch_size_study.batch_size_study import machine_info
from benchmarks.common.cached_runs import add_runner_arguments, load_results, run_configuration
from benchmarks.common.rounds import REPO as ROOT

MODULE = "benchmarks.batch_size_study.large_batch_study"
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-subset", "cifar-10-batches-bin"))
RESULT_VERSION = 1
METHODS = ("sgd", "scaled", "lars", "grow")
GPT_METHODS = ("adamw", "lamb")

# Base rates picked at the smallest batch by the --sweep profile (see the report).
BASE = dict(sgd_lr=0.05, lars_lr=2.0, adamw_lr=3e-3, lamb_lr=3e-2)

PROFILES = {
    # seconds on 2 cores: the smoke test's profile (synthetic images, a tiny model)
    "smoke": dict(
        cnn=dict(batches=(32, 128), train_images=512, test_images=500, epochs=2, width=8, seeds=(0,)),
        gpt=dict(batches=(16,), sequences=256, micro_batch=8, seq_len=32, layers=1, d_model=32, heads=2),
        gpt_seeds=(0,),
        extra_seeds=(),
    ),
    "quick": dict(
        cnn=dict(batches=(32, 512), train_images=4096, test_images=2000, epochs=3, width=16, seeds=(0,)),
        gpt=dict(batches=(16, 128), sequences=2048, micro_batch=64, seq_len=32, layers=2, d_model=64, heads=2),
        gpt_seeds=(0,),
        extra_seeds=(),
    ),
    "full": dict(
        cnn=dict(batches=(32, 512, 4096), train_images=10000, test_images=10000, epochs=6, width=16, seeds=(0, 1)),
        gpt=dict(batches=(16, 128, 1024), sequences=8192, micro_batch=64, seq_len=32, layers=2, d_model=64, heads=2),
        gpt_seeds=(0, 1),
        extra_seeds=(2,),  # a third seed for the accumulated batches, where the methods part
        # (a) and (b) again from another base rate (the re-check of the sweep preferred it): does the
        # scaling rule's result depend on the base rate it scales?
        sensitivity=dict(sgd_lr=0.02, batches=(32, 512, 4096), methods=("sgd", "scaled"), seed=0),
        # the largest batch with four times the epochs: how much of its loss is the number of updates?
        longer=dict(batch=4096, epochs=24, seed=0),
    ),
    # the base-rate sweep at batch 32 (one seed, the full profile's settings, fewer epochs)
    "sweep": dict(
        cnn=dict(batches=(32,), train_images=10000, test_images=10000, epochs=2, width=16, seeds=(0,)),
        gpt=dict(batches=(16,), sequences=2048, micro_batch=16, seq_len=32, layers=2, d_model=64, heads=2),
        gpt_seeds=(0,),
        extra_seeds=(),
    ),
}
SWEEP = dict(sgd=(0.02, 0.05, 0.1), lars=(0.5, 2.0, 8.0), adamw=(1e-3, 3e-3, 1e-2), lamb=(3e-3, 1e-2, 3e-2, 1e-1))


# ============================================================================ the plan


def cnn_updates(micro_total: int, accum: int, growth: bool, decay: bool) -> dict:
    """Update counts for ``micro_total`` micro-batches: total, the step-decay milestones (50 %, 75 %
    of the updates) or, for the growing batch, the ``(from_update, steps)`` pairs that double the
    batch at 50 % and 75 % of the micro-batches (starting at accum / 4)."""
    if not growth:
        total = micro_total // accum
        return dict(total=total, decay_at=[total // 2, (3 * total) // 4] if decay else [], growth=None)
    k1, k2, k3 = accum // 4, accum // 2, accum
    u1 = (micro_total // 2) // k1
    u2 = (micro_total // 4) // k2
    u3 = (micro_total - u1 * k1 - u2 * k2) // k3
    return dict(total=u1 + u2 + u3, decay_at=[], growth=[[0, k1], [u1, k2], [u1 + u2, k3]])


def _cnn_config(args, prof, method, batch, seed, base_lr=None, name=None, epochs=None):
    c = prof["cnn"]
    epochs = epochs or args.epochs_override or c["epochs"]
    # No BatchNorm: the micro-batch size does not change the update, only the speed. Batch 32 is
    # one micro-batch; larger batches accumulate >= 4 micro-batches of at most 128 images.
    micro = batch if batch <= 32 else min(128, batch // 4)
    accum = batch // micro
    opt = "lars" if method == "lars" else "momentum"
    start_batch = batch // 4 if method == "grow" else batch
    scaling = {"sgd": "none", "scaled": "linear", "lars": "sqrt", "grow": "linear"}[method]
    micro_total = epochs * (c["train_images"] // micro)
    up = cnn_updates(micro_total, accum, method == "grow", method != "grow")
    per_epoch = up["total"] / epochs
    warm = 0 if method == "sgd" else max(1, round(args.warmup_epochs * per_epoch)) if start_batch > 32 else 0
    lr = base_lr if base_lr is not None else BASE["lars_lr" if method == "lars" else "sgd_lr"]
    return dict(
        study="cnn",
        name=name or f"cnn_{method}_b{batch}_s{seed}",
        method=method,
        optimizer=opt,
        effective_batch=batch,
        start_batch=start_batch,
        base_batch=32,
        micro_batch=micro,
        accum=accum,
        growth=up["growth"],
        plan_updates=dict(total=up["total"], decay_at=up["decay_at"]),
        base_lr=lr,
        scaling=scaling,
        warmup_updates=warm,
        decay=0.5,
        momentum=0.9,
        weight_decay=5e-4,
        trust_coef=0.001,
        epochs=epochs,
        train_images=c["train_images"],
        test_images=c["test_images"],
        train_eval_images=min(2000, c["train_images"]),
        width=c["width"],
        arch="conv3x3-GN-ReLU x4, strides 2-2-2-1",
        augment=True,
        seed=seed,
        mode=args.mode,
        data_dir=args.data if args.data == "synthetic" else os.path.abspath(args.data),
        version=RESULT_VERSION,
    )


def _gpt_config(args, prof, method, batch, seed, base_lr=None, name=None):
    g = prof["gpt"]
    micro = min(batch, g["micro_batch"])  # the profile's micro_batch is the largest micro-batch
    total = g["sequences"] // batch
    return dict(
        study="gpt",
        name=name or f"gpt_{method}_b{batch}_s{seed}",
        method=method,
        optimizer=method,
        effective_batch=batch,
        start_batch=batch,
        base_batch=g["batch_base"] if "batch_base" in g else g["batches"][0],
        micro_batch=micro,
        accum=batch // micro,
        growth=None,
        plan_updates=dict(total=total, decay_at=[total // 2, (3 * total) // 4]),
        base_lr=base_lr if base_lr is not None else BASE[f"{method}_lr"],
        scaling="sqrt",
        warmup_updates=max(1, total // 10),
        decay=0.5,
        weight_decay=0.1 if method == "adamw" else 0.01,
        sequences=g["sequences"],
        seq_len=g["seq_len"],
        layers=g["layers"],
        d_model=g["d_model"],
        heads=g["heads"],
        eval_batches=64,
        text_glob=args.text_glob,
        seed=seed,
        mode=args.mode,
        version=RESULT_VERSION,
    )


def plan(args) -> list:
    """The configurations of one profile, in run order (JSON-able dicts with unique names)."""
    prof = PROFILES[args.profile]
    configs = []
    if args.profile == "sweep":
        for m in ("sgd", "lars"):
            for lr in SWEEP[m]:
                configs.append(_cnn_config(args, prof, m, 32, 0, base_lr=lr, name=f"cnn_{m}_b32_lr{lr:g}"))
        for m in GPT_METHODS:
            b = prof["gpt"]["batches"][0]
            for lr in SWEEP[m]:
                configs.append(_gpt_config(args, prof, m, b, 0, base_lr=lr, name=f"gpt_{m}_b{b}_lr{lr:g}"))
        return configs

    def cnn_seed(seed, batches):
        for batch in batches:
            for m in METHODS:
                if m == "scaled" and batch == 32:
                    continue  # the same run as sgd at the base batch
                if m == "grow" and batch // 4 < 32:
                    continue  # the growing batch starts at B/4 >= one micro-batch
                configs.append(_cnn_config(args, prof, m, batch, seed))

    seeds = list(prof["cnn"]["seeds"])
    cnn_seed(seeds[0], prof["cnn"]["batches"])
    if not args.no_gpt:
        for seed in prof["gpt_seeds"]:
            for batch in prof["gpt"]["batches"]:
                for m in GPT_METHODS:
                    configs.append(_gpt_config(args, prof, m, batch, seed))
    for seed in seeds[1:]:
        cnn_seed(seed, prof["cnn"]["batches"])
    for seed in prof["extra_seeds"]:  # last: the part a short run can do without
        cnn_seed(seed, prof["cnn"]["batches"][1:])
    sens = prof.get("sensitivity")
    if sens:
        lr = sens["sgd_lr"]
        for b in sens["batches"]:
            for m in sens["methods"]:
                if not (m == "scaled" and b == 32):
                    name = f"cnn_{m}_b{b}_s{sens['seed']}_lr{lr:g}"
                    configs.append(_cnn_config(args, prof, m, b, sens["seed"], base_lr=lr, name=name))
    longer = prof.get("longer")
    if longer:
        b, e, seed = longer["batch"], longer["epochs"], longer["seed"]
        for m in METHODS:
            configs.append(_cnn_config(args, prof, m, b, seed, name=f"cnn_{m}_b{b}_s{seed}_e{e}", epochs=e))
    return configs


# ============================================================================ running


def worker_main(config_json: str, out_path: str) -> None:
    from benchmarks.batch_size_study import large_batch_workers as w

    config = json.loads(config_json)
    result = (w.train_cnn if config["study"] == "cnn" else w.train_gpt)(config)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(config=config, **result), f, indent=1)
    os.replace(tmp, out_path)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="a small grid (minutes)")
    prof.add_argument("--smoke", action="store_true", help="the smoke test's profile (use with --data synthetic)")
    prof.add_argument("--sweep", action="store_true", help="the base-rate sweep at the smallest batch")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="CIFAR-10 binary folder (default ../shared/data/cifar10-subset/cifar-10-batches-bin), or 'synthetic'",
    )
    p.add_argument("--text-glob", help="the GPT's text files (default: the Python standard library's .py files)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "docs"), help="report, PNGs and cached runs (default docs/)")
    p.add_argument("--epochs", dest="epochs_override", type=int, help="CNN epochs (overrides the profile's)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="CNN warm-up length in epochs (default 1)")
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--no-gpt", action="store_true", help="the CNN part only")
    add_runner_arguments(p)
    args = p.parse_args(argv)
    args.profile = "quick" if args.quick else "smoke" if args.smoke else "sweep" if args.sweep else "full"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.worker_out)
        return 0
    if args.data != "synthetic" and not os.path.isdir(args.data):
        print(
            f"error: --data {args.data}: no such folder (give the CIFAR-10 binary folder, or 'synthetic')",
            file=sys.stderr,
        )
        return 2
    configs = plan(args)
    if args.list:
        for c in configs:
            print(json.dumps(c))
        return 0
    names = {c["name"] for c in configs}
    if args.only and set(args.only) - names:
        print(f"error: unknown configuration(s) {sorted(set(args.only) - names)}; --list shows them", file=sys.stderr)
        return 2
    run_dir = os.path.join(args.out_dir, "large_batch_study_runs", args.profile)
    os.makedirs(run_dir, exist_ok=True)
    meta_path = os.path.join(run_dir, "_meta.json")
    if not args.report_only:
        meta = dict(
            machine=machine_info(),
            profile=args.profile,
            command="python -m "
            + " ".join(shlex.quote(a) for a in [MODULE] + list(sys.argv[1:] if argv is None else argv)),
            commit=git_commit(),
            warmup_epochs=args.warmup_epochs,
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
            status={},
        )
        t0 = time.perf_counter()
        for i, c in enumerate(configs, 1):
            if args.only and c["name"] not in args.only:
                continue
            t = time.perf_counter()
            print(f"[{i}/{len(configs)}] {c['name']}", flush=True)
            _, how = run_configuration(MODULE, c, os.path.join(run_dir, c["name"] + ".json"), args.force, args.timeout)
            meta["status"][c["name"]] = how
            print(f"[{i}/{len(configs)}] {c['name']}: {how} ({time.perf_counter() - t:.0f} s)", flush=True)
        meta["study_wall_s"] = time.perf_counter() - t0
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
    else:
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = dict(machine=machine_info(), profile=args.profile, command="(unknown)")
    from benchmarks.batch_size_study import large_batch_report

    results = load_results(configs, run_dir)
    for path in large_batch_report.write_report(results, meta, args.out_dir, configs):
        print(f"wrote {os.path.relpath(path)}")
    missing = [c["name"] for c in configs if c["name"] not in results]
    if missing:
        print(f"missing results: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
