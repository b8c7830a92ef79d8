"""Report writer of the large-batch study: markdown tables + PNG plots from result dicts.

NumPy + matplotlib (Agg) only, no MindSpore: ``large_batch_study.py --report-only`` rewrites the
report from cached runs. ``results``: configuration name -> result dict (each holds its
``config``); ``configs``: the planned configurations (a missing one shows as "not measured");
``meta``: machine, command, commit, date, profile, wall time.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Dict, List

import numpy as np

MD_NAME = "large_batch_study.md"
PNG = {
    "cnn_acc": "large_batch_study_cnn_accuracy.png",
    "cnn_loss": "large_batch_study_cnn_loss.png",
    "gpt": "large_batch_study_gpt.png",
}
DPI = 100
METHOD_LABEL = {
    "sgd": "(a) momentum SGD, base lr at every batch",
    "scaled": "(b) linear scaling rule + warm-up",
    "lars": "(c) LARS (FusedLARS), sqrt scaling + warm-up",
    "grow": "(d) growing batch B/4 -> B/2 -> B, no lr decay",
    "adamw": "FusedAdamW, sqrt scaling + warm-up",
    "lamb": "FusedLAMB, sqrt scaling + warm-up",
}
COLORS = {
    "sgd": "tab:blue",
    "scaled": "tab:orange",
    "lars": "tab:green",
    "grow": "tab:red",
    "adamw": "tab:blue",
    "lamb": "tab:green",
}
NA = "not measured"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def mean_std(values: List[float]):
    """(mean, sample std or None with one value, n); non-finite values (diverged runs) excluded."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


def fmt_ms(values: List[float], scale: float = 1.0, digits: int = 1) -> str:
    m, s, n = mean_std(values)
    if m is None:
        return "diverged" if values else NA
    text = f"{m * scale:.{digits}f}"
    if s is not None:
        text += f" ± {s * scale:.{digits}f}"
    bad = len(values) - n
    return text + f" (n={n}" + (f", {bad} diverged" if bad else "") + ")"


def variant(config: dict) -> str:
    """``""`` for a run of the main grid, ``"lr"`` for one from another base rate (``..._lr0.02``),
    ``"epochs"`` for one with another epoch budget (``..._e24``)."""
    tail = config["name"].rsplit("_", 1)[-1]
    if tail.startswith("lr"):
        return "lr"
    if tail.startswith("e") and tail[1:].isdigit():
        return "epochs"
    return ""


def group_cells(results: Dict[str, dict], study: str) -> Dict[tuple, List[dict]]:
    """(method, effective batch) -> the results of that cell over seeds. At batch 32 the ``sgd``
    run is also the ``scaled`` run (the rules coincide there)."""
    cells = defaultdict(list)
    for r in results.values():
        c = r["config"]
        if c["study"] != study or variant(c):
            continue
        cells[(c["method"], c["effective_batch"])].append(r)
        if study == "cnn" and c["method"] == "sgd" and c["effective_batch"] == c["base_batch"]:
            cells[("scaled", c["effective_batch"])].append(r)
    return cells


def _planned(configs: List[dict], study: str):
    methods, batches = [], []
    for c in configs:
        if c["study"] == study and not variant(c):
            methods.append(c["method"]) if c["method"] not in methods else None
            batches.append(c["effective_batch"]) if c["effective_batch"] not in batches else None
    if study == "cnn" and "sgd" in methods and "scaled" not in methods:
        methods.append("scaled")
    order = list(METHOD_LABEL)
    return sorted(methods, key=order.index), sorted(batches)


