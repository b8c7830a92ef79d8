#!/usr/bin/env python
"""Kernel benchmark on the ResNet50-CIFAR parameter set (161 float32 tensors, 23.5M values).

Measures, in one process and as the median of --repeats timed runs (after --warmup untimed
ones), interleaved round by round so that every implementation sees the same machine noise:

  accumulate   acc += scale * grad                                   12 B/element
    ours        mindspore_accum._C.accumulate (one call for all 161 tensors)
    numpy       in-place ufuncs with out=, blocked so the temporary stays in L2 (1 thread)
    mindspore   GRAPH_MODE Cell: HyperMap(assign_add(acc, grad * scale)) over Parameter tuples
    ceiling     mindspore_accum._C.axpy_ceiling: a += s * b over the same acc/grad arrays

  flush        g = (acc + grad) * grad_scale + wd * param;  v = mu * v + g;
               param -= lr * v;  acc = 0                             28 B/element
               (reads param, moment, acc, grad; writes param, moment, acc)
    ours        mindspore_accum._C.momentum_update
    numpy       the same math in blocked in-place ufuncs
    mindspore   GRAPH_MODE Cell: HyperMap(add), HyperMap(mul by grad_scale), nn.Momentum(weight_decay),
                HyperMap(assign(acc, zeros)) in one jitted construct
    ceiling*    axpy_ceiling over the flush footprint (a = param+moment, b = acc+grad: 4 arrays,
                24 B/element): a diagnostic row, not the reference for ratios

  squares      sum of x * x over acc and grad (the window-end check)    8 B/element
    ours        mindspore_accum._C.sum_of_squares (one call for all 322 tensors)
    numpy       one float32 np.dot(x, x) per tensor, summed in Python
    mindspore   GRAPH_MODE Cell: per tensor cast, square, sum, added up (GradAccumCell's check
                before it had the kernel)

  adamw        the AdamW window end (benchmarks/common/adamw_common.py): the last gradient added, scaled,
               AdamW with decoupled weight decay, acc = 0                       36 B/element
               (reads param, exp_avg, exp_avg_sq, acc, grad; writes param, exp_avg, exp_avg_sq, acc)
    ceiling     the accumulate ceiling's bandwidth (axpy, same run, same round) at 36 B/element
    ours        mindspore_accum._C.adamw_update (acc + grad, bias correction, step 10)
    mindspore   GRAPH_MODE Cell: HyperMap(add), HyperMap(mul by grad_scale), nn.AdamWeightDecay
                (no bias correction: checked against that reference), HyperMap(assign(acc, zeros))
    pytorch     --torch-python PATH: benchmarks/kernels/bench_adamw_torch.py in its own process (PyTorch
                CPU: torch._foreach_add_, torch.optim.AdamW(fused=True) with grad_scale, _foreach_zero_),
                told to run once per round over a pipe and timed inside that process

GB/s = bytes per element of the *operation* (12, 28 or 36) x elements / median time, for every
implementation (so for NumPy/MindSpore it is an effective figure; they move more bytes than that).
"ratio vs ceiling" = GB/s / ceiling GB/s (the ceiling being the 12 B/element axpy of the same
run); "x MindSpore" = MindSpore-native median time / this median time.

Weight decay follows nn.Momentum's default filter: parameters whose name contains 'gamma' or
'beta' get none; the fused kernel is given the same per-tensor list.

Usage:  python -m benchmarks.kernels.bench_kernels [--repeats 7] [--warmup 2] [--threads N] [--json out.json]
        python -m benchmarks.kernels.bench_kernels --quick
        python -m benchmarks.kernels.bench_kernels --groups adamw --torch-python /tmp/torchvenv/bin/python
"""

from __future__ import annotations

import os

# Must precede the first `import mindspore` (see DESIGN.md, "CPU speed trap").
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import argparse
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import adamw_common as aw  # noqa: E402
from benchmarks.common.resnet50_cifar_shapes import NUM_TENSORS, NUM_VALUES, RESNET50_CIFAR_SHAPES, check_shapes  # noqa: E402
from benchmarks.common.rounds import median_of_ratios, module_command, rounds, worker_env  # noqa: E402

ACC_BYTES = 12  # read acc, read grad, write acc
FLUSH_BYTES = 28  # read param, moment, acc, grad; write param, moment, acc
SQUARES_BYTES = 8  # read acc and grad
CEIL_BYTES = 12

# Hyper-parameters: small, so that repeated runs keep every value finite and normal.
SCALE = 0.25
LR = 1e-3
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
GRAD_SCALE = 0.25  # 1 / (k * loss_scale) with k = 4 micro-batches, loss_scale = 1
CEIL_S = 1e-3


