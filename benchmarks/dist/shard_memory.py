"""Memory per worker of GradAccumCell + FusedAdamW: shard=None vs "optimizer" vs "gradients".

    python -m benchmarks.dist.shard_memory [--workers 2] [--rows 5000,10000] [--json out.json]
    python -m benchmarks.dist.shard_memory --from-json out.json     # the tables again, no run
    python -m benchmarks.dist.shard_memory --formula-only           # W = 8, 64 and a 7B model
    python -m benchmarks.dist.shard_memory --collectives            # one AllReduce / AllGather alone

Each (setting, size) runs in its own msrun launch (CPU workers, GRAPH mode, accumulation 2, 2
windows) on a synthetic network: a (rows x 5000) matrix and two small tensors, float32, so
Psi = rows * 5000 + 22,000 (25,022,000 at rows 5000); loss = x * sum_i sum(p_i), so compute is
negligible. Every worker reports

* its Parameter bytes by role (weights, accumulators, optimizer state, the rest), against the
  formula per worker: 16 Psi replicated, (4 + 4 + 8/W) Psi "optimizer", (4 + 12/W) Psi "gradients";
* its resident memory (VmRSS) above the post-``init()`` baseline: once the cell is built (the
  NumPy arrays the weights were made from freed), after every call, at the end, and the peak
  (VmHWM, reset once the cell is built, so it covers the 2 windows only);
* its memory pool's peak in use and extent, which MindSpore logs when the process ends.

Constant terms (the runtime, the compiled graphs, their small tensors) cancel in the slope
between two sizes, in bytes per parameter. Measured (W = 2, see POOL_EXTENT_W2): built = 4 (only
the weights are resident then: the accumulators and moments are zero-filled Parameters whose pages
become resident when a graph first writes them); at the end = Parameters + pool extent + 4 (the
collectives' buffers outside the pool, on most workers); the peak adds the collectives' receive
buffers for a moment.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import sys
import tempfile

from benchmarks.common import msrun_jobs
from benchmarks.common.rounds import worker_env

COLUMNS = 5000
SMALL = ((5000,), (1000, 17))  # kept as they are at every size: 22,000 parameters
SETTINGS = ("none", "optimizer", "gradients")
MIB = 2.0**20


def shapes(rows: int):
    return ((rows, COLUMNS),) + SMALL


def psi_of(rows: int) -> int:
    return sum(_prod(s) for s in shapes(rows))


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


def formula_per_param(setting: str, world: int) -> float:
    """Parameter bytes per parameter and worker that the design promises (AdamW, float32):
    weights 4, accumulators 4 (4/W with "gradients"), moments 8 (8/W when sharded)."""
    return {"none": 16.0, "optimizer": 8.0 + 8.0 / world, "gradients": 4.0 + 12.0 / world}[setting]


# The resident memory above the Parameters at the end of the run (bytes per parameter, W = 2,
# CPU backend), measured with this benchmark (slopes between two sizes; docs/usage.md):
# * MindSpore's memory pool, where the graphs' kernel outputs live (not the Parameters): its extent
#   ("actual peak used", which the pool keeps resident) is 16 / 12 / 12 bytes per parameter for
#   None / "optimizer" / "gradients" (rank 1 of "gradients": 10); its peak in use 12 / 8 / 8.
#   None: in use, the three full-size kernel outputs of the window end (concat, AllReduce output,
#   weight slices: its compiled graph, MS_DEV_SAVE_GRAPHS) together (12); the extent adds
#   the micro-step's gradient (the p0-sized Tile output) at an address of its own.
# * 4 outside the pool, held by the CPU collective library (mccl) once a full-size collective has
#   run, and not given back by malloc_trim: on most workers (11 of the 12 of two runs; 0 on the
#   others). ``--collectives``: one AllReduce of N float32 (or AllGather into N) alone leaves 4N
#   bytes on one of the 2 workers, and raises every worker's peak by 4N-6N for a moment (the ring's
#   receive buffers, chunks of 4N/W bytes).
POOL_EXTENT_W2 = {"none": 16.0, "optimizer": 12.0, "gradients": 12.0}
COLLECTIVE_RETAINED = 4.0


def steady_per_param(setting: str, world: int):
    """Resident bytes per parameter above the baseline once every buffer has been used (the RSS at
    the end of the run): Parameters + pool extent + the collectives' retained buffers (on most
    workers; 4 less on the others). Measured at W = 2 on the CPU backend only: None for another W.
    The peak adds 1 to 3 ring chunks of 4/W for a moment."""
    if world != 2:
        return None
    return formula_per_param(setting, world) + POOL_EXTENT_W2[setting] + COLLECTIVE_RETAINED


# ---------------------------------------------------------------------- one worker (under msrun)


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

    def weights():
        # float32 throughout, and nothing kept: Tensor() and Parameter() each copy the array
        rng = np.random.default_rng(0)
        for i, s in enumerate(shapes(args.rows)):
            array = rng.standard_normal(s, dtype=np.float32)
            array *= 0.01
            yield Parameter(Tensor(array), name=f"p{i}")

    class SyntheticNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.params = ParameterTuple(weights())

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
    gc.collect()
    _trim_heap()  # what the build freed goes back to the OS before "built" is read
    built = rss_mib()
    peak_reset = reset_peak_rss()  # the peak then covers the training only, not the build
    roles = {"weights": 0, "accumulators": 0, "state": 0, "other": 0}
    weight_ids = {id(w) for w in cell.weights}
    for p in cell.get_parameters():
        nbytes = _prod(p.shape) * p.data.itemsize
        if id(p) in weight_ids:
            roles["weights"] += nbytes
        elif p.name.startswith("accumulators."):
            roles["accumulators"] += nbytes
        elif p.name.startswith(("adam_m.", "adam_v.")):
            roles["state"] += nbytes
        else:
            roles["other"] += nbytes
    trace = []  # (RSS, peak RSS) - baseline after each call: calls 2 and 4 end a window
    for step in range(4):
        cell(Tensor(np.float32(1.0 + 0.1 * rank + 0.01 * step)))
        _ = net.params[1].asnumpy()  # (synchronises)
        trace.append((rss_mib() - baseline, peak_rss_mib() - baseline))
    after = rss_mib()
    _trim_heap()  # the C heap's free memory back to the OS: what stays is in use (or the pool's)
    result = {
        "rank": rank,
        "world": world,
        "setting": args.setting,
        "rows": args.rows,
        "psi": psi_of(args.rows),
        "bytes": roles,
        "parameter_bytes": sum(roles.values()),
        "rss_baseline_mib": baseline,
        "rss_built_mib": built,
        "rss_after_mib": after,
        "rss_trimmed_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
        "peak_reset": peak_reset,
        "trace_mib": trace,
    }
    with open(os.path.join(args.out, f"{args.setting}_{args.rows}_rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ---------------------------------------------------------------------- launches

# MindSpore's memory pool reports its high-water marks when the process ends, at INFO level of
# its PRE_ACT module: "... peak used mem:23M, actual peak used mem:30M, ..." (MiB). The kernels'
# outputs (the graphs' transients) live there; Parameters do not ("Weight used size:0M").
_POOL_LINE = re.compile(
    r"DumpDynamicMemPoolStateInfo\].*?total allocated mem:(\d+)M.*?peak used mem:(\d+)M, actual peak used mem:(\d+)M"
)


def _pool_stats(log_path: str):
    """(allocated, peak used, actual peak used) MiB of the worker's memory pool, or None."""
    if not os.path.exists(log_path):
        return None
    found = None
    with open(log_path, errors="replace") as f:
        for line in f:
            m = _POOL_LINE.search(line)
            if m:
                found = {"allocated": int(m.group(1)), "peak_used": int(m.group(2)), "actual_peak": int(m.group(3))}
    return found


