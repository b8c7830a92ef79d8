"""Worker script for tests/distributed/test_distributed.py (data-parallel GradAccumCell under msrun).

    msrun --worker_num=2 --local_worker_num=2 --master_port=P --join=True \
        tests/distributed/dist_worker.py --out DIR [--modes graph,pynative] [--ir-dir DIR]

Every worker runs each case below in each requested mode (one process runs GRAPH and PYNATIVE
one after the other: msrun's start-up costs far more than the cases) and writes
``DIR/rank<r>.npz`` (weights per case, mode and stage) and ``DIR/rank<r>.json`` (AllReduce
counts per micro-step, return values, skip counters).

Importing this module needs no distributed set-up: the model, the data, the sharding and the
single-process reference (nn.TrainOneStepCell on the whole batch) are plain functions the test
imports, and ``run_case(..., rank=0, world=1)`` runs the very same worker code in a single
process without ``init()`` (the cell then has no AllReduce at all).

Counting AllReduce launches (class AllReduceCounter)
---------------------------------------------------
* From Python: ``AllReduce.__call__`` is patched at class level, so any AllReduce primitive
  launched from Python is counted (the cell launches none: its window end is compiled in both modes).
* In compiled graphs (the window end: a top-level Cell's graph in GRAPH mode, an ``ms.jit``
  method in PYNATIVE): the Cell graph executor (``_CellGraphExecutor``) and the JIT executor
  (``_JitExecutor``; both in ``mindspore.graph.api``, ``mindspore.common.api`` before 2.9) are
  patched at class level. When a phase is compiled, its
  compiled graph is read back from the executor (``get_func_graph_proto(phase, "anf_ir")``) and
  its AllReduce nodes are counted; every run of a compiled graph then adds that number. The
  window end's AllReduce sits before its only branch, so it runs exactly once per run.
* GradAccumulator inside the user's ``@ms.jit`` (IN_GRAPH_CASES): the window end is a branch of
  the user's step graph, so its AllReduce is counted in the step's MindIR over every function
  graph (the anf_ir proto holds the top graph only): exactly one node, taken once per window.
Both are read before and after every micro-step / flush(): per event,
launches = Python-level calls + sum over graph runs of AllReduce nodes in that graph.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before mindspore is imported (DESIGN.md)

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

from tests.distributed import msrun  # noqa: E402

IN, HIDDEN, OUT = 6, 16, 4
MICRO = 8  # samples per micro-batch
ACCUM = 2  # micro-batches per worker per update
UPDATES = 3
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-3
N_SAMPLES = 256
CASES = (
    "fused",
    "momentum",
    "flush",
    "uneven",
    "flush_empty",
    "overflow",
    "items",
    "native",
    "sink",
    "functional",
    "functional_jit",
)
SINK_CASES = ("sink",)  # run through Model.train(dataset_sink_mode=True): no per-call AllReduce counts
# GradAccumulator on uneven shards (as "items"): called from Python, and inside the user's @ms.jit
FUNCTIONAL_CASES = ("functional", "functional_jit")
# the window end runs inside this jitted train step (its one AllReduce sits in a branch of it)
IN_GRAPH_CASES = {"functional_jit": "functional_train_step"}
# every parallel mode GradAccumCell refuses, checked in the same msrun job
REFUSED_MODES = ("semi_auto_parallel", "auto_parallel", "hybrid_parallel")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


# ---------------------------------------------------------------- model, data, sharding
def make_data():
    rs = np.random.RandomState(0)
    x = rs.randn(N_SAMPLES, IN).astype(np.float32)
    y = rs.randint(0, OUT, N_SAMPLES).astype(np.int32)
    return x, y


def initial_weights():
    rs = np.random.RandomState(1)
    return [
        (rs.randn(HIDDEN, IN) * 0.5).astype(np.float32),
        (rs.randn(HIDDEN) * 0.1).astype(np.float32),
        (rs.randn(OUT, HIDDEN) * 0.5).astype(np.float32),
        (rs.randn(OUT) * 0.1).astype(np.float32),
    ]


def build_loss_net():
    """A BatchNorm-free MLP with fixed initial weights (identical in every process)."""
    net = nn.SequentialCell(nn.Dense(IN, HIDDEN), nn.ReLU(), nn.Dense(HIDDEN, OUT))
    for p, w in zip(net.trainable_params(), initial_weights()):
        p.set_data(Tensor(w))
    return net, nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))


def schedule(case, rank, world):
    """What a worker does, as a list of events: ("micro", first_sample) runs one micro-batch of
    MICRO samples, ("flush",) flushes, ("snap",) records the weights, ("inf", first) runs a
    micro-batch with an inf in its input. Also returns (accumulation_steps, optimizer name,
    reference batches: the sample ranges of every update the single-process run makes).

    Update u uses samples [u*B, (u+1)*B) with B = world*ACCUM*MICRO; worker r takes the
    micro-batches [u*B + (r*ACCUM + m)*MICRO, ... + MICRO) for m < ACCUM (its own shard)."""
    B = world * ACCUM * MICRO
    micro = lambda u, m: ("micro", u * B + (rank * ACCUM + m) * MICRO)  # noqa: E731
    if case in ("fused", "momentum", "native", "sink"):
        events = [micro(u, m) for u in range(UPDATES) for m in range(ACCUM)]
        refs = [(u * B, (u + 1) * B) for u in range(UPDATES)]
        return events, ACCUM, "fused" if case == "sink" else case, refs
    if case in ("items",) + FUNCTIONAL_CASES:
        # uneven shards: micro-batches of 8, 8 on worker 0 and 8, 3 on worker 1 (world 2); the
        # update is the mean over all 27 samples, as one step on them.
        sizes = [[8, 8], [8, 3]] if world == 2 else [[8, 8]]
        start = sum(sum(s) for s in sizes[:rank])
        events = []
        for size in sizes[rank]:
            events.append(("micro", start, size))
            start += size
        return events, ACCUM, "fused", [(0, sum(sum(s) for s in sizes))]
    if case == "flush":
        # one full update, then one micro-batch per worker and flush(): a window of world*MICRO.
        events = [micro(0, m) for m in range(ACCUM)] + [("micro", B + rank * MICRO), ("flush",)]
        return events, ACCUM, "fused", [(0, B), (B, B + world * MICRO)]
    if case == "uneven":
        # accumulation 3; worker r holds r+1 micro-batches when flush() is called: the mean is
        # over all workers' micro-batches (1+2 = 3 for 2 workers), i.e. over samples
        # [0, MICRO*world*(world+1)/2).
        start = MICRO * rank * (rank + 1) // 2
        events = [("micro", start + i * MICRO) for i in range(rank + 1)] + [("flush",)]
        total = MICRO * world * (world + 1) // 2
        return events, 3, "fused", [(0, total)]
    if case == "flush_empty":
        # one full update, then only worker 0 runs a micro-batch and every worker flushes: a worker
        # with nothing pending joins the all-reduce with zeros, not with its last window's sums.
        events = [micro(0, m) for m in range(ACCUM)] + ([("micro", B)] if rank == 0 else []) + [("flush",)]
        return events, ACCUM, "fused", [(0, B), (B, B + MICRO)]
    if case == "overflow":
        # update 0 normal; update 1: the last worker's last micro-batch has an inf in its input
        # (only on that worker); update 2 normal. The reference makes updates 0 and 2 only.
        events = [micro(0, m) for m in range(ACCUM)] + [("snap",)]
        for m in range(ACCUM):
            ev = micro(1, m)
            events.append(("inf", ev[1]) if (rank == world - 1 and m == ACCUM - 1) else ev)
        events += [("snap",)] + [micro(2, m) for m in range(ACCUM)]
        return events, ACCUM, "fused", [(0, B), (2 * B, 3 * B)]
    raise ValueError(case)


def reference_loss(case, world):
    """The mean loss of the first reference batch at the initial weights (the window loss)."""
    _, _, _, refs = schedule(case, 0, world)
    x, y = make_data()
    _, loss_net = build_loss_net()
    lo, hi = refs[0]
    return float(loss_net(Tensor(x[lo:hi]), Tensor(y[lo:hi])).asnumpy())


def reference_weights(case, world):
    """Single process, no accumulation: nn.TrainOneStepCell + nn.Momentum on each whole batch."""
    _, _, _, refs = schedule(case, 0, world)
    x, y = make_data()
    net, loss_net = build_loss_net()
    step = nn.TrainOneStepCell(loss_net, nn.Momentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WEIGHT_DECAY))
    for lo, hi in refs:
        step(Tensor(x[lo:hi]), Tensor(y[lo:hi]))
    return [p.asnumpy().copy() for p in net.trainable_params()]


# ---------------------------------------------------------------- counting
class AllReduceCounter:
    """Counts AllReduce launches in this process, three ways (see the module docstring).

    * ``py_calls``: every AllReduce primitive called from Python (class-level patch);
    * ``graph_launches``: for every compiled graph run (``ms.jit`` phases, class-level patch of
      the JIT executor), the number of AllReduce nodes in that compiled graph, read from the
      graph itself (``get_func_graph_proto(phase, "anf_ir")``), summed over runs;
      ``graph_runs`` counts the runs per jitted function name.
    """

    def __init__(self):
        self.py_calls = 0
        self.graph_launches = 0
        self.graph_runs = {}
        self.nodes_per_phase = {}  # phase -> (function name, AllReduce nodes, all nodes)
        self._restore = None

    def install(self):
        """Installs the class-level patches (idempotent); :meth:`uninstall` removes them."""
        if self._restore is not None:
            return
        from mindspore.ops.operations.comm_ops import AllReduce

        from mindspore_accum import _compat

        counter = self

        orig_prim_call = AllReduce.__call__
        had_own_call = "__call__" in AllReduce.__dict__

        def counting_prim_call(prim, *args, **kwargs):
            counter.py_calls += 1
            return orig_prim_call(prim, *args, **kwargs)

        AllReduce.__call__ = counting_prim_call

        executor_class = _compat.jit_executor_class()
        orig_compile = executor_class.compile
        orig_call = executor_class.__call__

        def compile_(executor, method_name, *args, **kwargs):
            phase = orig_compile(executor, method_name, *args, **kwargs)
            executor._counted_phase = phase
            counter._compiled(executor, phase, executor.fn.__name__)
            return phase

        def call_(executor, *args, **kwargs):
            executor._counted_phase = None
            out = orig_call(executor, *args, **kwargs)
            counter._ran(executor._counted_phase)
            return out

        executor_class.compile = compile_
        executor_class.__call__ = call_

        cell_executor_class = _cell_executor_class()
        orig_cell_compile = cell_executor_class.compile
        orig_cell_call = cell_executor_class.__call__

        def cell_compile(executor, obj, *args, **kwargs):
            phase, fresh = orig_cell_compile(executor, obj, *args, **kwargs)
            counter._compiled(executor, phase, type(obj).__name__)
            return phase, fresh

        def cell_call(executor, obj, *args, **kwargs):
            out = orig_cell_call(executor, obj, *args, **kwargs)
            counter._ran(obj.current_phase)  # set by the compile that precedes every run
            return out

        cell_executor_class.compile = cell_compile
        cell_executor_class.__call__ = cell_call

        def restore():
            if had_own_call:
                AllReduce.__call__ = orig_prim_call
            else:
                del AllReduce.__call__
            executor_class.compile = orig_compile
            executor_class.__call__ = orig_call
            cell_executor_class.compile = orig_cell_compile
            cell_executor_class.__call__ = orig_cell_call

        self._restore = restore

    def _compiled(self, executor, phase, name):
        """Reads a newly compiled phase's AllReduce nodes from the graph itself."""
        if phase in self.nodes_per_phase:
            return
        if name in IN_GRAPH_CASES.values():
            # a user's step holding the window end in a branch: the anf_ir proto has the top
            # graph only, the MindIR proto every function graph (op types "REF::AllReduce:<id>")
            from mindspore.train import mind_ir_pb2

            model = mind_ir_pb2.ModelProto()
            model.ParseFromString(executor._graph_executor.get_func_graph_proto(phase, "mind_ir"))
            ops_ = [node.op_type for graph in [model.graph, *model.functions] for node in graph.node]
            n_allreduce = sum(op.startswith("REF::AllReduce:") for op in ops_)
            self.nodes_per_phase[phase] = (name, n_allreduce, len(ops_))
            return
        from mindspore.train import anf_ir_pb2

        model = anf_ir_pb2.ModelProto()
        model.ParseFromString(executor._graph_executor.get_func_graph_proto(phase, "anf_ir"))
        ops_ = [node.op_type for node in model.graph.node]
        self.nodes_per_phase[phase] = (name, ops_.count("AllReduce"), len(ops_))

    def _ran(self, phase):
        if phase in self.nodes_per_phase:
            name, n_allreduce, _ = self.nodes_per_phase[phase]
            self.graph_runs[name] = self.graph_runs.get(name, 0) + 1
            self.graph_launches += n_allreduce

    def uninstall(self):
        if self._restore is not None:
            self._restore()
            self._restore = None

    def snapshot(self):
        return self.py_calls, self.graph_launches, dict(self.graph_runs)


