"""GradAccumCell on ResNet50 / CIFAR-10 shapes: step time and peak memory (MindSpore, CPU).

Measures, each configuration in its own process (so peak RSS is per configuration):
  * time per micro-step: GradAccumCell (a micro-step that only accumulates) vs
    nn.TrainOneStepCell at the same micro-batch: the overhead of accumulation;
  * time per update (one whole window of N micro-steps): GradAccumCell with FusedMomentum vs
    GradAccumCell with nn.Momentum;
  * peak resident memory: accumulation 32 x 4 vs a plain batch of 128 and of 32.

    python -m benchmarks.overhead.bench_cell                 # GRAPH mode, micro-batch 32, 4 micro-steps
    python -m benchmarks.overhead.bench_cell --quick         # fewer repeats, for a smoke run

Images are random (the speed of a step does not depend on pixel values). ONEDNN_MAX_CPU_ISA=AVX2
is set before MindSpore is imported (see DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

from benchmarks.common.rounds import module_command, run_worker, worker_env


def _worker(config: dict) -> dict:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    from examples.resnet50_cifar10.model import ResNet50  # (the example's model)
    from mindspore_accum import FusedMomentum, GradAccumCell

    ms.set_context(mode=ms.GRAPH_MODE if config["mode"] == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(0)
    batch, steps = config["batch"], config["accum"]
    net = ResNet50(num_classes=10)
    loss_cell = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    params = net.trainable_params()
    if config["optimizer"] == "fused":
        opt = FusedMomentum(params, 0.01, 0.9, weight_decay=5e-4)
    else:
        opt = nn.Momentum(params, 0.01, 0.9, weight_decay=5e-4)
    if config["cell"] == "accum":
        cell = GradAccumCell(loss_cell, opt, steps)
    else:
        cell = nn.TrainOneStepCell(loss_cell, opt)
    cell.set_train()
    rs = np.random.RandomState(0)
    x = Tensor(rs.randn(batch, 3, 32, 32).astype(np.float32))
    y = Tensor(rs.randint(0, 10, batch).astype(np.int32))

    def step():
        return float(cell(x, y).asnumpy())  # asnumpy: the step has finished executing

    per_call = steps if config["cell"] == "accum" else 1
    for _ in range(per_call * config["warmup"]):
        step()
    micro, windows = [], []
    for _ in range(config["repeats"]):
        start_window = time.perf_counter()
        for _ in range(per_call):
            t0 = time.perf_counter()
            step()
            micro.append((time.perf_counter() - t0, _is_last(len(micro), per_call)))
        windows.append(time.perf_counter() - start_window)
    accumulate_only = [t for t, last in micro if not last] or [t for t, _ in micro]
    return {
        "micro_step_s": float(np.median(accumulate_only)),
        "window_s": float(np.median(windows)),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _is_last(index: int, per_call: int) -> bool:
    return per_call > 1 and index % per_call == per_call - 1


def run_config(config: dict) -> dict:
    run = run_worker(
        module_command("benchmarks.overhead.bench_cell", "--worker", json.dumps(config)),
        env=worker_env(cpu_isa_fix=False),
    )
    if run.result is None:
        sys.stderr.write(run.proc.stderr[-4000:])
        raise SystemExit(f"configuration {config} failed")
    return run.result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="micro-batch size")
    parser.add_argument("--accum", type=int, default=4, help="micro-batches per update")
    parser.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows (medians are reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed windows first (graph compile)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, for a smoke run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.quick:
        args.repeats = 2
    import mindspore_accum

    info = mindspore_accum.build_info()
    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"mindspore_accum {info['version']} ({info['vector_isa']}, {info['num_threads']} threads); "
        f"mode {args.mode}; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'AVX2 (set by worker)')}"
    )
    base = {"mode": args.mode, "repeats": args.repeats, "warmup": args.warmup}
    b, n = args.batch, args.accum
    configs = {
        "plain_b": dict(base, cell="plain", optimizer="momentum", batch=b, accum=1),
        "accum_fused": dict(base, cell="accum", optimizer="fused", batch=b, accum=n),
        "accum_momentum": dict(base, cell="accum", optimizer="momentum", batch=b, accum=n),
        "plain_nb": dict(base, cell="plain", optimizer="momentum", batch=b * n, accum=1),
    }
    results = {}
    for name, config in configs.items():
        print(f"  running {name} ...", flush=True)
        results[name] = run_config(config)

    plain, fused, momentum, big = (results[k] for k in ("plain_b", "accum_fused", "accum_momentum", "plain_nb"))
    print()
    print("| measurement | ours | reference | ratio |")
    print("|---|---|---|---|")
    overhead = fused["micro_step_s"] / plain["micro_step_s"]
    print(
        f"| time per micro-step, batch {b} (s) | GradAccumCell {fused['micro_step_s']:.3f} | "
        f"nn.TrainOneStepCell {plain['micro_step_s']:.3f} | {overhead:.3f} ({(overhead - 1) * 100:+.1f}%) |"
    )
    ratio = fused["window_s"] / momentum["window_s"]
    print(
        f"| time per update, {n} x {b} (s) | FusedMomentum {fused['window_s']:.3f} | "
        f"nn.Momentum {momentum['window_s']:.3f} | {ratio:.3f} |"
    )
    print(
        f"| time per update vs plain batch {b * n} (s) | accumulation {n} x {b} {fused['window_s']:.3f} | "
        f"batch {b * n} {big['window_s']:.3f} | {fused['window_s'] / big['window_s']:.3f} |"
    )
    print(
        f"| peak RSS (MiB) | accumulation {n} x {b} {fused['peak_rss_mib']:.0f} | "
        f"batch {b * n} {big['peak_rss_mib']:.0f} | {fused['peak_rss_mib'] / big['peak_rss_mib']:.3f} |"
    )
    print(
        f"| peak RSS (MiB) | accumulation {n} x {b} {fused['peak_rss_mib']:.0f} | "
        f"batch {b} {plain['peak_rss_mib']:.0f} | {fused['peak_rss_mib'] / plain['peak_rss_mib']:.3f} |"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