def cnn_rows(results, configs) -> List[List[str]]:
    cells = group_cells(results, "cnn")
    methods, batches = _planned(configs, "cnn")
    rows = []
    for b in batches:
        for m in methods:
            rs = cells.get((m, b), [])
            planned = any(c["method"] == m and c["effective_batch"] == b for c in configs) or (m == "scaled" and rs)
            if not rs and not planned:
                continue
            c = rs[0]["config"] if rs else None
            acc = [r["test_accuracy"] for r in rs]
            gap = [r["train_accuracy"] - r["test_accuracy"] for r in rs]
            rows.append(
                [
                    b,
                    m,
                    rs[0]["updates"] if rs else NA,
                    _lr_text(c) if c else NA,
                    fmt_ms(acc, 100.0) if rs else NA,
                    fmt_ms([r["train_accuracy"] for r in rs], 100.0) if rs else NA,
                    fmt_ms(gap, 100.0) if rs else NA,
                    fmt_ms([r["train_s"] for r in rs if "train_s" in r], 1.0, 0) if rs else NA,
                ]
            )
    return rows


def _lr_text(c: dict) -> str:
    from benchmarks.batch_size_study.large_batch_workers import peak_lr

    text = f"{peak_lr(c):.3g}"
    if c.get("warmup_updates"):
        text += f" (warm-up {c['warmup_updates']})"
    return text


def gpt_rows(results, configs) -> List[List[str]]:
    cells = group_cells(results, "gpt")
    methods, batches = _planned(configs, "gpt")
    rows = []
    for b in batches:
        for m in methods:
            rs = cells.get((m, b), [])
            c = rs[0]["config"] if rs else None
            rows.append(
                [
                    b,
                    m,
                    rs[0]["updates"] if rs else NA,
                    _lr_text(c) if c else NA,
                    fmt_ms([r["eval_bits_per_byte"] for r in rs], 1.0, 3) if rs else NA,
                    fmt_ms([r["train_s"] for r in rs if "train_s" in r], 1.0, 0) if rs else NA,
                ]
            )
    return rows


def sensitivity_rows(results: Dict[str, dict]) -> List[List[str]]:
    """The runs of (a) and (b) from a second base rate (names ending in ``_lr<rate>``), each beside
    the main run of the same method, batch and seed."""
    rows = []
    sens = [r for r in results.values() if r["config"]["study"] == "cnn" and variant(r["config"]) == "lr"]
    for r in sorted(
        sens, key=lambda r: (r["config"]["effective_batch"], list(METHOD_LABEL).index(r["config"]["method"]))
    ):
        c = r["config"]
        main = results.get(c["name"].rsplit("_lr", 1)[0])
        rows.append(
            [
                c["effective_batch"],
                c["method"],
                r["updates"],
                f"{c['base_lr']:g} -> {_lr_text(c)}",
                "diverged" if r.get("diverged") else f"{100 * r['test_accuracy']:.1f}",
                f"{main['config']['base_lr']:g} -> {_lr_text(main['config'])}" if main else NA,
                ("diverged" if main.get("diverged") else f"{100 * main['test_accuracy']:.1f}") if main else NA,
            ]
        )
    return rows


def longer_rows(results: Dict[str, dict]) -> List[List[str]]:
    """The runs with another epoch budget (``..._e<epochs>``), each beside the main run."""
    rows = []
    runs = [r for r in results.values() if r["config"]["study"] == "cnn" and variant(r["config"]) == "epochs"]
    for r in sorted(runs, key=lambda r: list(METHOD_LABEL).index(r["config"]["method"])):
        c = r["config"]
        main = results.get(c["name"].rsplit("_e", 1)[0])

        def acc(x):
            return "diverged" if x.get("diverged") else f"{100 * x['test_accuracy']:.1f}"

        rows.append(
            [
                c["effective_batch"],
                c["method"],
                f"{main['config']['epochs']} -> {c['epochs']}" if main else c["epochs"],
                f"{main['updates']} -> {r['updates']}" if main else r["updates"],
                f"{acc(main)} -> {acc(r)}" if main else acc(r),
            ]
        )
    return rows


