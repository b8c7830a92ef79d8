"""Memory per worker of GradAccumCell + FusedAdamW: shard=None vs "optimizer" vs "gradients".

    python -m benchmarks.dist.shard_memory [--workers 2] [--json out.json]

Each setting runs in its own msrun launch (2 CPU workers, GRAPH mode, accumulation 2, 2
windows) on a synthetic network of Psi = 25,022,000 float32 parameters (a 5000x5000 matrix and
two small tensors; loss = x * sum_i sum(p_i), so compute is negligible). Every worker reports

* its Parameter bytes by role (weights, accumulators, optimizer state, the rest), against the
  formula per worker: 16 Psi replicated, (4 + 4 + 8/W) Psi "optimizer", (4 + 12/W) Psi "gradients";
* its resident memory: after ``init()`` (the baseline: MindSpore, the runtime), after building the
  cell, and the peak (VmHWM) over the two windows -- which adds the window end's transients
  (the flat buffer and the all-reduce's output: 8 Psi for the full-size reduction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from benchmarks.common.rounds import worker_env

SHAPES = ((5000, 5000), (5000,), (1000, 17))
PSI = sum(math.prod(s) for s in SHAPES)
SETTINGS = ("none", "optimizer", "gradients")


def formula_bytes(setting: str, world: int) -> float:
    """Parameter bytes per worker the design promises (AdamW, float32)."""
    per_element = {"none": 16.0, "optimizer": 8.0 + 8.0 / world, "gradients": 4.0 + 12.0 / world}[setting]
    return per_element * PSI


def _worker(args) -> None:
    from benchmarks.common.proc_memory import import_mindspore, peak_rss_mib, reset_peak_rss, rss_mib

    ms = import_mindspore("graph")
    import numpy as np
    from mindspore import Parameter, ParameterTuple, Tensor, nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    from mindspore_accum import FusedAdamW, GradAccumCell

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    baseline = rss_mib()
    reset_peak_rss()

    class SyntheticNet(nn.Cell):
        def __init__(self):
            super().__init__()
            rs = np.random.RandomState(0)
            self.params = ParameterTuple(
                Parameter(Tensor((rs.standard_normal(s) * 0.01).astype(np.float32)), name=f"p{i}")
                for i, s in enumerate(SHAPES)
            )

        def construct(self, x):
            total = ops.zeros((), ms.float32)
            for p in self.params:
                total = total + p.sum()
            return total * x

    net = SyntheticNet()
    opt = FusedAdamW(net.trainable_params(), 1e-3, weight_decay=0.01)
    shard = None if args.setting == "none" else args.setting
    cell = GradAccumCell(net, opt, 2, micro_batch_weight="equal", shard=shard)
    cell.set_train()
    built = rss_mib()
    roles = {"weights": 0, "accumulators": 0, "state": 0, "other": 0}
    weights = {id(w) for w in cell.weights}
    for p in cell.get_parameters():
        nbytes = int(np.prod(p.shape)) * p.data.itemsize if p.shape else p.data.itemsize
        role = (
            "weights"
            if id(p) in weights
            else "accumulators"
            if p.name.startswith("accumulators.")
            else "state"
            if p.name.startswith(("adam_m.", "adam_v."))
            else "other"
        )
        roles[role] += nbytes
    trace = []  # (RSS, peak RSS) - baseline after each call: calls 2 and 4 end a window
    for step in range(4):
        cell(Tensor(np.float32(1.0 + 0.1 * rank + 0.01 * step)))
        _ = net.params[0].asnumpy()
        trace.append((rss_mib() - baseline, peak_rss_mib() - baseline))
    result = {
        "rank": rank,
        "world": world,
        "setting": args.setting,
        "psi": PSI,
        "bytes": roles,
        "parameter_bytes": sum(roles.values()),
        "rss_baseline_mib": baseline,
        "rss_built_mib": built,
        "rss_after_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
        "trace_mib": trace,
    }
    with open(os.path.join(args.out, f"{args.setting}_rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, setting, tmp):
    env = worker_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    msrun = shutil.which("msrun", path=env["PATH"])
    if msrun is None:
        sys.exit("msrun not found next to the Python interpreter (it comes with MindSpore)")
    logs = os.path.join(tmp, f"logs_{setting}")
    cmd = [msrun, f"--worker_num={args.workers}", f"--local_worker_num={args.workers}", "--master_addr=127.0.0.1"]
    cmd += [
        f"--master_port={_free_port()}",
        "--join=True",
        f"--log_dir={logs}",
        "python",
        "-m",
        "benchmarks.dist.shard_memory",
    ]
    cmd += ["--run-as-worker", "--out", tmp, "--setting", setting]
    proc = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
    out = []
    for r in range(args.workers):
        path = os.path.join(tmp, f"{setting}_rank{r}.json")
        if proc.returncode != 0 or not os.path.exists(path):
            for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
                with open(os.path.join(logs, name), errors="replace") as f:
                    sys.stderr.write(f"---- {name} ----\n" + "".join(f.readlines()[-40:]))
            sys.exit(f"msrun failed for {setting} (exit {proc.returncode})")
        with open(path) as f:
            out.append(json.load(f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--run-as-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_as_worker:
        _worker(args)
        return
    tmp = tempfile.mkdtemp(prefix="shard_memory_")
    runs = {s: _launch(args, s, tmp) for s in args.settings.split(",")}
    shutil.rmtree(tmp, ignore_errors=True)
    mib = 2.0**20
    print(f"\nFusedAdamW, Psi = {PSI:,} parameters, {args.workers} CPU workers (msrun), GRAPH mode, per worker:\n")
    print(
        "| shard | rank | Parameters (MiB) | formula (MiB) | ratio | RSS built - baseline (MiB) "
        "| peak RSS - baseline (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for setting, ranks in runs.items():
        formula = formula_bytes(setting, args.workers)
        for r in ranks:
            print(
                f"| {setting} | {r['rank']} | {r['parameter_bytes'] / mib:.1f} | {formula / mib:.1f} | "
                f"{r['parameter_bytes'] / formula:.4f} | {r['rss_built_mib'] - r['rss_baseline_mib']:.0f} | "
                f"{r['peak_rss_mib'] - r['rss_baseline_mib']:.0f} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