def _launch(args, tag: str, worker_args, tmp: str):
    """One msrun launch of ``--run-as-worker worker_args``; the ranks' results (``tag``_rank<r>.json)
    with their memory pool's report."""
    env = worker_env()
    env.setdefault("MS_SUBMODULE_LOG_v", "{PRE_ACT:1}")  # the pool's report at exit (_POOL_LINE)
    out, logs = msrun_jobs.launch("benchmarks.dist.shard_memory", tag, worker_args, tmp, args.workers, env)
    for r, record in enumerate(out):
        record["pool_mib"] = _pool_stats(os.path.join(logs, f"worker_{r}.log"))
    return out


# ---------------------------------------------------------------------- the collectives alone


def _probe_worker(args) -> None:
    """One collective on a float32 Parameter, 3 times: AllReduce of ``n`` elements, or AllGather of
    ``n / W`` (the window end's two, with outputs of n elements)."""
    from benchmarks.common.proc_memory import import_mindspore, peak_rss_mib, reset_peak_rss, rss_mib

    import_mindspore("graph")
    import numpy as np
    from mindspore import Parameter, Tensor, nn, ops
    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, world = get_rank(), get_group_size()
    size = args.n if args.op == "allreduce" else args.n // world
    baseline = rss_mib()

    class Collective(nn.Cell):
        def __init__(self):
            super().__init__()
            self.x = Parameter(Tensor(np.full(size, 1.0, np.float32)), name="x")
            self.op = ops.AllReduce(ops.ReduceOp.SUM) if args.op == "allreduce" else ops.AllGather()

        def construct(self):
            return self.op(self.x).sum()

    net = Collective()
    gc.collect()
    _trim_heap()
    built = rss_mib()
    reset_peak_rss()
    for _ in range(3):
        net()
    after = rss_mib()
    _trim_heap()
    result = {"rank": rank, "world": world, "op": args.op, "n": args.n, "rss_baseline_mib": baseline}
    result.update(rss_built_mib=built, rss_after_mib=after, rss_trimmed_mib=rss_mib(), peak_rss_mib=peak_rss_mib())
    with open(os.path.join(args.out, f"probe_{args.op}_{args.n}_rank{rank}.json"), "w") as f:
        json.dump(result, f)


