#!/usr/bin/env python
"""One ResNet50 (CIFAR form) training step on CPU, with and without ONEDNN_MAX_CPU_ISA=AVX2.

MindSpore 2.10's oneDNN falls back to an unvectorised reference 3x3 convolution on AVX-512
CPUs for its plain NCHW layout; capping the ISA at AVX2 before MindSpore is imported avoids
it. Each variant runs in its own process (the variable is read once, at start-up):

    python -m benchmarks.kernels.bench_cpu_isa --batch-size 32 --warmup 1 --steps 2

prints one JSON line per variant and a final line with the speed-up factor. The step is a
plain nn.TrainOneStepCell + nn.Momentum step (forward, backward, update), so the figure is
about the convolution path, not about mindspore_accum.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common.rounds import module_command, run_worker, worker_env
from examples.common import cpu_flags


def child(args):
    t0 = time.perf_counter()
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    from examples.resnet50_cifar10.model import ResNet50

    ms.set_seed(0)
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    net = ResNet50(10, "cifar")
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9))
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((args.batch_size, 3, 32, 32), dtype=np.float32))
    y = Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32))
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        step(x, y).asnumpy()
        times.append(time.perf_counter() - t)
        print(
            f"  [{os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}] step {i}: {times[-1]:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    timed = times[args.warmup :]
    print(
        json.dumps(
            {
                "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                "mode": args.mode,
                "batch_size": args.batch_size,
                "warmup_steps_s": [round(t, 3) for t in times[: args.warmup]],
                "timed_steps_s": [round(t, 3) for t in timed],
                "median_step_s": float(np.median(timed)),
                "images_per_s": args.batch_size / float(np.median(timed)),
                "process_s": round(time.perf_counter() - t0, 1),
            }
        ),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps (graph compilation, allocation)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant")
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--only", choices=["fixed", "unfixed"], default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    try:
        import psutil

        load = os.getloadavg()
        cpu = {"logical_cpus": psutil.cpu_count(), "loadavg_at_start": [round(v, 2) for v in load]}
    except Exception:  # psutil is optional
        cpu = {"logical_cpus": os.cpu_count()}
    cpu["avx512f"] = "avx512f" in (cpu_flags() or ())
    results = {}
    for name, isa in (("fixed", "AVX2"), ("unfixed", None)):
        if args.only and args.only != name:
            continue
        env = worker_env(cpu_isa_fix=False)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        cmd = module_command(
            "benchmarks.kernels.bench_cpu_isa",
            "--child",
            "--batch-size",
            args.batch_size,
            "--warmup",
            args.warmup,
            "--steps",
            args.steps,
            "--mode",
            args.mode,
        )
        run = run_worker(cmd, env=env, stderr=None)
        if run.result is None:
            raise subprocess.CalledProcessError(run.proc.returncode, cmd)
        results[name] = run.result
        print(json.dumps({"variant": name, **results[name]}), flush=True)
    if len(results) == 2:
        factor = results["unfixed"]["median_step_s"] / results["fixed"]["median_step_s"]
        print(json.dumps({"speedup_fixed_vs_unfixed": round(factor, 1), **cpu}), flush=True)


if __name__ == "__main__":
    main()
