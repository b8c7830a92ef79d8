"""Report writer of the batch-size study: markdown tables + PNG plots from result dicts.

Pure Python + NumPy + matplotlib (Agg): no MindSpore, so it is unit-tested on synthetic results
(tests/benchmarks/test_study_report.py) and can rewrite the report from cached runs
(``batch_size_study.py --report-only``).

Input: ``results``, a dict configuration name -> result dict as written by the study's workers
(each holds its ``config``); ``meta``: machine, command, profile, wall time. Any configuration
may be missing (a failed or not yet run configuration): its rows say "not measured".
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

MD_NAME = "batch_size_study.md"
PNG = {
    "loss": "batch_size_study_loss.png",
    "memory": "batch_size_study_memory.png",
    "throughput": "batch_size_study_throughput.png",
    "equivalence": "batch_size_study_equivalence.png",
}
DPI = 100
FIGSIZE = {"loss": (12.0, 5.0), "memory": (8.0, 5.0), "throughput": (8.0, 5.0), "equivalence": (12.0, 5.0)}
# Pixel size of each PNG (figsize * DPI; the figures are saved without tight bounding boxes).
PIXELS = {k: (int(round(w * DPI)), int(round(h * DPI))) for k, (w, h) in FIGSIZE.items()}

TRAIN_PANEL = ("plain32", "plain128", "accum32x4_ours", "accum32x4_mindspore")
METHOD_LABEL = {
    "plain": "plain batch",
    "ours": "GradAccumCell + FusedMomentum (ours)",
    "mindspore": "mindspore.boost.GradientAccumulation + nn.Momentum",
}
COLORS = {
    "plain32": "tab:blue",
    "plain128": "tab:orange",
    "accum32x4_ours": "tab:green",
    "accum32x4_mindspore": "tab:red",
}
NA = "not measured"


def label(result_or_config: dict) -> str:
    c = result_or_config.get("config", result_or_config)
    if c.get("kind") == "distance":
        return f"{'BatchNorm' if c['norm'] == 'batch' else 'GroupNorm'} ResNet50"
    if c["method"] == "plain":
        return f"plain batch {c['micro_batch']}"
    who = "ours" if c["method"] == "ours" else "MindSpore boost"
    return f"accumulation {c['micro_batch']}x{c['accum_steps']} ({who})"


def _f(x, fmt="{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    return fmt.format(x)


def _timed(r: dict, text: str) -> str:
    """Marks a time measured on the first (compiling) update only."""
    return text + " *" if r.get("timed_updates") == 0 and text != NA else text


UNTIMED_NOTE = "\\* only one update was run: the value includes graph compilation."


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _block_means(loss_per_micro, block: int, total: int) -> List[Optional[float]]:
    """Mean loss over consecutive blocks of ``block`` samples (micro-batch losses weighted by size)."""
    sums = np.zeros(total // block)
    counts = np.zeros(total // block)
    prev = 0
    for seen, loss in loss_per_micro:
        size = seen - prev
        idx = (seen - 1) // block
        if idx < len(sums):
            sums[idx] += loss * size
            counts[idx] += size
        prev = seen
    return [float(s / c) if c else None for s, c in zip(sums, counts)]


# ============================================================================ plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def plot_loss(results: dict, path: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE["loss"], constrained_layout=True)
    block = 128
    for name in TRAIN_PANEL:
        r = results.get(name)
        if r is None:
            continue
        xs, ys = zip(*r["loss_per_update"])
        ax1.plot(
            xs,
            ys,
            marker="o" if len(xs) <= 40 else None,
            ms=3,
            lw=1.0 if r["config"]["effective_batch"] < block else 1.8,
            alpha=0.75 if r["config"]["effective_batch"] < block else 1.0,
            color=COLORS.get(name),
            label=f"{label(r)} ({r['updates']} update{'s' if r['updates'] != 1 else ''})",
        )
        total = r["config"]["samples"]
        means = _block_means(r["loss_per_micro"], block, total)
        bx = [(i + 1) * block for i, m in enumerate(means) if m is not None]
        by = [m for m in means if m is not None]
        ax2.plot(bx, by, marker="o" if len(bx) <= 40 else None, ms=3, lw=1.5, color=COLORS.get(name), label=label(r))
    ax1.set_title("Training loss per optimizer update")
    ax1.set_xlabel("training samples seen (images)")
    ax1.set_ylabel("training loss (cross-entropy, nats)")
    ax2.set_title(
        f"Training loss averaged over each block of {block} samples\n(the same images for every configuration)"
    )
    ax2.set_xlabel("training samples seen (images)")
    ax2.set_ylabel(f"mean training loss over the {block}-sample block (nats)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, NA, ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("ResNet50 / CIFAR-10: training loss vs samples seen", fontsize=12)
    _save(fig, path)


def _series(results: dict, key: str) -> Dict[str, list]:
    """method -> sorted [(effective batch, value, result name)] over all non-distance results."""
    out: Dict[str, list] = {}
    for name, r in results.items():
        c = r["config"]
        if c.get("kind") == "distance" or r.get(key) is None:
            continue
        out.setdefault(c["method"], []).append((c["effective_batch"], r[key], name))
    for v in out.values():
        v.sort()
    return out


def _batch_axis(ax, batches):
    ax.set_xscale("log", base=2)
    if batches:
        ticks = sorted(set(batches))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlim(min(ticks) / 1.3, max(ticks) * 1.3)
    ax.minorticks_off()


def _plot_vs_batch(results, key, path, which, title, ylabel, fmt, secondary=None):
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE[which], constrained_layout=True)
    styles = {
        "plain": dict(color="tab:orange", marker="s", label="plain batch (micro-batch = effective batch)"),
        "ours": dict(color="tab:green", marker="o", label="accumulation 32 x k, GradAccumCell (ours)"),
        "mindspore": dict(color="tab:red", marker="^", ms=9, ls="none", label="accumulation 32 x k, mindspore.boost"),
    }
    batches = []
    for method, pts in _series(results, key).items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        batches += xs
        st = dict(styles.get(method, dict(label=method)))
        ax.plot(xs, ys, lw=1.8, ms=st.pop("ms", 7), **st)
        untimed = {p[0] for p in _series(results, "timed_updates").get(method, []) if p[1] == 0}
        for x, y in zip(xs, ys):
            text = fmt.format(y) + (" *" if key != "peak_rss_mib" and x in untimed else "")
            # plain below right, ours above left, boost above right: no overlap where all three meet
            offset, ha = {"plain": ((6, -14), "left"), "ours": ((-6, 8), "right")}.get(method, ((8, 10), "left"))
            ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, ha=ha, fontsize=8, color=st["color"])
        if secondary:
            pts2 = [p for p in _series(results, secondary).get(method, [])]
            if pts2:
                ax.plot(
                    [p[0] for p in pts2],
                    [p[1] for p in pts2],
                    lw=1.0,
                    ls="--" if method != "mindspore" else "none",
                    marker=st.get("marker"),
                    mfc="none",
                    ms=7,
                    color=st["color"],
                    label=st["label"].split(",")[0] + ": after the first update (compiled, steady state)",
                )
    _batch_axis(ax, batches)
    if key != "peak_rss_mib" and any(r.get("timed_updates") == 0 for r in results.values()):
        ax.text(
            0.99,
            0.02,
            "* only one update: the value includes graph compilation",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
        )
    ax.set_title(title)
    ax.set_xlabel("effective batch (images per optimizer update; log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=9)
        lo, hi = ax.get_ylim()
        ax.set_ylim(0, hi * 1.08)
    else:
        ax.text(0.5, 0.5, NA, ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)


def plot_memory(results: dict, path: str) -> None:
    _plot_vs_batch(
        results,
        "peak_rss_mib",
        path,
        "memory",
        "Peak resident memory of a training process vs effective batch\n(ResNet50 / CIFAR-10, CPU)",
        "peak resident set size, VmHWM (MiB)",
        "{:.0f}",
        secondary="peak_rss_steady_mib",
    )


def plot_throughput(results: dict, path: str) -> None:
    _plot_vs_batch(
        results,
        "images_per_s",
        path,
        "throughput",
        "Training throughput vs effective batch\n(ResNet50 / CIFAR-10, CPU; first update not timed)",
        "training throughput (images/s)",
        "{:.1f}",
    )


def plot_equivalence(results: dict, path: str) -> None:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIGSIZE["equivalence"], constrained_layout=True)
    styles = {
        "distance_batchnorm": dict(color="tab:red", marker="o"),
        "distance_groupnorm": dict(color="tab:blue", marker="s"),
    }
    for name in ("distance_batchnorm", "distance_groupnorm"):
        r = results.get(name)
        if r is None:
            continue
        c = r["config"]
        lab = f"{label(r)}: {c['micro_batch']}x{c['accum_steps']} (ours) vs plain {c['effective_batch']}"
        floor = 1e-12  # an exact zero cannot be drawn on a log axis
        ax1.plot(r["update"], [max(v, floor) for v in r["rel_l2"]], lw=1.8, label=lab, **styles[name])
        ax2.plot(r["update"], [max(v, floor) for v in r["max_abs"]], lw=1.8, label=lab, **styles[name])
    ax1.axhline(np.finfo(np.float32).eps, color="gray", ls="--", lw=1, label="float32 machine epsilon (1.19e-7)")
    ax1.set_title("Relative parameter distance after each update\n||w_accum - w_plain|| / ||w_plain||")
    ax1.set_ylabel("relative L2 distance (dimensionless, log scale)")
    ax2.set_title("Largest parameter difference after each update\nmax |w_accum - w_plain|")
    ax2.set_ylabel("max absolute difference (weight units, log scale)")
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.set_xlabel("optimizer update (same initial weights, same 128 images per update)")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if any(ln.get_label()[0] != "_" and "epsilon" not in ln.get_label() for ln in ax.get_lines()):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, NA, ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(
        "Equivalence of accumulation 32x4 and batch 128: BatchNorm vs GroupNorm (no batch statistics)", fontsize=12
    )
    _save(fig, path)


# ============================================================================ markdown


def _get(results, name, key):
    r = results.get(name)
    return None if r is None else r.get(key)


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def key_findings(results: dict) -> List[str]:
    out = []
    acc, big, small, ms_ = (results.get(n) for n in ("accum32x4_ours", "plain128", "plain32", "accum32x4_mindspore"))
    if acc and big:
        ratio = acc["peak_rss_mib"] / big["peak_rss_mib"]
        s = (
            f"**Memory:** accumulation 32x4 (ours) peaked at {acc['peak_rss_mib']:.0f} MiB vs "
            f"{big['peak_rss_mib']:.0f} MiB for plain batch 128 (x{ratio:.2f}, "
            f"{acc['peak_rss_mib'] - big['peak_rss_mib']:+.0f} MiB)"
        )
        if small:
            s += f"; plain batch 32 peaked at {small['peak_rss_mib']:.0f} MiB"
        out.append(s + ".")
    parts = [f"{label(r)} " + _timed(r, f"{r['images_per_s']:.2f}") + " images/s" for r in (small, big, acc, ms_) if r]
    if parts:
        out.append("**Throughput** (first update, which compiles the graphs, not timed): " + "; ".join(parts) + ".")
    gn, bn = results.get("distance_groupnorm"), results.get("distance_batchnorm")
    if gn and bn:
        out.append(
            f"**Equivalence:** after {len(gn['rel_l2'])} updates the relative parameter distance between "
            f"accumulation 32x4 and plain batch 128 is {gn['rel_l2'][-1]:.2e} with GroupNorm (float rounding; "
            f"max |diff| {gn['max_abs'][-1]:.2e}) and {bn['rel_l2'][-1]:.2e} with BatchNorm "
            f"(x{_ratio(bn['rel_l2'][-1], gn['rel_l2'][-1]) or float('nan'):.0f}; max |diff| "
            f"{bn['max_abs'][-1]:.2e}): BatchNorm normalises each micro-batch of 32 with its own "
            f"statistics, so accumulation cannot reproduce batch 128 exactly."
        )
    elif gn or bn:
        r = gn or bn
        out.append(
            f"**Equivalence ({label(r)}):** relative distance {r['rel_l2'][-1]:.2e} after "
            f"{len(r['rel_l2'])} updates (the other variant was not measured)."
        )
    if acc and ms_:
        t = acc["time_per_update_s"] / ms_["time_per_update_s"]
        m = acc["peak_rss_mib"] / ms_["peak_rss_mib"]
        out.append(
            "**Ours vs MindSpore's own accumulation (32x4):** "
            + _timed(acc, f"{acc['time_per_update_s']:.2f}")
            + " s vs "
            + _timed(ms_, f"{ms_['time_per_update_s']:.2f}")
            + f" s per update (x{t:.3f}); peak memory "
            f"{acc['peak_rss_mib']:.0f} vs {ms_['peak_rss_mib']:.0f} MiB (x{m:.2f})."
        )
    return out


def _machine_lines(meta: dict) -> List[str]:
    m = meta.get("machine", {})
    rows = [[k, str(v)] for k, v in m.items()]
    return _table(["machine", "value"], rows) if rows else ["(machine not recorded)"]


def _wall(results) -> float:
    return float(sum(r.get("wall_s", 0.0) for r in results.values()))


def render_markdown(results: dict, meta: dict) -> str:
    L: List[str] = []
    profile = meta.get("profile", "?")
    L += [
        "# Batch size and gradient accumulation, measured",
        "",
        "<!-- Generated by benchmarks/batch_size_study/batch_size_study.py "
        "(report writer: benchmarks/batch_size_study/study_report.py). "
        "Do not edit by hand: rerun the study. -->",
        "",
        "ResNet50 (the example's, CIFAR stem, 23.5 M parameters) trained on real CIFAR-10 on the CPU, "
        "each configuration in its own process. What the source articles argue about batch size, "
        "accumulation and BatchNorm, measured on this machine.",
        "",
    ]
    L += [
        f"- Profile: **{profile}**; date: {meta.get('date', '?')}",
        f"- Command: `{meta.get('command', '?')}`",
        f"- Wall time of the study: {_f(meta.get('study_wall_s'), '{:.0f} s')} for the last invocation; "
        f"{_wall(results):.0f} s summed over the configurations' own processes "
        f"(configurations cached from an earlier invocation are not rerun).",
        "",
    ]
    findings = key_findings(results)
    if findings:
        L += ["## Key results", ""] + [f"- {f}" for f in findings] + [""]
        if any(r.get("timed_updates") == 0 for r in results.values()):
            L += [UNTIMED_NOTE, ""]

    # ---- training panel
    L += [
        "## Training panel: the same samples for every configuration",
        "",
        f"![loss vs samples seen]({PNG['loss']})",
        "",
    ]
    rows = []
    for name in TRAIN_PANEL:
        r = results.get(name)
        if r is None:
            rows.append([name, NA] + [""] * 9)
            continue
        c = r["config"]
        rows.append(
            [
                label(r),
                c["effective_batch"],
                c["samples"],
                r["updates"],
                _f(c["lr"], "{:g}"),
                _f(r["loss_per_update"][-1][1]),
                _f(r.get("test_accuracy"), "{:.2%}"),
                _timed(r, _f(r["images_per_s"], "{:.2f}")),
                _timed(r, _f(r["time_per_update_s"], "{:.2f}")),
                _f(r["first_update_s"], "{:.1f}"),
                _f(r["peak_rss_mib"], "{:.0f}"),
            ]
        )
    L += _table(
        [
            "configuration",
            "effective batch",
            "training samples",
            "updates",
            "lr",
            "loss, last update",
            "test accuracy",
            "images/s",
            "time per update (s, median)",
            "first update incl. compile (s)",
            "peak RSS (MiB)",
        ],
        rows,
    )
    if any(r.get("timed_updates") == 0 for r in results.values()):
        L += ["", UNTIMED_NOTE]
    test_n = next((r.get("test_images") for r in results.values() if r.get("test_images")), None)
    L += [
        "",
        f"Test accuracy on the first {test_n} images of the test split (evaluated in eval mode after training)."
        if test_n
        else "",
        "",
    ]

    # ---- loss by samples seen
    present = [n for n in TRAIN_PANEL if n in results]
    if present:
        total = min(results[n]["config"]["samples"] for n in present)
        quarter = max(128, (total // 4) // 128 * 128)
        edges = list(range(0, total, quarter))
        header = ["samples seen"] + [label(results[n]) for n in present]
        rows = []
        for lo in edges:
            hi = min(lo + quarter, total)
            row = [f"{lo}-{hi}"]
            for n in present:
                vals = [loss for s, loss in results[n]["loss_per_micro"] if lo < s <= hi]
                row.append(_f(float(np.mean(vals)) if vals else None))
            rows.append(row)
        L += [
            "### Training loss by samples seen",
            "",
            "Mean training loss of the micro-batches (batches) whose samples fall in each range; "
            "all configurations see the same images in the same order, with the same augmentation.",
            "",
        ]
        L += _table(header, rows) + [""]
        # per update, for the effective-batch-128 configurations (plain 32: mean over the same 128 samples)
        per = {n: _block_means(results[n]["loss_per_micro"], 128, total) for n in present}
        rows = []
        for i in range(total // 128):
            rows.append([i + 1, (i + 1) * 128] + [_f(per[n][i]) for n in present])
        L += [
            "### Training loss per update of 128 samples",
            "",
            "For plain batch 32 (four updates per 128 samples) the value is the mean of its four batches.",
            "",
        ]
        L += _table(["update (of 128)", "samples seen"] + [label(results[n]) for n in present], rows) + [""]

    # ---- memory and throughput vs effective batch
    L += [
        "## Memory and throughput vs effective batch",
        "",
        f"![peak memory vs effective batch]({PNG['memory']})",
        "",
        f"![throughput vs effective batch]({PNG['throughput']})",
        "",
    ]
    rows = []
    for _name, r in sorted(
        ((n, r) for n, r in results.items() if r["config"].get("kind") != "distance"),
        key=lambda kv: (kv[1]["config"]["effective_batch"], kv[1]["config"]["method"]),
    ):
        c = r["config"]
        rows.append(
            [
                label(r),
                c["micro_batch"],
                c["accum_steps"],
                c["effective_batch"],
                r["updates"],
                _f(r["peak_rss_mib"], "{:.0f}"),
                _f(r.get("peak_rss_steady_mib"), "{:.0f}"),
                _f(r.get("rss_before_model_mib"), "{:.0f}"),
                _timed(r, _f(r["images_per_s"], "{:.2f}")),
                _timed(r, _f(r["time_per_update_s"], "{:.2f}")),
            ]
        )
    if not rows:
        rows.append([NA] + [""] * 9)
    L += _table(
        [
            "configuration",
            "micro-batch",
            "accumulation steps",
            "effective batch",
            "updates",
            "peak RSS (MiB)",
            "peak RSS after the first update (MiB)",
            "RSS before the model (MiB)",
            "images/s",
            "time per update (s, median)",
        ],
        rows,
    )
    if any(r.get("timed_updates") == 0 for r in results.values()):
        L += ["", UNTIMED_NOTE]
    L += [
        "",
        "Peak RSS is the process's VmHWM after training (before evaluation): framework, data, weights, "
        "optimizer state, accumulators, the activations of one micro-batch, and whatever graph compilation "
        'and MindSpore\'s memory pools hold. "Peak RSS after the first update" is the VmHWM reset '
        "(`/proc/self/clear_refs`) once the first update has run (the graphs are compiled by then): the "
        'steady-state peak, including the memory MindSpore kept from the first update. "RSS before the '
        'model" is the process after importing MindSpore and loading the data. Throughput and time per '
        "update leave out the first update (graph compilation).",
        "",
    ]

    # ---- equivalence
    L += [
        "## Equivalence: accumulation 32x4 vs plain batch 128",
        "",
        f"![parameter distance per update]({PNG['equivalence']})",
        "",
    ]
    bn, gn = results.get("distance_batchnorm"), results.get("distance_groupnorm")
    n_up = max(len(r["rel_l2"]) for r in (bn, gn) if r) if (bn or gn) else 0
    rows = []
    for i in range(n_up):
        row = [i + 1]
        for r in (bn, gn):
            if r is None or i >= len(r["rel_l2"]):
                row += [NA, NA]
            else:
                row += [_f(r["rel_l2"][i], "{:.3e}"), _f(r["max_abs"][i], "{:.3e}")]
        rows.append(row)
    if not rows:
        rows.append([NA, "", "", "", ""])
    L += _table(
        ["update", "BatchNorm: relative L2", "BatchNorm: max abs", "GroupNorm: relative L2", "GroupNorm: max abs"], rows
    )
    L += [
        "",
        "Both runs start from the same weights (copied) and see the same 128 images per update "
        "(no augmentation, no shuffle): the plain run as one batch of 128 (nn.TrainOneStepCell + nn.Momentum), "
        "the accumulation run as four micro-batches of 32 (GradAccumCell + FusedMomentum), same lr, momentum "
        "and weight decay. Distances are over all trainable parameters, relative to the plain run's norm. "
        "GroupNorm normalises each sample on its own, so the mean of four micro-batch gradients is the "
        "batch-128 gradient up to float32 rounding; BatchNorm normalises with the statistics of the batch "
        "it sees (32 vs 128 images), so the gradients themselves differ.",
        "",
    ]

    # ---- method
    cfg = next((r["config"] for r in results.values() if r["config"].get("kind") == "train"), None)
    L += ["## How it was measured", ""]
    if cfg:
        L += [
            f"- Data: the first {cfg['samples']} images of the training split (`{cfg['data_dir']}`), "
            f"shuffled with seed {cfg['seed']}, random crop (4-pixel padding) and horizontal flip; every "
            "training-panel configuration sees the same images in the same order with the same augmentation "
            "(the example's pipeline, `examples/resnet50_cifar10/data.py`).",
            f"- Optimizer: momentum {cfg['momentum']}, weight decay {cfg['weight_decay']} (not on BatchNorm "
            f"gamma/beta), peak lr = {cfg['base_lr']} x effective batch / 256 (linear scaling), "
            + (
                "constant"
                if cfg.get("lr_schedule", "constant") == "constant"
                else f"linear warm-up over {cfg.get('warmup_frac', 0):.1%} of the updates then cosine to 0, per update "
                "(the example's schedule; the same curve in samples seen for every configuration)"
            )
            + f"; the same initial weights (seed {cfg['seed']}). MindSpore {cfg['mode']} mode. "
            "The equivalence and memory/throughput-only runs use a constant lr.",
        ]
    L += [
        "- Plain: `nn.TrainOneStepCell` + `nn.Momentum`. Ours: `mindspore_accum.GradAccumCell` + "
        "`FusedMomentum`. MindSpore's own: `mindspore.boost.GradientAccumulation` (HyperMap of "
        "`AssignAdd(acc, grad / N)`, `nn.Momentum` on the accumulators every N-th call, then zeroing; it works on "
        "CPU in MindSpore 2.10) inside a cell shaped like `nn.TrainOneStepCell` (one graph with control flow).",
        "- Each configuration runs in its own process; peak memory is that process's VmHWM. Time per update is "
        "the wall time of a whole window (k micro-batches including the update), median over the updates after "
        "the first; images/s = images / time over the same updates.",
        "- The network is the example's `ResNet50` (`examples/resnet50_cifar10/model.py`): "
        "He-normal convolutions, the last "
        "normalisation scale of each bottleneck initialised to 0 (every block starts as the identity). The "
        'equivalence panel\'s GroupNorm variant is the same network built with `norm="group"` (GroupNorm, '
        "32 groups, where every BatchNorm2d was).",
        "- With few updates (a short study on a CPU) the loss curves and test accuracy are early-training "
        "figures: they show the trend and the equivalence of the update rule, not converged accuracy.",
        "",
    ]
    status = meta.get("status")
    if status:
        L += ["Run status of the last invocation: " + ", ".join(f"{k}: {v}" for k, v in status.items()) + ".", ""]
    L += ["## Machine", ""] + _machine_lines(meta) + [""]
    if meta.get("machine", {}).get("load_average_at_start"):
        L += [
            "A load average well above 0 at the start means other work shared the CPU: times are then upper bounds.",
            "",
        ]
    return "\n".join(L)


def write_report(results: dict, meta: dict, out_dir: str) -> List[str]:
    """Writes the markdown and the four PNGs into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, fn in (
        ("loss", plot_loss),
        ("memory", plot_memory),
        ("throughput", plot_throughput),
        ("equivalence", plot_equivalence),
    ):
        p = os.path.join(out_dir, PNG[key])
        fn(results, p)
        paths.append(p)
    md = os.path.join(out_dir, MD_NAME)
    tmp = md + ".tmp"
    with open(tmp, "w") as f:
        f.write(render_markdown(results, meta))
    os.replace(tmp, md)
    paths.insert(0, md)
    return paths