def _cell_executor_class():
    """The class that compiles and runs a top-level Cell's graph (GRAPH mode); its compile returns
    (phase, compiled now). 2.9-2.10: mindspore.graph.api; 2.7-2.8: mindspore.common.api."""
    try:
        from mindspore.graph.api import _CellGraphExecutor
    except ImportError:
        from mindspore.common.api import _CellGraphExecutor
    return _CellGraphExecutor


COUNTER = AllReduceCounter()


# ---------------------------------------------------------------- one case
def run_case(case, mode, rank, world):
    """Runs one case in the current process (distributed or not). Returns (snapshots, record):
    snapshots is a list of weight lists (at every "snap" and at the end); record holds the
    AllReduce launches of every event and other facts for the test."""
    from mindspore_accum import FusedMomentum, GradAccumCell

    COUNTER.install()
    ms.set_context(mode=MODES[mode])
    events, accum, opt_name, _ = schedule(case, rank, world)
    x, y = make_data()
    net, loss_net = build_loss_net()
    params = net.trainable_params()
    backend = "native" if opt_name == "native" else "kernels"
    if opt_name in ("fused", "native"):
        opt = FusedMomentum(params, LR, MOMENTUM, weight_decay=WEIGHT_DECAY, backend=backend)
    else:
        opt = nn.Momentum(params, LR, MOMENTUM, weight_decay=WEIGHT_DECAY)
    if case in FUNCTIONAL_CASES:
        cell, call = _functional(case, net, loss_net, opt, accum, backend)
    else:
        cell = GradAccumCell(loss_net, opt, accum, backend=backend)
        cell.set_train()
        call = cell
    distributed = bool(getattr(cell, "distributed", False))

    record = {"events": [], "distributed": distributed}
    snapshots = []
    if case in SINK_CASES:  # the worker's micro-batches in order, as one sunk epoch
        import mindspore.dataset as ds
        from mindspore.train import Model

        rows = np.concatenate([np.arange(ev[1], ev[1] + MICRO) for ev in events])
        data = ds.NumpySlicesDataset({"x": x[rows], "y": y[rows]}, shuffle=False).batch(MICRO)
        Model(cell).train(1, data, dataset_sink_mode=True)
        events = []
    for ev in events:
        if ev[0] == "snap":
            snapshots.append([p.asnumpy().copy() for p in params])
            continue
        before = COUNTER.snapshot()
        result = None
        if ev[0] == "flush":
            result = bool(cell.flush())
        else:
            size = ev[2] if len(ev) > 2 else MICRO
            xb, yb = x[ev[1] : ev[1] + size].copy(), y[ev[1] : ev[1] + size]
            if ev[0] == "inf":
                xb[0, 0] = np.inf
            _ = call(Tensor(xb), Tensor(yb)).asnumpy()
        _ = params[0].asnumpy()  # the step has finished
        after = COUNTER.snapshot()
        record["events"].append(
            {
                "kind": ev[0],
                "py_allreduce": after[0] - before[0],
                "graph_allreduce": after[1] - before[1],
                "graph_runs": {k: v - before[2].get(k, 0) for k, v in after[2].items() if v != before[2].get(k, 0)},
                "result": result,
                "pending_after": cell.pending,
            }
        )
    record["skipped_updates"] = int(cell.skipped_updates.asnumpy())
    record["window_loss"] = cell.window_loss
    record["phases"] = {ph: list(v) for ph, v in COUNTER.nodes_per_phase.items()}
    snapshots.append([p.asnumpy().copy() for p in params])
    return snapshots, record