# --------------------------------------------------------------------------------------------
# machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine_facts(C, ms, args, ms_threads) -> dict:
    info = dict(C.build_info())
    thp = read_text("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": os.getloadavg(),
        "transparent_hugepage": thp,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mindspore": ms.__version__,
        "mindspore_accum": info.get("version"),
        "build_info": info,
        "ours_threads": C.num_threads(),
        "mindspore_threads": ms_threads,
        "numpy_threads": 1,
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "MSACCUM_NUM_THREADS": os.environ.get("MSACCUM_NUM_THREADS"),
    }


# --------------------------------------------------------------------------------------------
# data


def aligned_empty(shape, align: int, offset: int = 0) -> np.ndarray:
    """float32 array whose data starts `offset` bytes past an `align`-byte boundary."""
    n = math.prod(shape)
    raw = np.empty(n * 4 + align + offset, dtype=np.uint8)
    start = (-raw.ctypes.data) % align + offset
    return raw[start : start + n * 4].view(np.float32).reshape(shape)


class State:
    """One implementation's own param / moment / acc / grad lists."""

    def __init__(self, init: dict[str, list[np.ndarray]], align: int, offset: int):
        def copy(arrs):
            out = []
            for a in arrs:
                b = aligned_empty(a.shape, align, offset)
                b[...] = a
                out.append(b)
            return out

        self.param = copy(init["param"])
        self.moment = copy(init["moment"])
        self.acc = copy(init["acc"])
        self.grad = copy(init["grad"])


def make_init(shapes, seed=0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)

    def lst(std):
        return [(rng.standard_normal(s, dtype=np.float32) * std).astype(np.float32) for _, s in shapes]

    return {"param": lst(0.05), "moment": lst(0.01), "acc": lst(0.1), "grad": lst(1.0)}


def weight_decays(shapes) -> list[float]:
    # nn.Momentum's default decay filter: no weight decay for names containing gamma/beta.
    return [0.0 if ("gamma" in n or "beta" in n) else WEIGHT_DECAY for n, _ in shapes]


# --------------------------------------------------------------------------------------------
# NumPy: the same math with in-place ufuncs, blocked so temporaries stay in cache


class NumpyImpl:
    def __init__(self, state: State, wds: list[float], block: int):
        self.s = state
        self.wds = wds
        self.block = block
        self.t1 = np.empty(block, np.float32)
        self.t2 = np.empty(block, np.float32)
        flat = lambda arrs: [a.reshape(-1) for a in arrs]  # noqa: E731 (views, no copies)
        self.param, self.moment = flat(state.param), flat(state.moment)
        self.acc, self.grad = flat(state.acc), flat(state.grad)

    def accumulate(self, scale=SCALE):
        B, t1 = self.block, self.t1
        for a, g in zip(self.acc, self.grad):
            n = a.size
            for i in range(0, n, B):
                j = min(n, i + B)
                t = t1[: j - i]
                np.multiply(g[i:j], scale, out=t)
                np.add(a[i:j], t, out=a[i:j])

    def flush(self):
        B, t1, t2 = self.block, self.t1, self.t2
        for p, v, a, g, wd in zip(self.param, self.moment, self.acc, self.grad, self.wds):
            n = p.size
            for i in range(0, n, B):
                j = min(n, i + B)
                pp, vv, aa = p[i:j], v[i:j], a[i:j]
                x, y = t1[: j - i], t2[: j - i]
                np.add(aa, g[i:j], out=x)  # acc + grad
                np.multiply(x, GRAD_SCALE, out=x)  # * grad_scale
                if wd:
                    np.multiply(pp, wd, out=y)  # + wd * param
                    np.add(x, y, out=x)
                np.multiply(vv, MOMENTUM, out=vv)  # v = mu * v + g
                np.add(vv, x, out=vv)
                np.multiply(vv, LR, out=y)  # param -= lr * v
                np.subtract(pp, y, out=pp)
                aa.fill(0.0)  # acc = 0


# --------------------------------------------------------------------------------------------
# MindSpore-native (GRAPH_MODE)


def window_end_cell(ms, name, weights, accs, grads, grad_scale, make_optimizer):
    """MindSpore's own window end as one GRAPH_MODE cell: acc + grad, times ``grad_scale``, the
    optimizer ``make_optimizer()`` builds (nn.Momentum, nn.AdamWeightDecay), acc = 0 -- each
    element-wise step mapped over the tensor lists with HyperMap."""
    from mindspore import Tensor, nn, ops

    add_op, scale_op, zero_op = window_end_ops(name)

    class MsWindowEnd(nn.Cell):
        def __init__(self):
            super().__init__()
            self.weights, self.accs, self.grads = weights, accs, grads
            self.grad_scale = Tensor(grad_scale, ms.float32)
            self.hyper_map = ops.HyperMap()
            self.optimizer = make_optimizer()

        def construct(self):
            summed = self.hyper_map(add_op, self.accs, self.grads)
            scaled = self.hyper_map(ops.partial(scale_op, self.grad_scale), summed)
            done = self.optimizer(scaled)
            zeroed = self.hyper_map(zero_op, self.accs)
            return ops.depend(zeroed[-1], (done, zeroed))

    return MsWindowEnd()