def probe_report(runs: dict, world: int) -> str:
    """Bytes per element of n (slopes between the two sizes) of one collective: its output in the
    pool (extent), what stays resident outside the pool, and what the peak adds for a moment."""
    lines = [
        f"One collective alone, {world} CPU workers, output n float32 elements; bytes per element of n "
        "(slopes between the two sizes):",
        "",
        "| collective | rank | pool extent | retained outside the pool | after malloc_trim | peak - end |",
        "|---|---|---|---|---|---|",
    ]
    for op, by_n in runs.items():
        ns = sorted(by_n)
        for small, large in zip(by_n[ns[0]], by_n[ns[-1]]):

            def slope(key, a=small, b=large):
                return (key(b) - key(a)) * MIB / (b["n"] - a["n"])

            extent = slope(lambda r: (r["pool_mib"] or {}).get("actual_peak", float("nan")))
            end = slope(lambda r: r["rss_after_mib"] - r["rss_built_mib"])
            trimmed = slope(lambda r: r["rss_trimmed_mib"] - r["rss_built_mib"])
            peak = slope(lambda r: r["peak_rss_mib"] - r["rss_built_mib"])
            lines.append(
                f"| {op} | {small['rank']} | {extent:.2f} | {end - extent:.2f} | {trimmed - extent:.2f} "
                f"| {peak - end:.2f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------- reports


def _measures(r) -> dict:
    """MiB above the post-init() baseline (per worker) of what the tables show."""
    trace = r["trace_mib"]
    pool = r.get("pool_mib") or {}
    return {
        "parameters": r["parameter_bytes"] / MIB,
        "built": r["rss_built_mib"] - r["rss_baseline_mib"],
        "end": trace[-1][0],
        "trimmed": r.get("rss_trimmed_mib", float("nan")) - r["rss_baseline_mib"],
        "peak": r["peak_rss_mib"] - r["rss_baseline_mib"],
        "pool used": pool.get("peak_used", float("nan")),
        "pool extent": pool.get("actual_peak", float("nan")),
    }


def _slopes(small, large) -> dict:
    """Bytes per parameter between two sizes, for one rank's results."""
    d_psi = large["psi"] - small["psi"]
    a, b = _measures(small), _measures(large)
    return {key: (b[key] - a[key]) * MIB / d_psi for key in a}


def report(runs: dict, world: int) -> str:
    """The markdown tables: MiB per worker at each size, then the slopes between the smallest and
    the largest size against the formulas. ``runs[setting][rows]`` lists the ranks' results."""
    lines = [
        f"FusedAdamW, {world} CPU workers (msrun, GRAPH mode, 2 windows of 2 micro-steps), per worker; "
        "RSS in MiB above the post-init() baseline; pool: MindSpore's memory pool (in use at its peak, "
        "extent):",
        "",
        "| shard | Psi | rank | Parameters (MiB) | formula (MiB) | ratio | RSS built | RSS at the end "
        "| peak RSS | pool in use | pool extent |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, by_size in runs.items():
        for rows in sorted(by_size):
            for r in by_size[rows]:
                m = _measures(r)
                formula = formula_per_param(setting, world) * r["psi"] / MIB
                lines.append(
                    f"| {setting} | {r['psi']:,} | {r['rank']} | {m['parameters']:.1f} | {formula:.1f} "
                    f"| {m['parameters'] / formula:.4f} | {m['built']:.0f} | {m['end']:.0f} | {m['peak']:.0f} "
                    f"| {m['pool used']:.0f} | {m['pool extent']:.0f} |"
                )
    if not all(len(by_size) >= 2 for by_size in runs.values()):
        return "\n".join(lines)
    lines += [
        "",
        "Slopes between the two sizes, bytes per parameter (the constants cancel). Model of the RSS once "
        "every buffer has been used: Parameters + pool extent + 4 (the collectives' buffers outside the "
        "pool), with the pool extent measured (P + pool + 4) and as the formula of steady_per_param; the "
        f"peak adds the collectives' receive buffers for a moment (ring chunks of 4/W = {4 / world:g}):",
        "",
        "| shard | rank | Parameters | formula | RSS built (weights: 4) | pool in use | pool extent "
        "| RSS at the end | P + pool + 4 | ratio | steady formula | ratio | after malloc_trim | peak RSS "
        "| peak - end (chunks) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, by_size in runs.items():
        sizes = sorted(by_size)
        for small, large in zip(by_size[sizes[0]], by_size[sizes[-1]]):
            s = _slopes(small, large)
            model = s["parameters"] + s["pool extent"] + COLLECTIVE_RETAINED
            steady = steady_per_param(setting, world)
            steady_cells = "n/a | n/a" if steady is None else f"{steady:g} | {s['end'] / steady:.3f}"
            lines.append(
                f"| {setting} | {small['rank']} | {s['parameters']:.3f} | {formula_per_param(setting, world):g} "
                f"| {s['built']:.2f} | {s['pool used']:.2f} | {s['pool extent']:.2f} | {s['end']:.2f} "
                f"| {model:.2f} | {s['end'] / model:.3f} | {steady_cells} | {s['trimmed']:.2f} | {s['peak']:.2f} "
                f"| {s['peak'] - s['end']:.2f} ({(s['peak'] - s['end']) / (4 / world):.1f}) |"
            )
    return "\n".join(lines)


def formula_table(worlds=(8, 64), psi: float = 7e9) -> str:
    """GB (1e9 bytes) per worker by the formulas, without and with the micro-step's gradient (4 Psi)."""
    lines = [
        f"Formula, FusedAdamW, Psi = {psi:.3g} parameters, GB per worker (Parameters; + the micro-step's "
        "gradient 4 Psi):",
        "",
        '| W | None | "optimizer" | "gradients" |',
        "|---|---|---|---|",
    ]
    for w in worlds:
        cells = []
        for setting in SETTINGS:
            per = formula_per_param(setting, w)
            cells.append(f"{per * psi / 1e9:.1f} ({(per + 4) * psi / 1e9:.1f})")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rows", default="5000,10000", help="rows of the big matrix, one launch per size and setting")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--json", metavar="PATH", help="write the workers' results there")
    ap.add_argument("--from-json", metavar="PATH", help="print the tables of an earlier --json, run nothing")
    ap.add_argument("--formula-only", action="store_true", help="print the formula for W = 8, 64 and Psi = 7e9")
    ap.add_argument(
        "--collectives",
        action="store_true",
        help="instead: the memory of one AllReduce and one AllGather alone, outputs of Psi(rows) elements",
    )
    ap.add_argument("--run-as-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--op", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_as_worker:
        if args.op:
            _probe_worker(args)
        else:
            args.rows = int(args.rows)
            _worker(args)
        return
    if args.formula_only:
        print(formula_table())
        return
    if args.from_json:
        with open(args.from_json) as f:
            runs = {s: {int(k): v for k, v in by_size.items()} for s, by_size in json.load(f).items()}
        world = next(iter(next(iter(runs.values())).values()))[0]["world"]
    else:
        settings = args.settings.split(",")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            sys.exit(f"--settings: unknown {unknown}; choose among {', '.join(SETTINGS)}")
        rows = sorted({int(r) for r in args.rows.split(",")})
        if not rows or rows[0] < 1:
            sys.exit(f"--rows: positive integers separated by commas, e.g. 5000,10000; got {args.rows!r}")
        tmp = tempfile.mkdtemp(prefix="shard_memory_")
        if args.collectives:
            probes = {
                op: {n: _launch(args, f"probe_{op}_{n}", ["--op", op, "--n", str(n)], tmp) for n in map(psi_of, rows)}
                for op in ("allreduce", "allgather")
            }
            shutil.rmtree(tmp, ignore_errors=True)
            print(probe_report(probes, args.workers))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(probes, f, indent=1)
            return
        runs = {
            s: {r: _launch(args, f"{s}_{r}", ["--setting", s, "--rows", str(r)], tmp) for r in rows} for s in settings
        }
        shutil.rmtree(tmp, ignore_errors=True)
        world = args.workers
        if args.json:
            with open(args.json, "w") as f:
                json.dump(runs, f, indent=1)
    print()
    print(report(runs, world))
    print()
    print(formula_table())


if __name__ == "__main__":
    main()