def _functional(case, net, loss_net, opt, accum, backend):
    """A GradAccumulator and the tutorial-style step that feeds it (returns a tensor)."""
    from mindspore import ops

    from mindspore_accum import GradAccumulator

    acc = GradAccumulator(opt, accum, backend=backend)
    grad_fn = ms.value_and_grad(loss_net, None, net.trainable_params())
    if case == "functional_jit":

        @ms.jit
        def functional_train_step(x, y):
            loss, grads = grad_fn(x, y)
            return ops.depend(loss, acc(grads, x.shape[0], loss=loss))

        return acc, functional_train_step

    @ms.jit
    def grads_of(x, y):
        return grad_fn(x, y)

    def eager_step(x, y):
        loss, grads = grads_of(x, y)
        return acc(grads, x.shape[0], loss=loss)

    return acc, eager_step


def refused_parallel_modes():
    """{mode: the error GradAccumCell raised, or None} for every mode it must refuse."""
    from mindspore_accum import FusedMomentum, GradAccumCell

    out = {}
    for mode in REFUSED_MODES:
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=mode)
        net, loss_net = build_loss_net()
        try:
            GradAccumCell(loss_net, FusedMomentum(net.trainable_params(), LR, MOMENTUM), ACCUM)
            out[mode] = None
        except ValueError as err:
            out[mode] = str(err)
    ms.reset_auto_parallel_context()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="graph,pynative")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)

    rank, world = msrun.init_data_parallel()
    arrays, records = {}, {"rank": rank, "world": world, "cases": {}}
    for mode in args.modes.split(","):
        for case in args.cases.split(","):
            snapshots, record = run_case(case, mode, rank, world)
            records["cases"][f"{mode}/{case}"] = record
            for s, weights in enumerate(snapshots):
                for i, w in enumerate(weights):
                    arrays[f"{mode}/{case}/{s}/{i}"] = w
            print(f"rank {rank}: {mode}/{case} done", flush=True)
    records["refused_modes"] = refused_parallel_modes()
    msrun.write_results(args.out, arrays, records)
    print(f"rank {rank} of {world}: all done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
