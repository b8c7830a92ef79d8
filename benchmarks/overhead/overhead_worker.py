#!/usr/bin/env python
"""One configuration of benchmarks/overhead/bench_overhead.py in this process: builds the model, runs the
untimed and timed windows, and prints one JSON line (peak RSS, times, per-call breakdown).

    python -m benchmarks.overhead.overhead_worker '<JSON settings>'     # run by bench_overhead.py

``ONEDNN_MAX_CPU_ISA=AVX2`` is set before MindSpore is imported."""

from __future__ import annotations

import json
import sys
import time

from benchmarks.common.proc_memory import import_mindspore, peak_rss_mib, reset_peak_rss, rss_mib

# ============================================================================ the worker


def build_model(cfg: dict):
    """(network, loss cell for the plain cells, loss cell for ours, numpy inputs of the big batch
    N*B). Same seed, same weights and data in every process."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    ms.set_seed(cfg.get("seed", 0))
    rs = np.random.RandomState(cfg.get("seed", 0))
    total = cfg["batch"] * cfg["accum"]
    ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    if cfg["model"] == "resnet50":
        from examples.resnet50_cifar10.model import ResNet50

        net = ResNet50(num_classes=10)
        data = (rs.randn(total, 3, 32, 32).astype(np.float32), rs.randint(0, 10, total).astype(np.int32))
        loss = nn.WithLossCell(net, ce)
        return net, loss, loss, data
    if cfg["model"] == "mlp":
        from benchmarks.common.mlp_graphs import make_mlp

        width = cfg["mlp_width"]
        net, loss = make_mlp(width, cfg["mlp_layers"], cfg.get("seed", 0))
        data = (rs.randn(total, width).astype(np.float32), rs.randint(0, width, total).astype(np.int32))
        return net, loss, loss, data
    if cfg["model"] == "gpt":
        return _build_gpt(cfg, rs, total)
    raise ValueError(cfg["model"])


def _build_gpt(cfg, rs, total):
    """examples/gpt_lm/model.py's GPT (its training script's default size: 4 layers, d_model 256, 4 heads,
    context 128) on random byte tokens without padding. Ours gets the token-exact pair contract
    (``LMLoss``: loss_sum, num_items); the plain cells the token mean loss_sum / num_items, the
    same gradient when nothing is padded."""
    import numpy as np

    from examples.gpt_lm import model as gpt

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
            reset_peak_rss()
        before = rss_mib()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        self.rows.append(
            dict(phase=label, rss_before_mib=before, peak_mib=peak_rss_mib(), rss_after_mib=rss_mib(), seconds=seconds)
        )
        return out


def worker(cfg: dict) -> dict:
    t_start = time.perf_counter()
    ms = import_mindspore(cfg["mode"])
    import numpy as np
    from mindspore import Tensor, nn

    milestones = [("imported mindspore", rss_mib())]
    net, loss_cell, ours_loss_cell, data = build_model(cfg)
    params = net.trainable_params()
    n_params = _param_count(params)
    n, b, kind = cfg["accum"], cfg["batch"], cfg["config"]
    micro = [tuple(Tensor(a[i * b : (i + 1) * b]) for a in data) for i in range(n)]
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

        calls = [
            (f"micro-step {i + 1}" + (" + window end" if i == n - 1 else ""), lambda i=i: call(i)) for i in range(n)
        ]

        def split_last():  # the last call as its two graphs (what cell(...) does), for the breakdown
            micro_fn = cell._micro_step_graph if graph else cell._micro_step
            return [
                (f"micro-step {n} (micro-step graph)", lambda: float(micro_fn(*micro[n - 1]).asnumpy())),
                ("window end (window-end graph)", lambda: cell._finish_window()),
            ]
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
    peak_first = peak_rss_mib()
    milestones.append(("after the untimed window(s)", rss_mib()))
    steady_ok = reset_peak_rss()
    # ---- timed windows
    windows, per_call = [], []
    for _ in range(cfg["windows"]):
        t0 = time.perf_counter()
        times = window()
        windows.append(time.perf_counter() - t0)
        per_call.append(times)
    peak_steady = peak_rss_mib()
    # ---- one diagnostic window: the peak of every call on its own (HWM reset before each)
    steady_phases = None
    if breakdown:
        steady_phases = _Phases()
        window(steady_phases, split=split_last is not None)
    milestones.append(("end", rss_mib()))
    # after every peak was recorded: the arrays take 2 x the parameters' bytes
    kernel_costs = _kernel_costs(params) if ((breakdown and kind == "ours") or kind == "floor-time") else None

    result = dict(
        n_params=n_params,
        accumulator_bytes=4 * n_params,
        peak_rss_mib=max(peak_first, peak_steady if steady_ok else peak_first),
        peak_first_windows_mib=peak_first,
        peak_steady_mib=peak_steady if steady_ok else None,
        window_s=windows,
        time_per_window_s=float(np.median(windows)),
        first_step_s=first_times[0],
        first_window_s=first_window_s,
        call_labels=[label for label, _ in calls],
        call_times_s=per_call,
        milestones=milestones,
        first_window_phases=first_window_phases.rows,
        steady_phases=steady_phases.rows if steady_phases else None,
        global_step=int(optimizer.global_step.asnumpy()),
        kernel_costs=kernel_costs,
    )
    if kind == "floor-time":
        grads_times = [t for times in per_call for t in times[:-1]]
        opt_times = [times[-1] for times in per_call]
        result.update(grads_only_s=float(np.median(grads_times)), optimizer_step_s=float(np.median(opt_times)))
        result["time_floor_s"] = n * result["grads_only_s"] + result["optimizer_step_s"]
        # + the bytes any accumulation must move (first micro-batch 8 B/element: read the gradient,
        # write the accumulator; later ones 12 B: + read the accumulator; the window-end check 4 B)
        # at the speed of a plain a += s * b loop (12 B/element) on this machine, in this process
        traffic = (8 + 12 * (n - 1) + 4) / 12.0
        result["accumulation_floor_s"] = result["time_floor_s"] + traffic * kernel_costs["ceiling_s"]
    if kind == "ours":
        result["micro_step_s"] = float(np.median([t for times in per_call for t in times[:-1]] or [float("nan")]))
        result["last_call_s"] = float(np.median([times[-1] for times in per_call]))
        result["skipped_updates"] = int(cell.skipped_updates.asnumpy())
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _kernel_costs(params) -> dict:
    """Median seconds of our kernels alone on NumPy arrays shaped like the parameters: what a
    micro-step must add to the grads-only graph (accumulate: 8 B/element for the first
    micro-batch, 12 after) and the window-end check (sum of squares, 4 B/element); and of a plain
    ``a += s * b`` loop over the same arrays (``ceiling_s``: the machine's streaming speed, 12 B/element)."""
    import numpy as np

    from mindspore_accum import _C, kernels

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

    return dict(
        accumulate_s=timed(lambda: kernels.accumulate(acc, grad, 0.5)),
        accumulate_first_s=timed(lambda: kernels.accumulate(acc, grad, 0.5, overwrite=True)),
        sum_of_squares_s=timed(lambda: kernels.sum_of_squares(acc)),
        ceiling_s=timed(lambda: _C.axpy_ceiling(acc, grad, 0.5)),
    )


def worker_exact(cfg: dict) -> dict:
    """One update of ours (N micro-batches) and of plain-big (one batch of N*B) from the same
    weights on the same samples: the distance between the two updates."""
    import_mindspore(cfg["mode"])  # sets the mode before MindSpore builds anything
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
        ours(*(Tensor(a[i * b : (i + 1) * b]) for a in data))
    big(*(Tensor(a) for a in data))
    wa = [p.asnumpy().astype(np.float64) for p in net_a.trainable_params()]
    wb = [p.asnumpy().astype(np.float64) for p in net_b.trainable_params()]
    du = max(float(np.max(np.abs(a - c))) for a, c in zip(wa, wb))
    upd = max(float(np.max(np.abs(c - w0))) for c, w0 in zip(wb, before))
    wmax = max(float(np.max(np.abs(c))) for c in wb)
    rel_update = du / upd if upd > 0 else float("inf")
    return dict(
        max_abs_diff=du,
        max_abs_update=upd,
        rel_to_update=rel_update,
        rel_to_weights=du / wmax,
        updates_ours=int(ours.optimizer.global_step.asnumpy()),
        tolerance=cfg["exact_tol"],
        passed=bool(rel_update <= cfg["exact_tol"] and upd > 0 and int(ours.optimizer.global_step.asnumpy()) == 1),
    )


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    print(json.dumps(worker_exact(settings) if settings["config"] == "exact" else worker(settings)), flush=True)
