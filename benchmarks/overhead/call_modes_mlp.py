"""Why a median of MindSpore calls moves between runs on a small VM: per-call wall, user and
system time of three graphs on the MLP of bench_overhead (6 x Dense(W, W), batch 16, GRAPH mode),
each in its own process, rounds alternated.

    python -m benchmarks.overhead.call_modes_mlp [--rounds 2] [--calls 300] [--width 2048]

Graphs: MindSpore's gradients-only graph (a top-level Cell: the time floor's), the same graph
followed by our accumulate op, and GradAccumCell's micro-step graph. A call is "slow" above
--slow-ms. On 2 vCPUs MindSpore's runtime threads spin on sched_yield while they wait; a random
share of calls then pays ~30 ms of system time (strace -f -c shows the sched_yield calls).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from benchmarks.common.rounds import module_command, rounds, run_worker, worker_env

GRAPHS = ("grads-only", "grads-only + accumulate", "ours micro-step")


def child(graph: str, calls: int, width: int, slow_ms: float) -> dict:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    from benchmarks.common.mlp_graphs import GradsOnly, make_mlp
    from mindspore_accum import FusedMomentum, GradAccumCell
    from mindspore_accum._state import zeros_like_params

    net, loss_cell = make_mlp(width)
    weights = net.trainable_params()

    rs = np.random.RandomState(0)
    x = Tensor(rs.randn(16, width).astype(np.float32))
    y = Tensor(rs.randint(0, width, 16).astype(np.int32))
    if graph == "ours micro-step":
        cell = GradAccumCell(loss_cell, FusedMomentum(weights, 0.01, 0.9), 4)
        cell.set_train()
        fn = lambda: cell._micro_step_graph(x, y).asnumpy()  # noqa: E731
    else:
        acc = zeros_like_params(weights, "probe_acc") if graph == "grads-only + accumulate" else None
        cell = GradsOnly(loss_cell, weights, acc).set_train()
        fn = lambda: cell(x, y)[0].asnumpy()  # noqa: E731
    for _ in range(15):
        fn()
    rows = []
    for _ in range(calls):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        fn()
        wall = (time.perf_counter() - t0) * 1e3
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        rows.append((wall, (r1.ru_utime - r0.ru_utime) * 1e3, (r1.ru_stime - r0.ru_stime) * 1e3))
    walls = sorted(r[0] for r in rows)
    slow = [r for r in rows if r[0] > slow_ms]
    fast = [r for r in rows if r[0] <= slow_ms]
    mean = lambda rs, k: statistics.fmean(r[k] for r in rs) if rs else float("nan")  # noqa: E731
    return dict(
        graph=graph,
        median=statistics.median(walls),
        p25=walls[len(walls) // 4],
        p75=walls[(3 * len(walls)) // 4],
        slow_share=len(slow) / len(rows),
        fast_sys=mean(fast, 2),
        slow_sys=mean(slow, 2),
        fast_user=mean(fast, 1),
        slow_user=mean(slow, 1),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=300, help="timed calls per process (after 15 untimed)")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--slow-ms", type=float, default=40.0, help="a call above this is counted slow")
    p.add_argument("--child", choices=GRAPHS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name, value in (("--rounds", a.rounds), ("--calls", a.calls), ("--width", a.width)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if a.child:
        print(json.dumps(child(a.child, a.calls, a.width, a.slow_ms)))
        return 0
    print(
        f"| round | graph (MLP 6 x {a.width}, batch 16) | median ms | 25th pct | 75th pct | "
        f"calls > {a.slow_ms:g} ms | system ms, fast / slow calls | user ms, fast / slow calls |"
    )
    print("|--:|---|--:|--:|--:|--:|--:|--:|")
    for rnd, order in rounds(a.rounds, GRAPHS):
        for graph in order:
            run = run_worker(
                module_command(
                    "benchmarks.overhead.call_modes_mlp",
                    "--child",
                    graph,
                    "--calls",
                    a.calls,
                    "--width",
                    a.width,
                    "--slow-ms",
                    a.slow_ms,
                ),
                env=worker_env(cpu_isa_fix=False),
            )
            if run.result is None:
                sys.stderr.write(run.proc.stderr[-3000:])
                raise SystemExit(f"child '{graph}' failed with exit code {run.proc.returncode}")
            r = run.result
            print(
                f"| {rnd + 1} | {graph} | {r['median']:.1f} | {r['p25']:.1f} | {r['p75']:.1f} | "
                f"{100 * r['slow_share']:.0f} % | {r['fast_sys']:.1f} / {r['slow_sys']:.1f} | "
                f"{r['fast_user']:.1f} / {r['slow_user']:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
