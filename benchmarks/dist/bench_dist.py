"""Data-parallel gradient accumulation: reduce once per window vs reduce every micro-batch.

2 CPU workers launched by msrun, accumulation 4, ResNet50/CIFAR-sized gradients (161 float32
tensors, 23,520,842 values = 94 MB, shapes from resnet50_cifar_shapes.py), GRAPH mode.

    python -m benchmarks.dist.bench_dist                  # launches msrun itself, prints a table
    python -m benchmarks.dist.bench_dist --json out.json  # also writes the results as JSON
    python -m benchmarks.dist.bench_dist --updates 9 --accum 4 --port 18555

What is measured: wall time of one whole update (``accum`` calls of the cell, the last of which
ends the window and applies the update) on each worker, after ``--warmup`` untimed updates (compilation);
the median over ``--updates`` updates (>= 5), of the slower worker. The network is synthetic:
its parameters have the ResNet50 shapes and its loss is ``x * sum_i sum(p_i)`` for a scalar
input x, so the forward/backward are one cheap pass over the parameters and the gradient is
``x`` everywhere: communication and the accumulation/update kernels dominate, not convolutions.

  reduce-once   mindspore_accum.GradAccumCell + FusedMomentum under DATA_PARALLEL: micro-steps
                only accumulate locally; at the window end the accumulators (+ the micro-batch
                count) are summed across workers by ONE AllReduce over a flat buffer, then the
                finiteness check and the fused momentum update run on the reduced sum.
  every-micro   the baseline (written here, as a subclass of the same cell, so everything but the
                communication pattern is identical): every micro-step all-reduces that
                micro-batch's gradients as ONE flat-buffer AllReduce (the fair version of
                DistributedGradReducer, which would launch per tensor or per fusion bucket), then
                accumulates the reduced gradients; the window end runs the same finiteness check
                and fused update on the accumulators, without further communication.

Each variant runs in its own msrun launch (so a worker holds one 94 MB model, its moments,
accumulators and buffers at a time). Both start from the same weights and see the same inputs; their
final weights are compared (they must agree to float32 rounding).

Caveat printed with the results: the two workers run on the same machine (here 2 cores, shared
with anything else running): MindSpore's CPU AllReduce goes over TCP on 127.0.0.1, so the
figures show the cost of moving 94 MB per AllReduce through the loopback and the CPUs, not a
network; on real multi-machine clusters communication is usually relatively more expensive.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import tempfile
import time

from benchmarks.common import msrun_jobs
from benchmarks.common.rounds import worker_env


# ---------------------------------------------------------------- the worker (under msrun)
def _worker(args) -> None:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import mindspore as ms
    import numpy as np
    from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    from benchmarks.common.resnet50_cifar_shapes import NUM_TENSORS, NUM_VALUES, RESNET50_CIFAR_SHAPES
    from mindspore_accum import FusedMomentum, GradAccumCell

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    assert len(RESNET50_CIFAR_SHAPES) == NUM_TENSORS

    class SyntheticNet(nn.Cell):
        """Parameters of the ResNet50 shapes; loss = x * sum_i sum(p_i)."""

        def __init__(self):
            super().__init__()
            rs = np.random.RandomState(0)
            self.params = ParameterTuple(
                Parameter(Tensor((rs.standard_normal(shape) * 0.01).astype(np.float32)), name=name.replace(".", "_"))
                for name, shape in RESNET50_CIFAR_SHAPES
            )

        def construct(self, x):
            total = ops.zeros((), ms.float32)
            for p in self.params:
                total = total + p.sum()
            return total * x

    class ReduceEveryMicroStep(GradAccumCell):
        """Baseline: one flat AllReduce of each micro-batch's gradients, then the cell's own
        accumulation of the reduced gradients; the window end is the cell's own without its
        all-reduce (same kernels as GradAccumCell)."""

        def _accumulate(self, grads, weight, items, loss_sum):
            flat = self._allreduce(ops.concat([ops.reshape(g, (-1,)) for g in grads]))
            # slices, as the window's _window_sum does (ops.split of 161 sections exceeds
            # MindSpore's call-depth limit in GRAPH mode)
            reduced = tuple(
                ops.reshape(flat[o : o + n], w.shape) for o, n, w in zip(self._offsets, self._sizes, self.weights)
            )
            # every worker holds as many items as this one
            return super()._accumulate(reduced, weight, items * self.world_size, loss_sum * self.world_size)

        def _window_sum(self):  # the accumulators already hold the sum over workers
            state = self.state
            return state.accumulators, state.items, ops.cast(state.micro_step, ms.float32), state.loss_sum

    allreduce = ops.AllReduce()

    @ms.jit
    def flat_allreduce(flat):
        return allreduce(flat)

    def run(variant):
        net = SyntheticNet()
        n_values = sum(int(np.prod(p.shape)) for p in net.trainable_params())
        assert n_values == NUM_VALUES, n_values
        opt = FusedMomentum(net.trainable_params(), 0.01, 0.9, weight_decay=5e-4)
        cls = GradAccumCell if variant == "reduce-once" else ReduceEveryMicroStep
        cell = cls(net, opt, args.accum, micro_batch_weight="equal")  # the net returns its loss of a scalar input
        assert cell.distributed
        cell.set_train()
        # micro-batch inputs: a different scalar per worker and micro-step
        xs = [Tensor(np.float32(1.0 + 0.1 * rank + 0.01 * m)) for m in range(args.accum)]
        times = []
        for _ in range(args.warmup + args.updates):
            t0 = time.perf_counter()
            for m in range(args.accum):
                loss = cell(xs[m])
            _ = loss.asnumpy()
            _ = net.params[0].asnumpy()
            times.append(time.perf_counter() - t0)
            assert cell.pending == 0
        weights = [p.asnumpy().copy() for p in net.trainable_params()]
        del cell, opt, net
        gc.collect()
        return times[args.warmup :], weights

    variant = args.variant
    results = {
        "rank": rank,
        "world": world,
        "accum": args.accum,
        "tensors": NUM_TENSORS,
        "values": NUM_VALUES,
        "variant": variant,
    }
    if variant == "reduce-once":
        # one flat AllReduce of the whole gradient, alone (what every-micro pays accum times)
        flat = Tensor(np.ones(NUM_VALUES + 1, np.float32))
        t = []
        for _ in range(args.warmup + args.updates):
            t0 = time.perf_counter()
            _ = flat_allreduce(flat).asnumpy()
            t.append(time.perf_counter() - t0)
        results["allreduce_s"] = t[args.warmup :]
        del flat
    results["times_s"], weights = run(variant)
    print(f"rank {rank}: {variant} done", flush=True)
    if rank == 0:
        np.savez(os.path.join(args.out, f"weights_{variant}.npz"), *weights)
    with open(os.path.join(args.out, f"{variant}_rank{rank}.json"), "w") as f:
        json.dump(results, f)


# ---------------------------------------------------------------- the driver
def _launch(args, variant, tmp) -> list[dict]:
    env = worker_env(cpu_isa_fix=False)  # the repository root on PYTHONPATH: the workers run from tmp
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    env.setdefault("GLOG_v", "3")
    worker_args = ["--variant", variant, "--accum", str(args.accum), "--updates", str(args.updates)]
    worker_args += ["--warmup", str(args.warmup)]
    print(f"{variant}: launching {args.workers} workers with msrun (logs: {tmp}/logs_{variant}) ...", flush=True)
    out, _ = msrun_jobs.launch(
        "benchmarks.dist.bench_dist", variant, worker_args, tmp, args.workers, env, port=args.port, timeout=args.timeout
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--updates", type=int, default=5, help="timed updates (median; >= 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed updates first (compilation)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=0, help="msrun master port (default: a free one)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--run-as-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_as_worker:
        _worker(args)
        return
    if args.updates < 5:
        ap.error("--updates must be >= 5")

    # One msrun launch per variant: the workers hold one ResNet50-sized model at a time.
    tmp = tempfile.mkdtemp(prefix="bench_dist_")
    runs = {v: _launch(args, v, tmp) for v in ("reduce-once", "every-micro")}

    # per update, the slower worker (they synchronise at every AllReduce anyway)
    def slowest(variant, key):
        return [max(r[key][i] for r in runs[variant]) for i in range(args.updates)]

    once, every, ar = (
        slowest("reduce-once", "times_s"),
        slowest("every-micro", "times_s"),
        slowest("reduce-once", "allreduce_s"),
    )
    import numpy as np

    with (
        np.load(os.path.join(tmp, "weights_reduce-once.npz")) as a,
        np.load(os.path.join(tmp, "weights_every-micro.npz")) as b,
    ):
        max_diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
        max_w = max(float(np.abs(a[k]).max()) for k in a.files)
    shutil.rmtree(tmp, ignore_errors=True)
    per_rank = runs["reduce-once"]
    med_once, med_every, med_ar = statistics.median(once), statistics.median(every), statistics.median(ar)
    r0 = per_rank[0]
    summary = {
        "workers": args.workers,
        "accumulation": args.accum,
        "tensors": r0["tensors"],
        "values": r0["values"],
        "gradient_mb": r0["values"] * 4 / 1e6,
        "updates_timed": args.updates,
        "warmup": args.warmup,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "reduce_once_s": once,
        "every_micro_s": every,
        "flat_allreduce_s": ar,
        "median_reduce_once_s": med_once,
        "median_every_micro_s": med_every,
        "median_flat_allreduce_s": med_ar,
        "ratio_every_over_once": med_every / med_once,
        "max_weight_diff": max_diff,
        "max_weight": max_w,
    }
    mb = summary["gradient_mb"]
    print()
    print(
        f"Data-parallel accumulation, {args.workers} CPU workers (msrun, 127.0.0.1), accumulation {args.accum}, "
        f"GRAPH mode"
    )
    print(
        f"gradients: {r0['tensors']} float32 tensors, {r0['values']:,} values ({mb:.1f} MB) = ResNet50/CIFAR; "
        f"synthetic loss x*sum(p): compute negligible"
    )
    print(
        f"NOTE: both workers share this machine's {os.cpu_count()} CPU cores (and the loopback); "
        f"other load on the machine shows up in the figures."
    )
    print()
    print(f"| variant | AllReduce per update | per update, median of {args.updates} (s) | min (s) | max (s) |")
    print("|---|---|---|---|---|")
    print(f"| reduce once per window (GradAccumCell) | 1 | {med_once:.3f} | {min(once):.3f} | {max(once):.3f} |")
    print(
        f"| reduce every micro-batch (baseline) | {args.accum} | {med_every:.3f} | {min(every):.3f} | "
        f"{max(every):.3f} |"
    )
    print()
    print(f"ratio (every micro-batch / once per window): {summary['ratio_every_over_once']:.2f}x")
    print(f"one flat AllReduce of {mb:.0f} MB alone: median {med_ar * 1e3:.0f} ms")
    print(
        f"weights of the two variants after {args.warmup + args.updates} updates: max|diff| = "
        f"{summary['max_weight_diff']:.3g} (max|w| = {summary['max_weight']:.3g})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