def sweep_rows(sweep: Dict[str, dict]) -> List[List[str]]:
    rows = []
    for name in sorted(
        sweep, key=lambda n: (sweep[n]["config"]["study"], sweep[n]["config"]["method"], sweep[n]["config"]["base_lr"])
    ):
        r, c = sweep[name], sweep[name]["config"]
        score = (
            f"{100 * r['test_accuracy']:.1f} % test accuracy"
            if c["study"] == "cnn"
            else f"{r['eval_bits_per_byte']:.3f} bits/byte"
        )
        if r.get("diverged"):
            score = "diverged"
        budget = f"{c['epochs']} epochs" if c["study"] == "cnn" else f"{c['sequences']} sequences"
        if c["study"] == "cnn" and "arch" not in c:
            budget += " (earlier variant: stride 1 in the first layer)"
        rows.append([c["study"], c["method"], f"{c['base_lr']:g}", c["effective_batch"], budget, score])
    return rows


def _diff_text(a: List[float], b: List[float], scale: float, unit: str) -> str:
    """``mean(a) - mean(b)`` and whether it exceeds twice the seeds' spread (the larger std)."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if ma is None or mb is None:
        return "not comparable (a run diverged or is missing)"
    d = (ma - mb) * scale
    spread = max(sa or 0.0, sb or 0.0) * scale
    if na < 2 or nb < 2:
        verdict = "one seed: spread unknown"
    elif abs(d) > 2 * spread:
        verdict = f"beyond twice the seed spread ({spread:.2f})"
    else:
        verdict = f"within twice the seed spread ({spread:.2f}): not a measured difference"
    return f"{d:+.2f} {unit} ({verdict})"


def summary_lines(results, configs) -> List[str]:
    """Sentences computed from the numbers: each method at the largest batch against the base batch's
    run, and against the scaling rule."""
    out = []
    cells = group_cells(results, "cnn")
    methods, batches = _planned(configs, "cnn")
    if len(batches) >= 2 and ("sgd", batches[0]) in cells:
        base = [r["test_accuracy"] for r in cells[("sgd", batches[0])]]
        for b in batches[1:]:
            out.append(f"* CNN, batch {b}, test accuracy against batch {batches[0]} ({fmt_ms(base, 100.0)} %):")
            for m in methods:
                if (m, b) in cells:
                    acc = [r["test_accuracy"] for r in cells[(m, b)]]
                    vs = _diff_text(acc, base, 100.0, "points")
                    line = f"    * {METHOD_LABEL[m]}: {fmt_ms(acc, 100.0)} %, {vs}"
                    if m != "scaled" and ("scaled", b) in cells:
                        sc = [r["test_accuracy"] for r in cells[("scaled", b)]]
                        line += f"; against (b): {_diff_text(acc, sc, 100.0, 'points')}"
                    out.append(line)
    gcells = group_cells(results, "gpt")
    _, gb = _planned(configs, "gpt")
    for b in gb:
        if ("adamw", b) in gcells and ("lamb", b) in gcells:
            a = [r["eval_bits_per_byte"] for r in gcells[("adamw", b)]]
            la = [r["eval_bits_per_byte"] for r in gcells[("lamb", b)]]
            out.append(f"* GPT, batch {b}: LAMB - AdamW = {_diff_text(la, a, 1.0, 'bits/byte')}")
    return out


# ============================================================================ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cnn_accuracy(results, path):
    plt = _plt()
    cells = group_cells(results, "cnn")
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.6), dpi=DPI)
    for m in ("sgd", "scaled", "lars", "grow"):
        pts = sorted((b, cells[(mm, b)]) for (mm, b) in cells if mm == m)
        if not pts:
            continue
        xs = [b for b, _ in pts]
        for ax, key in ((axes[0], "test_accuracy"), (axes[1], "updates")):
            # updates: the plan's (a diverged run stops early)
            stats = [
                mean_std([r[key] if key == "test_accuracy" else r["config"]["plan_updates"]["total"] for r in rs])
                for _, rs in pts
            ]
            ys = [s[0] * (100 if key == "test_accuracy" else 1) if s[0] is not None else np.nan for s in stats]
            es = [(s[1] or 0.0) * (100 if key == "test_accuracy" else 1) for s in stats]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=COLORS[m], label=METHOD_LABEL[m])
    axes[0].set_ylabel("test accuracy, % (mean ± std over seeds)")
    axes[1].set_ylabel("optimizer updates in the epoch budget")
    axes[1].set_yscale("log")
    ticks = sorted({b for (_, b) in cells})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.set_xlabel("effective batch (final batch for (d))")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("GroupNorm CNN on the CIFAR-10 subset, fixed epoch budget")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cnn_loss(results, path):
    """Training loss (window means) against epochs, per method, at the smallest and largest batch, seed 0."""
    plt = _plt()
    runs = [r for r in results.values() if r["config"]["study"] == "cnn" and not variant(r["config"])]
    if not runs:
        return
    batches = sorted({r["config"]["effective_batch"] for r in runs})
    seed0 = min(r["config"]["seed"] for r in runs)
    shown = sorted({batches[len(batches) // 2], batches[-1]})
    fig, axes = plt.subplots(1, len(shown), figsize=(6.0 * len(shown), 4.6), dpi=DPI, squeeze=False)
    ref = [
        r
        for r in runs
        if r["config"]["effective_batch"] == batches[0]
        and r["config"]["method"] == "sgd"
        and r["config"]["seed"] == seed0
    ]
    for ax, b in zip(axes[0], shown):
        for r in ref:
            _loss_line(ax, r, "black", f"batch {batches[0]} (reference)")
        for r in sorted(runs, key=lambda r: list(METHOD_LABEL).index(r["config"]["method"])):
            c = r["config"]
            if c["effective_batch"] == b and c["seed"] == seed0 and r["loss_per_update"]:
                _loss_line(ax, r, COLORS[c["method"]], METHOD_LABEL[c["method"]])
        ax.set_title(f"effective batch {b}, seed {seed0}")
        ax.set_xlabel("epochs")
        ax.set_ylabel("training loss (mean over each update's window)")
        ax.set_ylim(0.0, 3.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _loss_line(ax, r, color, lbl):
    c = r["config"]
    pts = np.asarray(r["loss_per_update"], float)
    x = pts[:, 0] / c["train_images"]
    y = pts[:, 1]
    if len(y) > 200:  # smooth the per-update noise of the small batches (a trailing mean)
        k = len(y) // 100
        y = np.convolve(y, np.ones(k) / k, mode="valid")
        x = x[k - 1 :]
    ax.plot(x, y, color=color, label=lbl, lw=1.2)


def plot_gpt(results, path):
    plt = _plt()
    cells = group_cells(results, "gpt")
    if not cells:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.6), dpi=DPI)
    for m in ("adamw", "lamb"):
        pts = sorted((b, cells[(mm, b)]) for (mm, b) in cells if mm == m)
        if not pts:
            continue
        stats = [mean_std([r["eval_bits_per_byte"] for r in rs]) for _, rs in pts]
        axes[0].errorbar(
            [b for b, _ in pts],
            [s[0] if s[0] is not None else np.nan for s in stats],
            yerr=[s[1] or 0.0 for s in stats],
            marker="o",
            capsize=3,
            color=COLORS[m],
            label=METHOD_LABEL[m],
        )
        big = pts[-1][1]
        for r in big:
            if r["loss_per_update"]:
                pts_ = np.asarray(r["loss_per_update"], float)
                axes[1].plot(pts_[:, 0], pts_[:, 1] / math.log(2), color=COLORS[m], lw=1.0, alpha=0.8)
        axes[1].plot([], [], color=COLORS[m], label=f"{m}, batch {pts[-1][0]} (each seed)")
    axes[0].set_xscale("log", base=2)
    ticks = sorted({b for (_, b) in cells})
    axes[0].set_xticks(ticks, [str(b) for b in ticks])
    axes[0].set_xlabel("effective batch (sequences)")
    axes[0].set_ylabel("held-out bits per byte (mean ± std over seeds)")
    axes[1].set_xlabel("training sequences seen")
    axes[1].set_ylabel("training bits per byte (window mean)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("GPT on the standard library's sources, fixed budget of sequences")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ============================================================================ the page


def _load_sweep(out_dir: str) -> Dict[str, dict]:
    d = os.path.join(out_dir, "large_batch_study_runs", "sweep")
    out = {}
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            if f.endswith(".json") and not f.startswith("_"):
                try:
                    with open(os.path.join(d, f)) as fh:
                        out[f[:-5]] = json.load(fh)
                except (OSError, ValueError):
                    pass
    seen, unique = set(), {}
    for name in sorted(out):  # a result kept under two names (a copy) is one row
        key = json.dumps(out[name].get("config"), sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique[name] = out[name]
    return unique


def write_report(results: Dict[str, dict], meta: dict, out_dir: str, configs: List[dict]) -> List[str]:
    """Writes the markdown page and its PNGs into ``out_dir``; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    plots = (("cnn_acc", plot_cnn_accuracy), ("cnn_loss", plot_cnn_loss), ("gpt", plot_gpt))
    written = {}
    for key, fn in plots:
        p = os.path.join(out_dir, PNG[key])
        if os.path.exists(p):
            os.remove(p)
        fn(results, p)
        if os.path.isfile(p):
            written[key] = PNG[key]
            paths.append(p)
    md = os.path.join(out_dir, MD_NAME)
    with open(md, "w") as f:
        f.write("\n".join(page_lines(results, meta, configs, written, _load_sweep(out_dir))) + "\n")
    paths.append(md)
    return paths