def window_end_ops(name):
    """The element-wise steps of the window end, for HyperMap: acc + grad, times the grad scale,
    and acc = 0 (MultitypeFuncGraphs named ``<name>_add_op``, ...)."""
    from mindspore import ops

    add_op = ops.MultitypeFuncGraph(f"{name}_add_op")

    @add_op.register("Tensor", "Tensor")
    def _add(acc, grad):  # noqa: ANN001
        return acc + grad

    scale_op = ops.MultitypeFuncGraph(f"{name}_scale_op")

    @scale_op.register("Tensor", "Tensor")
    def _scale(s, x):  # noqa: ANN001
        return x * s

    zero_op = ops.MultitypeFuncGraph(f"{name}_zero_op")

    @zero_op.register("Tensor")
    def _zero(acc):  # noqa: ANN001
        return ops.assign(acc, ops.zeros_like(acc))

    return add_op, scale_op, zero_op


def param_tuple(shapes, prefix, arrs):
    """Copies of ``arrs`` as non-trainable Parameters named ``<prefix>.<tensor name>``."""
    from mindspore import Parameter, ParameterTuple, Tensor

    return ParameterTuple(
        Parameter(Tensor(a.copy()), name=f"{prefix}.{n}", requires_grad=False) for (n, _), a in zip(shapes, arrs)
    )


def build_mindspore(ms, init, shapes, wds):
    from mindspore import Tensor, nn, ops

    acc_op = ops.MultitypeFuncGraph("bench_acc_op")

    @acc_op.register("Tensor", "Tensor", "Tensor")
    def _acc(scale, acc, grad):  # noqa: ANN001
        return ops.assign_add(acc, grad * scale)

    def params(prefix, arrs):
        return param_tuple(shapes, prefix, arrs)

    class MsAccumulate(nn.Cell):
        def __init__(self, accs, grads):
            super().__init__()
            self.accs, self.grads = accs, grads
            self.scale = Tensor(SCALE, ms.float32)
            self.hyper_map = ops.HyperMap()

        def construct(self):
            res = self.hyper_map(ops.partial(acc_op, self.scale), self.accs, self.grads)
            return ops.depend(res[-1], res)  # a small output that is ready only after every assign_add

    class MsSquares(nn.Cell):
        def __init__(self, accs, grads):
            super().__init__()
            self.accs, self.grads = accs, grads

        def construct(self):
            total = Tensor(0.0, ms.float32)
            for x in self.accs + self.grads:
                x32 = ops.cast(x, ms.float32)
                total = total + (x32 * x32).sum()
            return total

    weights = params("param", init["param"])
    accs = params("acc", init["acc"])
    grads = params("grad", init["grad"])
    acc_cell, flush_cell = (
        MsAccumulate(accs, grads),
        window_end_cell(
            ms,
            "bench",
            weights,
            accs,
            grads,
            GRAD_SCALE,
            lambda: nn.Momentum(weights, learning_rate=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        ),
    )
    squares_cell = MsSquares(accs, grads)
    for cell in (acc_cell, flush_cell, squares_cell):
        cell.set_train(False)
    # nn.Momentum's moments start at zero; start from the same moments as the others.
    for m, a in zip(flush_cell.optimizer.moments, init["moment"]):
        m.set_data(Tensor(a.copy()))
    # The filter must agree with the per-tensor list the fused kernel gets.
    assert list(flush_cell.optimizer.decay_flags) == [w > 0 for w in wds]
    return acc_cell, flush_cell, squares_cell, weights, accs, flush_cell.optimizer.moments


def build_mindspore_adamw(ms, init, shapes, wds):
    """GRAPH_MODE: acc + grad, * grad_scale, nn.AdamWeightDecay, acc = 0 (MindSpore's own AdamW
    window end; nn.AdamWeightDecay has no bias correction)."""
    from mindspore import Tensor, nn

    def params(prefix, arrs):
        return param_tuple(shapes, prefix, arrs)

    weights = params("aw_param", init["param"])
    accs = params("aw_acc", init["acc"])
    grads = params("aw_grad", init["grad"])
    cell = window_end_cell(
        ms,
        "bench_adamw",
        weights,
        accs,
        grads,
        aw.GRAD_SCALE,
        lambda: nn.AdamWeightDecay(
            weights, learning_rate=aw.LR, beta1=aw.BETA1, beta2=aw.BETA2, eps=aw.EPS, weight_decay=aw.WEIGHT_DECAY
        ),
    )
    cell.set_train(False)
    opt = cell.optimizer
    for m, a in zip(opt.moments1, init["exp_avg"]):
        m.set_data(Tensor(a.copy()))
    for v, a in zip(opt.moments2, init["exp_avg_sq"]):
        v.set_data(Tensor(a.copy()))
    assert list(opt.decay_flags) == [w > 0 for w in wds]
    return cell, weights, accs, opt.moments1, opt.moments2


class TorchProcess:
    """benchmarks/kernels/bench_adamw_torch.py in its own process, run once per request (see its docstring)."""

    external_time = True  # the timing loop takes the time measured inside the PyTorch process

    def __init__(self, python, threads, quick):
        cmd = module_command("benchmarks.kernels.bench_adamw_torch", "--threads", threads, python=python)
        if quick:
            cmd.append("--quick")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=worker_env(cpu_isa_fix=False)
        )
        self.hello = self._read()
        if not self.hello.get("ready"):
            raise RuntimeError(f"bench_adamw_torch.py did not start: {self.hello}")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_adamw_torch.py exited ({self.proc.wait()})")
        return json.loads(line)

    def __call__(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()["ms"] / 1e3

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------------
# verification: one accumulate and one flush, every implementation vs a float64 reference


def reference(init, wds):
    out = {"param": [], "moment": [], "acc_after_accumulate": []}
    for p, v, a, g, wd in zip(init["param"], init["moment"], init["acc"], init["grad"], wds):
        p, v, a, g = (x.astype(np.float64) for x in (p, v, a, g))
        a = a + SCALE * g
        out["acc_after_accumulate"].append(a)
        gg = (a + g) * GRAD_SCALE + wd * p
        v = MOMENTUM * v + gg
        out["param"].append(p - LR * v)
        out["moment"].append(v)
    return out


def max_rel_err(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(got, want):
        if x.size == 0:
            continue
        denom = np.maximum(np.abs(y), 1e-3)
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y) / denom)))
    return worst


