#!/usr/bin/env python
"""Accumulation in MindSpore's default mode (PYNATIVE) against the tutorial's ``@ms.jit`` step
(issue 24, acceptance 2).

Per model and optimizer, each contender of benchmarks/overhead/default_mode_worker.py runs in its
OWN process, alternated round by round (the order rotates by one each round):

* ``tutorial``      MindSpore's tutorial step, ``@ms.jit`` + ``value_and_grad`` + the optimizer,
                    one update per micro-batch, no accumulation -- the reference;
* ``trainonestep``  ``nn.TrainOneStepCell`` called from Python;
* ``cell``          ``GradAccumCell`` called from Python (the README's usage);
* ``cell-eager``    the same with ``jit_micro_step=False`` (an eager micro-step; not run by default);
* ``accumulator``   ``GradAccumulator`` inside the user's ``@ms.jit`` step (where the build has it).

Measured per process: the micro-step (median of the calls that do not end a window), the update
(median of whole windows of N calls: the plain contenders make N updates in it, the accumulating
ones one), and the first window (its N calls, compilation included). Reported: medians over
rounds, and for each comparison the median of the per-round ratios (the machine drifts: a ratio
taken inside a round cancels it). Targets (issue 24): micro-step and update <= 1.05 x the
tutorial's, first window <= 1.5 x TrainOneStepCell's first N steps.

Parity: after the timing, ``cell`` and ``accumulator`` each run ``--parity-updates`` windows in
their own process and their weights are compared with the tutorial step on the big batch (N x B)
from the same weights: max |w - w_big| <= 1e-5 x max |w_big|, so the speed is of a correct thing.
BatchNorm (ResNet50) is frozen in these runs: in training mode a micro-batch's statistics are not
the big batch's, whatever the accumulation does.

    python -m benchmarks.overhead.bench_default_mode --rounds 3 --report docs/bench_default_mode.md
    python -m benchmarks.overhead.bench_default_mode --models gpt --gpt-layers 1 --gpt-d-model 32 --quick

``ONEDNN_MAX_CPU_ISA=AVX2`` is set before MindSpore is imported in every process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.common.rounds import median, module_command, per_round_ratios, rounds, run_worker
from benchmarks.overhead.bench_overhead import machine_info

WORKER = "benchmarks.overhead.default_mode_worker"
CONTENDERS = ("tutorial", "trainonestep", "cell", "cell-eager", "accumulator")
DEFAULT_CONTENDERS = ("tutorial", "trainonestep", "cell", "accumulator")
ACCUMULATING = ("cell", "cell-eager", "accumulator")
LABELS = {
    "tutorial": "tutorial: `@ms.jit` train_step, {plain} (reference)",
    "trainonestep": "`nn.TrainOneStepCell`, {plain}, from Python",
    "cell": "`GradAccumCell`, {fused}, from Python",
    "cell-eager": "`GradAccumCell(jit_micro_step=False)`, {fused}, from Python",
    "accumulator": "`GradAccumulator`, {fused}, in the user's `@ms.jit` step",
}
OPTIMIZERS = {"momentum": ("nn.Momentum", "FusedMomentum"), "adamw": ("nn.AdamWeightDecay", "FusedAdamW")}
# micro-batch and timed windows per process (on the shared 2 vCPUs: GPT ~0.1-2.5 s a micro-step,
# ResNet50 ~1-5 s)
MODELS = {"gpt": dict(batch=8, windows=2), "resnet50": dict(batch=8, windows=1)}
TARGETS = {"micro_step": 1.05, "update": 1.05, "first_window": 1.5}
PARITY_TOL = 1e-5


def run_child(cfg: dict, timeout: float) -> dict:
    what = f"{cfg['model']}/{cfg['optimizer']}/{cfg['contender']}"
    try:
        run = run_worker(module_command(WORKER, json.dumps(cfg)), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench_default_mode: {what} timed out after {timeout:.0f} s") from None
    if run.result is None:
        sys.stderr.write(run.proc.stderr[-6000:])
        raise SystemExit(f"bench_default_mode: {what} failed (exit code {run.proc.returncode})")
    out = run.result
    out["process_wall_s"] = run.wall_s
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


# ============================================================================ summary


def summarise(block: dict) -> dict:
    """Medians over rounds; per-round ratios against the tutorial (and TrainOneStepCell for the
    first window) and their medians; which targets hold."""
    runs = block["runs"]
    present = [c for c in block["contenders"] if runs[c]]
    s = {"rounds": len(runs["tutorial"]), "contenders": {}}
    for c in present:
        rs = runs[c]
        keys = ("micro_step_s", "update_s", "first_window_s", "first_call_s", "cpu_micro_step_s", "cpu_update_s")
        row = {k: median(r[k] for r in rs) for k in keys}

        def ratios(key, ref, rs=rs):
            per = per_round_ratios([r[key] for r in rs], [r[key] for r in runs[ref]])
            return {"median": median(per), "per_round": per}

        row["ratios"] = {
            "micro_step / tutorial": ratios("micro_step_s", "tutorial"),
            "update / tutorial": ratios("update_s", "tutorial"),
            "first_window / trainonestep": ratios("first_window_s", "trainonestep"),
            "first_window / tutorial": ratios("first_window_s", "tutorial"),
            "cpu micro_step / tutorial": ratios("cpu_micro_step_s", "tutorial"),
            "cpu update / tutorial": ratios("cpu_update_s", "tutorial"),
        }
        if c in ACCUMULATING:
            keys = ("micro_step / tutorial", "update / tutorial", "first_window / trainonestep")
            values = [row["ratios"][k]["median"] for k in keys]
            row["targets"] = {
                t: None if v is None else v <= TARGETS[t]
                for t, v in zip(("micro_step", "update", "first_window"), values)
            }
        s["contenders"][c] = row
    return s


def parity(block: dict, workdir: str, timeout: float) -> dict:
    """Each accumulating contender's weights after ``updates`` windows against the big batch's."""
    st = block["settings"]
    cfg = dict(st, updates=st["parity_updates"], freeze_bn=st["model"] == "resnet50")
    paths = {}
    for c in ["big"] + [c for c in ACCUMULATING if c in block["contenders"] and block["runs"][c]]:
        paths[c] = os.path.join(workdir, f"{st['model']}_{st['optimizer']}_{c}.npz")
        res = run_child(dict(cfg, contender=c, weights_out=paths[c]), timeout)
        block.setdefault("parity_runs", {})[c] = res
    big = np.load(paths.pop("big"))
    names = [k for k in big.files if not k.startswith("init:")]
    w_max = max(float(np.max(np.abs(big[k]))) for k in names)
    upd_max = max(float(np.max(np.abs(big[k].astype(np.float64) - big["init:" + k]))) for k in names)
    out = {}
    for c, path in paths.items():
        w = np.load(path)
        diff = max(float(np.max(np.abs(w[k].astype(np.float64) - big[k]))) for k in names)
        same_start = all(np.array_equal(w["init:" + k], big["init:" + k]) for k in names)
        updates = block["parity_runs"][c]["updates"]
        out[c] = dict(
            max_abs_diff=diff,
            rel_to_weights=diff / w_max,
            rel_to_update=diff / upd_max if upd_max > 0 else float("inf"),
            updates=updates,
            passed=bool(same_start and updates == st["parity_updates"] and upd_max > 0 and diff <= PARITY_TOL * w_max),
        )
    return out


# ============================================================================ rendering


def _f(x, fmt="{:.3f}"):
    return "n/a" if x is None else fmt.format(x)


def _ratio(row, key, target=None):
    v = row["ratios"][key]["median"]
    if v is None:
        return "n/a"
    mark = "" if target is None else (" ✓" if v <= target else " ✗")
    return f"{v:.2f}{mark}"


def render(block: dict) -> str:
    st, s = block["settings"], block["summary"]
    n, b = st["accum"], st["batch"]
    plain, fused = OPTIMIZERS[st["optimizer"]]
    if st["model"] == "gpt":
        what = (
            f"GPT (examples/gpt_lm: {st['gpt_layers']} layers, d_model {st['gpt_d_model']}, "
            f"{st['gpt_heads']} heads, context {st['gpt_seq']}), micro-batch {b} sequences"
        )
    else:
        what = f"ResNet50 (examples/resnet50_cifar10, CIFAR shapes), micro-batch {b} images"
    lines = [
        f"### {what}, N = {n}, {plain} / {fused}, PYNATIVE",
        "",
        f"Medians of {s['rounds']} round(s) ({st['windows']} timed windows of {n} calls per process, after the "
        "first); ratios: median of the per-round ratios (✓ / ✗: issue 24's target, 1.05 / 1.05 / 1.5).",
        "",
        f"| contender | micro-step (ms) | × tutorial | update: {n} micro-batches (ms) | × tutorial "
        f"| first window, compile included (s) | × TrainOneStepCell | × tutorial |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c, row in s["contenders"].items():
        acc = c in ACCUMULATING
        lines.append(
            f"| {LABELS[c].format(plain=plain, fused=fused)} | {_f(row['micro_step_s'] * 1e3, '{:.1f}')} | "
            f"{_ratio(row, 'micro_step / tutorial', TARGETS['micro_step'] if acc else None)} | "
            f"{_f(row['update_s'] * 1e3, '{:.0f}')} | "
            f"{_ratio(row, 'update / tutorial', TARGETS['update'] if acc else None)} | "
            f"{_f(row['first_window_s'], '{:.2f}')} | "
            f"{_ratio(row, 'first_window / trainonestep', TARGETS['first_window'] if acc else None)} | "
            f"{_ratio(row, 'first_window / tutorial')} |"
        )
    for c in block["contenders"]:
        if not block["runs"][c]:
            lines.append(f"| {LABELS[c].format(plain=plain, fused=fused)}: not in this build | | | | | | | |")
    lines += [
        "",
        "The same calls in CPU time (user + system, all threads of the process): less sensitive than wall "
        "time to other jobs on the machine, but it counts MindSpore's threads spinning while they wait.",
        "",
        f"| contender | micro-step CPU (ms) | × tutorial | update CPU: {n} micro-batches (ms) | × tutorial |",
        "|---|--:|--:|--:|--:|",
    ]
    for c, row in s["contenders"].items():
        lines.append(
            f"| {c} | {_f(row['cpu_micro_step_s'] * 1e3, '{:.1f}')} | {_ratio(row, 'cpu micro_step / tutorial')} | "
            f"{_f(row['cpu_update_s'] * 1e3, '{:.0f}')} | {_ratio(row, 'cpu update / tutorial')} |"
        )
    lines += ["", "Per-round ratios, wall time (micro-step; update; first window vs TrainOneStepCell):", ""]
    for c, row in s["contenders"].items():
        if c == "tutorial":
            continue
        r = row["ratios"]
        per = "; ".join(
            ", ".join(_f(x, "{:.2f}") for x in r[k]["per_round"])
            for k in ("micro_step / tutorial", "update / tutorial", "first_window / trainonestep")
        )
        lines.append(f"- {c}: {per}")
    par = block.get("parity")
    if par:
        lines += [
            "",
            f"Parity, {st['parity_updates']} updates from the same weights against the tutorial step on the "
            f"big batch ({n * b}){' (BatchNorm frozen)' if st['model'] == 'resnet50' else ''}:",
            "",
            "| contender | max abs(w - w_big) / max abs(w_big) | / max abs(update) | updates | |",
            "|---|--:|--:|--:|---|",
        ]
        for c, p in par.items():
            lines.append(
                f"| {c} | {p['rel_to_weights']:.1e} | {p['rel_to_update']:.1e} | {p['updates']} | "
                f"{'pass' if p['passed'] else 'FAIL'} (tolerance {PARITY_TOL:g} x max abs(w)) |"
            )
    return "\n".join(lines)


def header(info: dict, loads: list) -> str:
    return (
        f"Machine: {info.get('cpu', '?')}, {info['logical_cpus']} logical CPUs, MindSpore "
        f"{info.get('mindspore', '?')}, {info['date_utc']} UTC. Load average (1 min) at the start "
        f"{info.get('load_average_at_start', ['?'])[0]}, after each process {[x[0] for x in loads]}: "
        "a load above the CPU count means other jobs shared the CPUs during the run."
    )


# ============================================================================ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="gpt,resnet50", help="comma-separated: gpt,resnet50")
    p.add_argument("--optimizers", default="momentum", help="comma-separated: momentum,adamw (one table each)")
    p.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated, of {','.join(CONTENDERS)}; tutorial is required (every ratio is against it)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds of alternated contenders (>= 1)")
    p.add_argument("--windows", type=int, default=None, help="timed windows per process (default per model)")
    p.add_argument("--batch", type=int, default=None, help="micro-batch size (default 8)")
    p.add_argument("--accum", type=int, default=4, help="micro-batches per update N (>= 2)")
    p.add_argument("--gpt-layers", type=int, default=4)
    p.add_argument("--gpt-d-model", type=int, default=256)
    p.add_argument("--gpt-heads", type=int, default=4)
    p.add_argument("--gpt-seq", type=int, default=128)
    p.add_argument("--parity-updates", type=int, default=2, help="updates of the parity runs (0: no parity check)")
    p.add_argument("--quick", action="store_true", help="1 round, 1 timed window: a smoke run")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    p.add_argument("--json", help="write every raw number here")
    p.add_argument("--report", help="write the markdown page (command, machine, tables) here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.windows = 1, 1
    if args.rounds < 1 or args.accum < 2 or (args.windows is not None and args.windows < 1):
        p.error("--rounds and --windows must be >= 1, --accum >= 2")
    for name, value, known in (
        ("--models", args.models, MODELS),
        ("--optimizers", args.optimizers, OPTIMIZERS),
        ("--contenders", args.contenders, CONTENDERS),
    ):
        bad = [v for v in value.split(",") if v not in known]
        if bad or not value:
            p.error(f"{name}: unknown {bad or value!r}; choose from {', '.join(known)}")
    if "tutorial" not in args.contenders.split(","):
        p.error("--contenders must include tutorial: every ratio is against it")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    contenders = [c for c in CONTENDERS if c in args.contenders.split(",")]
    blocks = []
    for model in args.models.split(","):
        for opt in args.optimizers.split(","):
            settings = dict(
                model=model,
                optimizer=opt,
                batch=args.batch or MODELS[model]["batch"],
                accum=args.accum,
                windows=args.windows or MODELS[model]["windows"],
                gpt_layers=args.gpt_layers,
                gpt_d_model=args.gpt_d_model,
                gpt_heads=args.gpt_heads,
                gpt_seq=args.gpt_seq,
                parity_updates=args.parity_updates,
                seed=0,
            )
            blocks.append({"settings": settings, "contenders": list(contenders), "runs": {c: [] for c in contenders}})
    info = machine_info()
    print(f"# {info.get('cpu', '?')}, {info['logical_cpus']} CPUs, MindSpore {info.get('mindspore', '?')}", flush=True)
    loads, absent = [], set()
    for bl in blocks:
        for r, order in rounds(args.rounds, contenders, rotate=True):
            for c in order:
                if c in absent:
                    continue
                st = bl["settings"]
                print(f"round {r + 1}: {st['model']}/{st['optimizer']}/{c}", file=sys.stderr, flush=True)
                res = run_child(dict(st, contender=c), args.timeout)
                if not res["available"]:
                    absent.add(c)  # this build lacks it: reported as such
                    continue
                bl["runs"][c].append(res)
                loads.append(res["load_average_after"])
        bl["summary"] = summarise(bl)
    ok = True
    if args.parity_updates > 0:
        with tempfile.TemporaryDirectory(prefix="bench_default_mode_") as tmp:
            for bl in blocks:
                bl["parity"] = parity(bl, tmp, args.timeout)
                ok = ok and all(p["passed"] for p in bl["parity"].values())
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = "\n\n".join([header(info, loads)] + [render(bl) for bl in blocks])
    print()
    print(text)
    command = "python -m benchmarks.overhead.bench_default_mode " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.report:
        with open(args.report, "w") as f:
            f.write(report_page(command, text))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "command": command, "blocks": blocks}, f, indent=1)
    return 0 if ok else 1


def report_page(command: str, tables: str) -> str:
    return f"""# The default mode at compiled speed (benchmark)

Generated by `benchmarks/overhead/bench_default_mode.py` (issue 24, acceptance 2): gradient
accumulation in MindSpore's default mode (PYNATIVE) -- `GradAccumCell` called from Python and
`GradAccumulator` inside the user's `@ms.jit` step -- against the training step of MindSpore's
tutorials (`@ms.jit` + `value_and_grad` + the optimizer, no accumulation) and `nn.TrainOneStepCell`.
Every contender runs in its own process; contenders alternate round by round (the order rotates);
a comparison is the median of the per-round ratios (see benchmarks/README.md, "The rule").

* **micro-step**: the median call that does not end a window (the plain steps update at every
  call, the accumulating ones only accumulate);
* **update**: a whole window of N calls (N updates for the plain steps, one for the accumulating ones);
* **first window**: the first N calls of a fresh process, compilation included;
* **parity**: the accumulating contenders' weights after the same updates as the big batch's.

```bash
{command}
```

{tables}
"""


if __name__ == "__main__":
    sys.exit(main())