def page_lines(results, meta, configs, pngs: Dict[str, str], sweep: Dict[str, dict]) -> List[str]:
    m = meta.get("machine", {})
    cnn_cfg = next((c for c in configs if c["study"] == "cnn"), None)
    gpt_cfg = next((c for c in configs if c["study"] == "gpt"), None)
    wall = meta.get("study_wall_s")
    out = [
        "# Large-batch study: the scaling rule, LARS, LAMB and a growing batch",
        "",
        "<!-- generated by benchmarks/batch_size_study/large_batch_study.py: edit the generator, not this page -->",
        "",
        "What goes wrong when the effective batch grows far past the one a learning rate was tuned for, at a fixed",
        "budget of epochs, and which of the known remedies hold. Every larger batch is reached by accumulation",
        "(`GradAccumCell`); the networks have no BatchNorm, so an accumulated update equals the large batch's update.",
        "",
        "## The run",
        "",
        f"* command: `{meta.get('command', '(unknown)')}` (profile `{meta.get('profile')}`)",
        f"* date: {meta.get('date', '?')}; git commit {meta.get('commit', '?')}",
        f"* machine: {m.get('cpu', '?')}, {m.get('logical_cpus', '?')} logical CPUs (shared with other jobs: "
        f"load average {m.get('load_average_at_start', '?')} at the start), MindSpore {m.get('mindspore', '?')}, "
        f"mindspore_accum {m.get('mindspore_accum', '?')}",
        f"* wall time of the whole run: {wall / 60:.0f} min" if wall else "* wall time: (not recorded)",
    ]
    out += [f"* {meta['note']}"] if meta.get("note") else []
    out += [""]
    if cnn_cfg:
        c = cnn_cfg
        out += [
            "## CIFAR-10: a GroupNorm CNN",
            "",
            f"{c['train_images']:,} training images (random crop and flip), {c['test_images']:,} test images, "
            f"{c['epochs']} epochs for every configuration. Network: 4 conv3x3 + GroupNorm + ReLU layers "
            f"({c['width']}-{2 * c['width']}-{4 * c['width']}-{4 * c['width']} channels, strides 2-2-2-1), global "
            "average pooling, a dense layer. Micro-batches: 32 at batch 32, else min(128, B/4). Momentum 0.9, "
            f"weight decay {c['weight_decay']:g}; all but (d) halve the rate at 50 % and 75 % of their updates. "
            f"Warm-up: linear from the base rate over {meta.get('warmup_epochs', '?')} epoch(s) of updates. "
            "Base rates chosen at batch 32 (table at the end), then each method's rule applied unchanged:",
            "",
        ]
        out += [f"* {METHOD_LABEL[k]}" for k in ("sgd", "scaled", "lars", "grow")]
        out += [
            "",
            f"Test accuracy on the test images; train accuracy on the first {c['train_eval_images']:,} training images "
            "(no augmentation); "
            "gap = train - test. Mean ± sample std over seeds (n = seeds); updates = optimizer steps in the "
            "budget; peak lr = the rate after warm-up (warm-up length in updates; for (d), 1 epoch at its mean "
            "updates per epoch); train s = training seconds per run on a shared, loaded machine (a cost, not a "
            "speed benchmark). A run whose loss became non-finite counts as diverged.",
            "",
        ]
        out += _table(
            ["batch", "method", "updates", "peak lr", "test acc %", "train acc %", "gap %", "train s"],
            cnn_rows(results, configs),
        )
        out += [""]
        if "cnn_acc" in pngs:
            out += [f"![CNN accuracy and updates vs batch]({pngs['cnn_acc']})", ""]
        if "cnn_loss" in pngs:
            out += [f"![CNN training loss]({pngs['cnn_loss']})", ""]
    if gpt_cfg:
        g = gpt_cfg
        out += [
            "## GPT on text: AdamW vs LAMB",
            "",
            f"examples/gpt_lm's GPT ({g['layers']} layers, d_model {g['d_model']}, {g['heads']} heads, "
            f"{g['seq_len']}-byte sequences), bytes of the Python standard library's sources (every 20th file "
            "held out), "
            f"{g['sequences']:,} training sequences for every batch; gradient clipping at norm 1; warm-up over "
            "10 % of the updates, rate halved at 50 % and 75 %; base rates chosen at the smallest batch, scaled "
            "by sqrt(B / B0). "
            f"Held-out bits per byte over {g['eval_batches']} batches of held-out sequences.",
            "",
        ]
        out += _table(
            ["batch", "optimizer", "updates", "peak lr", "held-out bits/byte", "train s"], gpt_rows(results, configs)
        )
        out += [""]
        if "gpt" in pngs:
            out += [f"![GPT bits per byte]({pngs['gpt']})", ""]
    sens = sensitivity_rows(results)
    if sens:
        out += [
            "## (a) and (b) from another base rate (seed 0)",
            "",
            "The sweep's re-check on the final network preferred a smaller SGD base rate at its 2-epoch budget; "
            "these runs repeat (a) and (b) from it, to see whether the scaling rule's result depends on the rate "
            "it scales.",
            "",
        ]
        out += _table(
            ["batch", "method", "updates", "base -> peak lr", "test acc %", "main run: base -> peak lr", "test acc %"],
            sens,
        )
        out += [""]
    longer = longer_rows(results)
    if longer:
        out += [
            "## The largest batch with more epochs (seed 0)",
            "",
            "The same configurations with four times the epoch budget: what more updates buy at the largest batch.",
            "",
        ]
        out += _table(["batch", "method", "epochs", "updates", "test acc %"], longer)
        out += [""]
    summary = summary_lines(results, configs)
    if summary:
        out += ["## The differences, with their spread", ""] + summary + [""]
    if sweep:
        out += [
            "## The base-rate sweep (smallest batch, one seed, a shorter budget)",
            "",
            "Each method's base rate was picked here, at the smallest batch only, and then scaled by the method's "
            "rule. The CNN rows marked 'earlier variant' ran before the network's first layer got stride 2 "
            "(to fit the time budget); the unmarked CNN rows, where present, are the re-check on the final network.",
            "",
        ]
        out += _table(["study", "method", "base lr", "batch", "budget", "result"], sweep_rows(sweep))
        out += [""]
    missing = [c["name"] for c in configs if c["name"] not in results]
    if missing:
        out += [f"Not measured (failed or not run): {', '.join(missing)}.", ""]
    return out