# --------------------------------------------------------------------------------------------


def fmt_table(rows) -> str:
    head = ("op", "implementation", "median ms", "min ms", "GB/s", "vs ceiling", "x MindSpore")
    body = []
    for r in rows:
        body.append(
            (
                r["op"],
                r["impl"],
                f"{r['median_ms']:.2f}",
                f"{r['min_ms']:.2f}",
                f"{r['gbps']:.1f}",
                "" if r["ratio_vs_ceiling"] is None else f"{r['ratio_vs_ceiling']:.2f}",
                "" if r["speedup_vs_mindspore"] is None else f"{r['speedup_vs_mindspore']:.1f}x",
            )
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells):
        return (
            "| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
        )

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i >= 2 else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed runs per implementation (default 7; 5 with --quick)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2; 1 with --quick)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for our kernels and for MindSpore's CPU kernels (default: our default, the CPU affinity)",
    )
    ap.add_argument(
        "--ms-threads",
        type=int,
        default=0,
        help="MindSpore's CPU kernel threads (default 0: the same as ours; -1: leave MindSpore's own default)",
    )
    ap.add_argument("--json", type=str, default=None, help="write machine-readable results here")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller run: stem + layer1..3 only (~8.5M values) and fewer repeats; not README numbers",
    )
    ap.add_argument("--numpy-block", type=int, default=1 << 14, help="NumPy blocking, elements (default 16384)")
    ap.add_argument("--align", type=int, default=64, help="byte alignment of every array (default 64)")
    ap.add_argument(
        "--misalign",
        type=int,
        default=0,
        help="extra byte offset past the alignment, e.g. 16 to mimic malloc (default 0)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=0.005,
        help="seconds to sleep before every timed call, so that threads left spinning by the previous "
        "implementation (MindSpore's pool) do not steal the 2 cores from the next (default 0.005; "
        "longer idling, ~0.1 s, already slows the next call on this VM)",
    )
    ap.add_argument(
        "--order",
        choices=["interleaved", "grouped"],
        default="interleaved",
        help="interleaved: every round runs every implementation once; grouped: all runs of one "
        "implementation back to back (default interleaved)",
    )
    ap.add_argument(
        "--no-hugepages",
        action="store_true",
        help="allocate the arrays without NumPy's madvise(MADV_HUGEPAGE) (4 KiB pages: more TLB misses)",
    )
    ap.add_argument("--skip", default="", help="comma list of implementations to leave out: numpy,mindspore")
    ap.add_argument(
        "--groups",
        default="accumulate,flush,squares,adamw",
        help="comma list of the op groups to time (default all; the accumulate ceiling always runs)",
    )
    ap.add_argument(
        "--torch-python",
        default=None,
        help="a Python with torch installed: adds PyTorch's AdamW window end to the adamw group, run by "
        "benchmarks/kernels/bench_adamw_torch.py in its own process",
    )
    ap.add_argument("--no-verify", action="store_true", help="skip the correctness check against float64")
    args = ap.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    groups = {s.strip() for s in args.groups.split(",") if s.strip()}

    import mindspore as ms

    import mindspore_accum._C as C

    check_shapes()
    shapes = RESNET50_CIFAR_SHAPES
    if args.quick:
        shapes = [(n, s) for n, s in shapes if not n.startswith("layer4.")]
    n_values = sum(math.prod(s) for _, s in shapes)

    if args.threads > 0:
        C.set_num_threads(args.threads)
    ours_threads = C.num_threads()
    ms_threads = args.ms_threads if args.ms_threads > 0 else ours_threads
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if args.ms_threads >= 0:
        ms.device_context.cpu.op_tuning.threads_num(ms_threads)
    else:
        ms_threads = "default"

    facts = machine_facts(C, ms, args, ms_threads)
    print("== machine")
    print(
        f"cpu: {facts['cpu_model']}  logical cpus: {facts['logical_cpus']}  affinity: {facts['affinity_cpus']}"
        f"  loadavg: {' '.join(f'{x:.2f}' for x in facts['loadavg_start'])}"
    )
    bi = facts["build_info"]
    print(
        f"mindspore_accum {bi['version']}: vector_isa={bi['vector_isa']} threads={ours_threads} "
        f"cuda={bi['cuda']} compiler={bi['compiler']}"
    )
    print(
        f"python {facts['python']}  numpy {facts['numpy']} (1 thread)  mindspore {facts['mindspore']} "
        f"(GRAPH_MODE, CPU, {ms_threads} kernel threads)"
    )
    print(
        f"ONEDNN_MAX_CPU_ISA={facts['ONEDNN_MAX_CPU_ISA']}  OPENBLAS_CORETYPE={facts['OPENBLAS_CORETYPE']}  "
        f"THP: {facts['transparent_hugepage']}"
    )
    print(
        f"== workload: {'QUICK subset of ' if args.quick else ''}ResNet50-CIFAR parameters: {len(shapes)} float32 "
        f"tensors, {n_values:,} values ({n_values * 4 / 2**20:.1f} MiB per list)"
        + ("" if args.quick else f" [full set: {NUM_TENSORS} / {NUM_VALUES:,}]")
    )
    print(
        f"median of {repeats} timed runs after {warmup} warm-up runs, order {args.order}, {args.settle} s settle "
        f"before each call; arrays {args.align}-byte aligned + {args.misalign}"
        f"{', no huge pages' if args.no_hugepages else ''}"
    )
    sys.stdout.flush()

    if args.no_hugepages:
        np.core.multiarray._set_madvise_hugepage(False)
    init = make_init(shapes)
    wds = weight_decays(shapes)
    ours = State(init, args.align, args.misalign)
    ceil_a = ours.acc  # the ceiling runs over the very arrays ours-accumulate uses
    ceil_b = ours.grad
    ceil4_a = ours.param + ours.moment
    ceil4_b = ours.acc + ours.grad
    np_impl = NumpyImpl(State(init, args.align, args.misalign), wds, args.numpy_block) if "numpy" not in skip else None

    ms_objs = None
    if "mindspore" not in skip:
        t0 = time.perf_counter()
        ms_objs = build_mindspore(ms, init, shapes, wds)
        ms_acc_cell, ms_flush_cell, ms_squares_cell, ms_weights, ms_accs, ms_moments = ms_objs

    # -- the AdamW window end (its own state for every implementation)
    aw_init = aw.adamw_init(shapes) if "adamw" in groups else None
    aw_wds = aw.adamw_weight_decays(shapes)
    torch_proc = None
    if aw_init is not None:
        aw_ours = {k: [] for k in aw_init}
        for k, arrs in aw_init.items():
            for a in arrs:
                b = aligned_empty(a.shape, args.align, args.misalign)
                b[...] = a
                aw_ours[k].append(b)
        if ms_objs:
            ms_aw_cell, ms_aw_weights, ms_aw_accs, ms_aw_m, ms_aw_v = build_mindspore_adamw(ms, aw_init, shapes, aw_wds)
        if args.torch_python:
            torch_proc = TorchProcess(args.torch_python, ours_threads, args.quick)
            print(f"(PyTorch {torch_proc.hello['torch']} in its own process, {torch_proc.hello['threads']} threads)")

    def ours_adamw():
        C.adamw_flush(
            aw_ours["param"],
            aw_ours["exp_avg"],
            aw_ours["exp_avg_sq"],
            aw_ours["acc"],
            aw_ours["grad"],
            lr=aw.LR,
            beta1=aw.BETA1,
            beta2=aw.BETA2,
            eps=aw.EPS,
            weight_decay=aw_wds,
            step=aw.STEP,
            grad_scale=aw.GRAD_SCALE,
            bias_correction=True,
        )

    def ms_adamw():
        ms_aw_cell().asnumpy()

    def ours_acc():
        C.accumulate(ours.acc, ours.grad, SCALE)

    def ours_flush():
        C.momentum_flush(
            ours.param,
            ours.moment,
            ours.acc,
            ours.grad,
            lr=LR,
            momentum=MOMENTUM,
            grad_scale=GRAD_SCALE,
            weight_decay=wds,
            nesterov=False,
        )

    def ceiling():
        C.axpy_ceiling(ceil_a, ceil_b, CEIL_S)

    def ceiling4():
        C.axpy_ceiling(ceil4_a, ceil4_b, CEIL_S)

    def ours_squares():
        return C.sum_of_squares(ours.acc + ours.grad)

    def np_squares():
        return float(sum(np.dot(x.reshape(-1), x.reshape(-1)) for x in np_impl.s.acc + np_impl.s.grad))

    def ms_squares():
        return float(ms_squares_cell().asnumpy())

    def ms_acc():
        ms_acc_cell().asnumpy()  # GRAPH_MODE on CPU may return before the kernels finish: wait

    def ms_flush():
        ms_flush_cell().asnumpy()

    # -- verification (also the first touch of every array and MindSpore's graph compilation)
    if not args.no_verify:
        ref = reference(init, wds)
        checks = {}
        ours_acc()
        checks["ours accumulate"] = max_rel_err(ours.acc, ref["acc_after_accumulate"])
        ours_flush()
        checks["ours flush param"] = max_rel_err(ours.param, ref["param"])
        checks["ours flush moment"] = max_rel_err(ours.moment, ref["moment"])
        checks["ours flush acc==0"] = float(max(np.abs(a).max() for a in ours.acc))
        exact = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in ours.acc + ours.grad)
        checks["ours squares"] = abs(ours_squares() - exact) / exact
        if np_impl:
            np_impl.accumulate()
            checks["numpy accumulate"] = max_rel_err(np_impl.s.acc, ref["acc_after_accumulate"])
            np_impl.flush()
            checks["numpy flush param"] = max_rel_err(np_impl.s.param, ref["param"])
            checks["numpy flush moment"] = max_rel_err(np_impl.s.moment, ref["moment"])
            exact_np = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in np_impl.s.acc + np_impl.s.grad)
            checks["numpy squares"] = abs(np_squares() - exact_np) / exact_np
        if ms_objs:
            ms_acc()
            checks["mindspore accumulate"] = max_rel_err([p.asnumpy() for p in ms_accs], ref["acc_after_accumulate"])
            ms_flush()
            checks["mindspore flush param"] = max_rel_err([p.asnumpy() for p in ms_weights], ref["param"])
            checks["mindspore flush moment"] = max_rel_err([p.asnumpy() for p in ms_moments], ref["moment"])
            checks["mindspore flush acc==0"] = float(max(np.abs(p.asnumpy()).max() for p in ms_accs))
            exact_ms = sum(
                float(np.sum(p.asnumpy().astype(np.float64) ** 2)) for p in list(ms_accs) + list(ms_squares_cell.grads)
            )
            checks["mindspore squares"] = abs(ms_squares() - exact_ms) / exact_ms
            print(f"(MindSpore graphs built and compiled in {time.perf_counter() - t0:.1f} s)")
        del ref
        if aw_init is not None:
            ref = aw.adamw_reference(aw_init, aw_wds, bias_correction=True)
            ours_adamw()
            checks["ours adamw param"] = aw.max_rel_err(aw_ours["param"], ref["param"])
            checks["ours adamw exp_avg"] = aw.max_rel_err(aw_ours["exp_avg"], ref["exp_avg"])
            checks["ours adamw exp_avg_sq"] = aw.max_rel_err(aw_ours["exp_avg_sq"], ref["exp_avg_sq"])
            checks["ours adamw acc==0"] = float(max(np.abs(a).max() for a in aw_ours["acc"]))
            if ms_objs:  # nn.AdamWeightDecay: no bias correction
                ref = aw.adamw_reference(aw_init, aw_wds, bias_correction=False)
                ms_adamw()
                checks["mindspore adamw param"] = aw.max_rel_err([p.asnumpy() for p in ms_aw_weights], ref["param"])
                checks["mindspore adamw exp_avg"] = aw.max_rel_err([p.asnumpy() for p in ms_aw_m], ref["exp_avg"])
                checks["mindspore adamw exp_avg_sq"] = aw.max_rel_err([p.asnumpy() for p in ms_aw_v], ref["exp_avg_sq"])
                checks["mindspore adamw acc==0"] = float(max(np.abs(p.asnumpy()).max() for p in ms_aw_accs))
            if torch_proc:  # checked inside its process, from the same initial state, before timing
                for k, v in torch_proc.hello["verify"].items():
                    checks[f"pytorch adamw {k}"] = v
            del ref
        bad = {k: v for k, v in checks.items() if not v <= 1e-5}
        print(
            "== verification vs float64 (max relative error): " + ", ".join(f"{k} {v:.1e}" for k, v in checks.items())
        )
        if bad:
            print(f"VERIFICATION FAILED: {bad}")
            return 1

    # -- timing: every round runs every implementation once, in a fixed order
    cases = [  # (op, impl, fn, bytes per element of the op, elements the bytes count over)
        ("accumulate", "ceiling: _C.axpy_ceiling", ceiling, CEIL_BYTES, n_values),
    ]
    cases.append(("accumulate", "ours: _C.accumulate", ours_acc, ACC_BYTES, n_values))
    if np_impl:
        cases.append(("accumulate", "numpy (in-place ufuncs)", np_impl.accumulate, ACC_BYTES, n_values))
    if ms_objs:
        cases.append(("accumulate", "mindspore (HyperMap assign_add)", ms_acc, ACC_BYTES, n_values))
    cases.append(("flush", "ceiling*: axpy over 4 arrays", ceiling4, 24, n_values))
    cases.append(("flush", "ours: _C.momentum_update", ours_flush, FLUSH_BYTES, n_values))
    if np_impl:
        cases.append(("flush", "numpy (in-place ufuncs)", np_impl.flush, FLUSH_BYTES, n_values))
    if ms_objs:
        cases.append(("flush", "mindspore (add,mul,nn.Momentum,zero)", ms_flush, FLUSH_BYTES, n_values))
    cases.append(("squares", "ours: _C.sum_of_squares", ours_squares, SQUARES_BYTES, n_values))
    if np_impl:
        cases.append(("squares", "numpy (float32 dot per tensor)", np_squares, SQUARES_BYTES, n_values))
    if ms_objs:
        cases.append(("squares", "mindspore (cast,square,sum per tensor)", ms_squares, SQUARES_BYTES, n_values))
    if aw_init is not None:
        # derived, not run: the ceiling's time of the same round scaled to 36 B/element
        cases.append(("adamw", "ceiling: axpy bandwidth at 36 B/element", None, aw.ADAMW_BYTES, n_values))
        cases.append(("adamw", "ours: _C.adamw_update", ours_adamw, aw.ADAMW_BYTES, n_values))
        if ms_objs:
            cases.append(("adamw", "mindspore (add,mul,nn.AdamWeightDecay,zero)", ms_adamw, aw.ADAMW_BYTES, n_values))
        if torch_proc:
            cases.append(("adamw", "pytorch 2.13 (foreach_add,AdamW fused,zero)", torch_proc, aw.ADAMW_BYTES, n_values))
    # the accumulate ceiling (index 0) always runs: every ratio refers to it
    cases = [c for i, c in enumerate(cases) if i == 0 or c[0] in groups]

    times = {i: [] for i in range(len(cases))}
    gc.collect()
    gc.disable()
    if args.order == "interleaved":
        schedule = [(r, i) for r, order in rounds(warmup + repeats, range(len(cases))) for i in order]
    else:
        schedule = [(r, i) for i in range(len(cases)) for r in range(warmup + repeats)]
    try:
        for r, i in schedule:
            fn = cases[i][2]
            if fn is None:  # derived after the loop
                continue
            if args.settle > 0:
                time.sleep(args.settle)
            t0 = time.perf_counter()
            external = fn()
            dt = time.perf_counter() - t0
            if getattr(fn, "external_time", False):
                dt = external  # measured in the other process, without the pipe
            if r >= warmup:
                times[i].append(dt)
    finally:
        gc.enable()
        if torch_proc:
            torch_proc.close()
    for i, c in enumerate(cases):
        if c[2] is None:  # the ceiling's bandwidth at this row's bytes per element, round by round
            times[i] = [t * c[3] / CEIL_BYTES for t in times[0]]

    # every value must still be finite (a NaN/denormal storm would make the timings meaningless)
    finite = all(np.isfinite(a).all() for a in ours.param + ours.moment + ours.acc)
    if np_impl:
        finite &= all(np.isfinite(a).all() for a in np_impl.s.param + np_impl.s.moment + np_impl.s.acc)
    if ms_objs:
        finite &= all(np.isfinite(p.asnumpy()).all() for p in list(ms_weights) + list(ms_accs))
    if aw_init is not None:
        finite &= all(np.isfinite(a).all() for k in ("param", "exp_avg", "exp_avg_sq") for a in aw_ours[k])

    rows = []
    for i, (op, impl, _, bpe, n) in enumerate(cases):
        med = statistics.median(times[i])
        rows.append(
            {
                "op": op,
                "impl": impl,
                "bytes_per_element": bpe,
                "elements": n,
                "median_ms": med * 1e3,
                "min_ms": min(times[i]) * 1e3,
                "times_ms": [t * 1e3 for t in times[i]],
                "gbps": bpe * n / med / 1e9,
            }
        )
    ceil_gbps = rows[0]["gbps"]
    # Paired figures: the same ratios computed within each round, then the median over rounds.
    # With interleaved order they cancel slow drifts of the machine (e.g. a neighbour's memory traffic).
    ms_index = {op: i for i, (op, impl, *_rest) in enumerate(cases) if impl.startswith("mindspore")}
    for i, r in enumerate(rows):
        op = r["op"]
        r["paired_ratio_vs_ceiling"] = median_of_ratios(
            [r["bytes_per_element"] / t for t in times[i]], [CEIL_BYTES / tc for tc in times[0]]
        )
        r["paired_speedup_vs_mindspore"] = median_of_ratios(times[ms_index[op]], times[i]) if op in ms_index else None
    torch_index = {op: i for i, (op, impl, *_rest) in enumerate(cases) if impl.startswith("pytorch")}
    for i, r in enumerate(rows):
        op = r["op"]
        r["paired_speedup_vs_pytorch"] = (
            median_of_ratios(times[torch_index[op]], times[i]) if op in torch_index else None
        )
    ms_med = {r["op"]: r["median_ms"] for r in rows if r["impl"].startswith("mindspore")}
    for r in rows:
        r["ratio_vs_ceiling"] = None if r["impl"].startswith("ceiling:") else r["gbps"] / ceil_gbps
        r["speedup_vs_mindspore"] = (
            ms_med[r["op"]] / r["median_ms"] if r["op"] in ms_med and not r["impl"].startswith("mindspore") else None
        )

    facts["loadavg_end"] = os.getloadavg()
    print()
    print(fmt_table(rows))
    print(
        f"\nceiling = {ceil_gbps:.1f} GB/s (axpy, 12 B/element, same arrays as ours-accumulate). "
        f"GB/s counts the op's bytes (accumulate 12, flush 28, squares 8, adamw 36 B/element) for every row; "
        f"ceiling* counts 24. loadavg at end: {' '.join(f'{x:.2f}' for x in facts['loadavg_end'])}"
        + ("" if finite else "  WARNING: non-finite values appeared")
    )

    aw_rows = [r for r in rows if r["op"] == "adamw"]
    if aw_rows:
        print(
            "\n== adamw window end (36 B/element): medians over rounds of the per-round ratios "
            "(every implementation ran once per round, in turn)"
        )
        print("| implementation | median ms | GB/s | vs ceiling (paired) | x MindSpore (paired) | x PyTorch (paired) |")
        print("|---|--:|--:|--:|--:|--:|")
        for r in aw_rows:
            ms_x = r["paired_speedup_vs_mindspore"]
            pt_x = r["paired_speedup_vs_pytorch"]
            print(
                f"| {r['impl']} | {r['median_ms']:.2f} | {r['gbps']:.1f} | {r['paired_ratio_vs_ceiling']:.2f} | "
                f"{'' if ms_x is None else f'{ms_x:.2f}x'} | {'' if pt_x is None else f'{pt_x:.2f}x'} |"
            )

    targets = []
    by = {(r["op"], r["impl"].split(":")[0].split(" ")[0]): r for r in rows}
    for op, ceil_target in (("accumulate", 0.9), ("flush", 0.85)):
        r = by.get((op, "ours"))
        if r is None:  # group not run
            continue
        ok_c = r["ratio_vs_ceiling"] >= ceil_target
        line = (
            f"{op}: {r['ratio_vs_ceiling']:.2f}x ceiling (paired {r['paired_ratio_vs_ceiling']:.2f}; "
            f"target >= {ceil_target}) {'PASS' if ok_c else 'MISS'}"
        )
        ok = ok_c
        if r["speedup_vs_mindspore"] is not None:
            ok_m = r["speedup_vs_mindspore"] >= 5
            ok &= ok_m
            line += (
                f"; {r['speedup_vs_mindspore']:.1f}x MindSpore (paired {r['paired_speedup_vs_mindspore']:.1f}; "
                f"target >= 5) {'PASS' if ok_m else 'MISS'}"
            )
        targets.append({"op": op, "line": line, "pass": bool(ok)})
        print("target " + line)

    if args.json:
        out = {
            "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "machine": facts,
            "quick": args.quick,
            "tensors": len(shapes),
            "values": n_values,
            "repeats": repeats,
            "warmup": warmup,
            "align": args.align,
            "misalign": args.misalign,
            "numpy_block": args.numpy_block,
            "hugepages": not args.no_hugepages,
            "settle_s": args.settle,
            "order": args.order,
            "values_finite": bool(finite),
            "hyperparameters": {
                "scale": SCALE,
                "lr": LR,
                "momentum": MOMENTUM,
                "weight_decay": WEIGHT_DECAY,
                "grad_scale": GRAD_SCALE,
                "nesterov": False,
            },
            "ceiling_gbps": ceil_gbps,
            "results": rows,
            "targets": targets,
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
