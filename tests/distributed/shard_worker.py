"""Worker script for tests/distributed/test_sharded.py (shard="optimizer" / "gradients" under msrun).

    msrun --worker_num=2 --local_worker_num=2 --master_port=P --join=True \
        tests/distributed/shard_worker.py --out DIR [--modes graph,pynative] [--cases ...]

Every worker runs each case (optimizer x shard mode x backend) in each requested MindSpore mode
on uneven shards -- per update, worker 0 micro-batches of 8 and 8 samples, worker 1 of 8 and 3:
27 samples -- for 3 updates, and writes ``DIR/rank<r>.npz`` (final weights per case) and
``DIR/rank<r>.json`` (per micro-step the collectives its compiled graphs launched, with their
sizes; the cell's Parameter bytes).

Collectives are read from the compiled graphs (``dist_worker.AllReduceCounter``'s patches of
MindSpore's executors): every node of a communication op in a compiled phase, with its output's
element count, is added to the event's launches each time that phase runs. The sharded window
end holds its collectives outside its one branch (the update), so they sit in the top graph the
``anf_ir`` proto holds and run once per run.

Importing this module needs no distributed set-up: the test imports the schedule and the
single-process reference (nn.AdamWeightDecay with clip_by_global_norm / nn.Momentum on each
batch of 27 samples; FusedLAMB's / FusedLARS's formulas in NumPy on MindSpore's gradients of
each batch) from it.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before mindspore is imported

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from tests.distributed import dist_worker as dw  # noqa: E402
from tests.distributed import msrun  # noqa: E402

UPDATES = 3
SIZES = ((8, 8), (8, 3))  # micro-batch sizes of worker 0 and worker 1 in every window
BATCH = sum(map(sum, SIZES))  # 27
ADAM_LR, ADAM_DECAY, CLIP = 0.02, 0.01, 0.3
OPTIMIZERS = ("adamw", "momentum")  # adamw: FusedAdamW with clip_global_norm=CLIP
SHARDS = ("optimizer", "gradients")
# The format of the replicated checkpoint each shard mode's cells load in checkpoint_cases: both
# formats read by load_window_checkpoint without a second set of cells to train.
REPLICATED_FORMAT = {"optimizer": "ckpt", "gradients": "safetensors"}
BACKENDS = ("kernels", "native")
CASES = tuple(f"{o}-{s}-{b}" for o in OPTIMIZERS for s in SHARDS for b in BACKENDS)
# parameter groups: per-group learning rate and weight decay, on pieces of the weights
CASES += tuple(f"adamwgroups-optimizer-{b}" for b in BACKENDS)
# GradAccumulator inside the user's @ms.jit step (the window end is a branch of that graph)
FUNCTIONAL_CASES = tuple(f"adamw-{s}-functional" for s in SHARDS)
# GradAccumCell(jit_micro_step=False): in PYNATIVE the micro-step, its reduction included
# ("gradients"), runs eagerly (launched from Python: not in the graph counts)
EAGER_CASES = tuple(f"adamw-{s}-eager" for s in SHARDS)
COMM_OPS = ("AllReduce", "AllGather", "ReduceScatter", "Broadcast")
# FusedLAMB / FusedLARS on the whole-tensor layout, by MindSpore mode (a few cases: launch time)
# ("...groups": the weights in GROUPS_ORDER, as parameter groups, so the flat vector has a gap)
LARGE_BATCH_CASES = {
    "graph": (
        "lamb-optimizer-kernels",
        "lambgroups-gradients-kernels",
        "lars-optimizer-kernels",
        "larsgroups-gradients-kernels",
        "lambgroups-gradients-native",
        "larsgroups-optimizer-native",
    ),
    "pynative": ("lamb-optimizer-native", "larsgroups-gradients-kernels"),
}
# The optimizer order of the "groups" cases: [64, 4, 16, 96] elements, whose whole-tensor layout
# on 2 workers puts [64, 4, 16] (84) in rank 0's block of 96: 12 zeros between the blocks (the
# plain order [96 | 16, 64, 4] has its padding at the end only, as the flat layout)
GROUPS_ORDER = (2, 3, 1, 0)
LAMB_LR, LAMB_DECAY = 0.02, 0.01
LARS_LR, LARS_DECAY, LARS_COEFFICIENT = 0.1, 0.01, 0.5  # a large coefficient: steps the test sees
BETA1, BETA2, LAMB_EPS, LARS_EPS = 0.9, 0.999, 1e-6, 1e-5  # the optimizers' defaults


def groups(params):
    """Weights (lr ADAM_LR, decay ADAM_DECAY) and biases (lr ADAM_LR / 2, no decay)."""
    return [
        {"params": [p for p in params if "weight" in p.name], "lr": ADAM_LR, "weight_decay": ADAM_DECAY},
        {"params": [p for p in params if "weight" not in p.name], "lr": ADAM_LR / 2, "weight_decay": 0.0},
    ]


def large_batch_groups(params, decay):
    """The weights in GROUPS_ORDER as parameter groups: ``decay`` for weights, none for biases
    (the formula's decay filter, which a group does not apply)."""
    ordered = [params[i] for i in GROUPS_ORDER]
    return [{"params": [p], "weight_decay": 0.0 if "bias" in p.name else decay} for p in ordered]


def schedule(rank):
    """[(first sample, size)] of worker ``rank``'s micro-batches, window after window."""
    out = []
    for u in range(UPDATES):
        start = u * BATCH + sum(map(sum, SIZES[:rank]))
        for size in SIZES[rank]:
            out.append((start, size))
            start += size
    return out


def reference(optimizer):
    """Single process, no accumulation: one step per batch of 27 samples. Returns (weights,
    the global norms of the mean gradients)."""
    x, y = dw.make_data()
    net, loss_net = dw.build_loss_net()
    params = net.trainable_params()
    if optimizer.startswith(("lamb", "lars")):  # the order of the weights changes nothing
        return _large_batch_reference(optimizer[:4], x, y, loss_net, params)
    if optimizer == "adamw":
        opt = nn.AdamWeightDecay(params, ADAM_LR, weight_decay=ADAM_DECAY)
    elif optimizer == "adamwgroups":
        opt = nn.AdamWeightDecay(groups(params), ADAM_LR)
    else:
        opt = nn.Momentum(params, dw.LR, dw.MOMENTUM, weight_decay=dw.WEIGHT_DECAY)
    grad_fn = ms.value_and_grad(loss_net, None, opt.parameters)
    norms = []
    for u in range(UPDATES):
        lo, hi = u * BATCH, (u + 1) * BATCH
        _, grads = grad_fn(Tensor(x[lo:hi]), Tensor(y[lo:hi]))
        norms.append(float(np.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads))))
        if optimizer.startswith("adamw"):
            grads = ops.clip_by_global_norm(grads, CLIP)
        opt(grads)
    return [p.asnumpy().copy() for p in params], norms


LARGE_BATCH_MOMENTS = {}  # {optimizer: {state name prefix: moments}} of the last reference()


def _large_batch_reference(optimizer, x, y, loss_net, params):
    """LAMB (FusedLAMB's formula) or LARS (nn.LARS(nn.Momentum)'s) in float64 NumPy, one step per
    batch of 27 samples on MindSpore's gradients; no decay and no trust ratio (LARS) for biases.
    The final moments are left in LARGE_BATCH_MOMENTS."""
    grad_fn = ms.value_and_grad(loss_net, None, params)
    # the betas as the optimizer holds them (float32: 1 - float32(0.999) is 1.3e-5 off 0.001)
    beta1, beta2 = float(np.float32(BETA1)), float(np.float32(BETA2))
    w = [p.asnumpy().astype(np.float64) for p in params]
    m = [np.zeros_like(a) for a in w]
    v = [np.zeros_like(a) for a in w]
    norms = []
    for u in range(UPDATES):
        for p, a in zip(params, w):
            p.set_data(Tensor(a.astype(np.float32)))
        lo, hi = u * BATCH, (u + 1) * BATCH
        _, grads = grad_fn(Tensor(x[lo:hi]), Tensor(y[lo:hi]))
        grads = [g.asnumpy().astype(np.float64) for g in grads]
        norms.append(float(np.sqrt(sum((g**2).sum() for g in grads))))
        t = u + 1
        for k, (p, g) in enumerate(zip(params, grads)):
            bias = "bias" in p.name
            wn = np.linalg.norm(w[k])
            if optimizer == "lamb":
                m[k] = beta1 * m[k] + (1 - beta1) * g
                v[k] = beta2 * v[k] + (1 - beta2) * g * g
                step = (m[k] / (1 - beta1**t)) / (np.sqrt(v[k] / (1 - beta2**t)) + LAMB_EPS)
                step = step + (0.0 if bias else LAMB_DECAY) * w[k]
                un = np.linalg.norm(step)
                w[k] = w[k] - LAMB_LR * (wn / un if wn > 0 and un > 0 else 1.0) * step
            else:
                d = g
                if not bias:
                    gn = np.linalg.norm(g)
                    trust = LARS_COEFFICIENT * wn / (gn + LARS_DECAY * wn + LARS_EPS) if wn > 0 and gn > 0 else 1.0
                    d = trust * (g + LARS_DECAY * w[k])
                m[k] = dw.MOMENTUM * m[k] + d
                w[k] = w[k] - LARS_LR * m[k]
    LARGE_BATCH_MOMENTS[optimizer] = {"lamb_m": m, "lamb_v": v} if optimizer == "lamb" else {"moments": m}
    return w, norms


class CollectiveCounter(dw.AllReduceCounter):
    """dw.AllReduceCounter, recording every communication node of a compiled phase with its size."""

    def __init__(self):
        super().__init__()
        self.launched = []  # (op, elements) per launch, in run order
        self.step_nodes = None  # the communication nodes of the last sharded_train_step compiled

    def _compiled(self, executor, phase, name):
        if phase in self.nodes_per_phase:
            return
        if name == "sharded_train_step":
            # the window end is a branch of the user's step: the anf_ir proto holds the top graph
            # only, the MindIR proto every function graph (op types "REF::<op>:<id>"); no sizes
            from mindspore.train import mind_ir_pb2

            model = mind_ir_pb2.ModelProto()
            model.ParseFromString(executor._graph_executor.get_func_graph_proto(phase, "mind_ir"))
            types = [node.op_type for graph in [model.graph, *model.functions] for node in graph.node]
            comm = [(op, -1) for op in COMM_OPS for t in types if t.startswith(f"REF::{op}:")]
            self.nodes_per_phase[phase] = (name, comm, len(types))
            self.step_nodes = comm
            return
        from mindspore.train import anf_ir_pb2

        model = anf_ir_pb2.ModelProto()
        model.ParseFromString(executor._graph_executor.get_func_graph_proto(phase, "anf_ir"))
        comm = [
            (node.op_type, int(np.prod([d.size for d in node.output_type.tensor_type.shape.dim])))
            for node in model.graph.node
            if node.op_type in COMM_OPS
        ]
        self.nodes_per_phase[phase] = (name, comm, len(model.graph.node))

    def _ran(self, phase):
        if phase in self.nodes_per_phase:
            name, comm, _ = self.nodes_per_phase[phase]
            self.graph_runs[name] = self.graph_runs.get(name, 0) + 1
            self.launched.extend(comm)


COUNTER = CollectiveCounter()


def parameter_bytes(cell):
    """Bytes of the cell's Parameters (each once), by role."""
    out = {"weights": 0, "accumulators": 0, "state": 0, "other": 0}
    weights = {id(w) for w in cell.weights}
    for p in cell.get_parameters():
        name = p.name
        nbytes = int(np.prod(p.shape)) * p.data.itemsize if p.shape else p.data.itemsize
        if id(p) in weights:
            out["weights"] += nbytes
        elif name.startswith("accumulators."):
            out["accumulators"] += nbytes
        elif name.startswith(("adam_m.", "adam_v.", "moments.", "lamb_m.", "lamb_v.")):
            out["state"] += nbytes
        else:
            out["other"] += nbytes
    return out


def run_case(case, mode, rank, save=None):
    from mindspore_accum import FusedAdamW, FusedLAMB, FusedLARS, FusedMomentum, GradAccumCell

    COUNTER.install()
    COUNTER.step_nodes = None
    ms.set_context(mode=dw.MODES[mode])
    optimizer, shard, backend = case.split("-")
    x, y = dw.make_data()
    net, loss_net = dw.build_loss_net()
    params = net.trainable_params()
    if backend == "functional":
        cell, call = _functional(net, loss_net, shard)
    elif optimizer.startswith("adamw"):
        eager = backend == "eager"
        backend = "kernels" if eager else backend
        if optimizer == "adamw":
            opt = FusedAdamW(params, ADAM_LR, weight_decay=ADAM_DECAY, backend=backend)
        else:
            opt = FusedAdamW(groups(params), ADAM_LR, backend=backend)
        cell = GradAccumCell(
            loss_net, opt, 2, clip_global_norm=CLIP, backend=backend, shard=shard, jit_micro_step=not eager
        )
    else:
        if optimizer.startswith("lamb"):
            given = large_batch_groups(params, LAMB_DECAY) if optimizer.endswith("groups") else params
            opt = FusedLAMB(given, LAMB_LR, weight_decay=LAMB_DECAY, backend=backend)
        elif optimizer.startswith("lars"):
            given = large_batch_groups(params, LARS_DECAY) if optimizer.endswith("groups") else params
            opt = FusedLARS(
                given, LARS_LR, dw.MOMENTUM, weight_decay=LARS_DECAY, coefficient=LARS_COEFFICIENT, backend=backend
            )
        else:
            opt = FusedMomentum(params, dw.LR, dw.MOMENTUM, weight_decay=dw.WEIGHT_DECAY, backend=backend)
        cell = GradAccumCell(loss_net, opt, 2, backend=backend, shard=shard)
    if backend != "functional":
        cell.set_train()
        call = cell
    record = {"shard_mode": cell.shard_mode, "bytes": parameter_bytes(cell), "events": []}
    for start, size in schedule(rank):
        before = len(COUNTER.launched)
        call(Tensor(x[start : start + size]), Tensor(y[start : start + size])).asnumpy()
        _ = params[0].asnumpy()
        record["events"].append({"launched": COUNTER.launched[before:], "pending_after": cell.pending})
    record["skipped_updates"] = int(cell.skipped_updates.asnumpy())
    if save:  # the rank checkpoint after the last update (the test consolidates it)
        from mindspore_accum import save_checkpoint_atomic

        os.makedirs(os.path.dirname(save), exist_ok=True)
        save_checkpoint_atomic(cell, save)
    record["phases"] = {ph: [v[0], v[1]] for ph, v in COUNTER.nodes_per_phase.items()}
    record["step_nodes"] = COUNTER.step_nodes
    return [p.asnumpy().copy() for p in params], record


def _functional(net, loss_net, shard):
    """A GradAccumulator (FusedAdamW, kernels, clip) fed by a tutorial-style @ms.jit step."""
    from mindspore_accum import FusedAdamW, GradAccumulator

    opt = FusedAdamW(net.trainable_params(), ADAM_LR, weight_decay=ADAM_DECAY, backend="kernels")
    acc = GradAccumulator(opt, 2, clip_global_norm=CLIP, backend="kernels", shard=shard)
    grad_fn = ms.value_and_grad(loss_net, None, opt.parameters)

    @ms.jit
    def sharded_train_step(x, y):
        loss, grads = grad_fn(x, y)
        return ops.depend(loss, acc(grads, x.shape[0], loss=loss))

    return acc, sharded_train_step


def _train(cell, rank, updates):
    x, y = dw.make_data()
    for start, size in schedule(rank)[2 * updates[0] : 2 * updates[1]]:
        cell(Tensor(x[start : start + size]), Tensor(y[start : start + size]))


def _adamw_cell(shard):
    from mindspore_accum import FusedAdamW, GradAccumCell

    net, loss_net = dw.build_loss_net()
    opt = FusedAdamW(net.trainable_params(), ADAM_LR, weight_decay=ADAM_DECAY, backend="kernels")
    cell = GradAccumCell(loss_net, opt, 2, clip_global_norm=CLIP, backend="kernels", shard=shard)
    cell.set_train()
    return cell


def checkpoint_cases(out, rank):
    """GRAPH mode, FusedAdamW: (1) each shard mode saves its rank checkpoint after 2 updates
    (as .ckpt and as .safetensors) and makes the 3rd (the test consolidates the files and resumes
    on 1 worker); (2) a replicated cell's checkpoint after 2 updates (.ckpt and .safetensors),
    loaded into sharded cells (in the format REPLICATED_FORMAT gives) that make the 3rd; (3)
    loading a checkpoint of another setting raises. Returns (weights by name, record)."""
    import mindspore_accum as ma

    ms.set_context(mode=ms.GRAPH_MODE)
    os.makedirs(out, exist_ok=True)
    weights, record = {}, {}
    for shard in SHARDS:
        cell = _adamw_cell(shard)
        _train(cell, rank, (0, 2))
        for ext in ("ckpt", "safetensors"):
            ma.save_checkpoint_atomic(cell, os.path.join(out, f"{shard}-rank{rank}.{ext}"))
        _train(cell, rank, (2, 3))
        weights[f"saved-{shard}"] = [w.asnumpy() for w in cell.weights]
    replicated = _adamw_cell(None)
    _train(replicated, rank, (0, 2))
    for ext in ("ckpt", "safetensors"):
        ma.save_checkpoint_atomic(replicated, os.path.join(out, f"replicated-rank{rank}.{ext}"))
    for shard in SHARDS:
        cell = _adamw_cell(shard)
        ma.load_window_checkpoint(cell, os.path.join(out, f"replicated-rank{rank}.{REPLICATED_FORMAT[shard]}"))
        _train(cell, rank, (2, 3))
        weights[f"from-replicated-{shard}"] = [w.asnumpy() for w in cell.weights]
    errors = {}
    cell = _adamw_cell("gradients")
    try:
        ma.load_window_checkpoint(cell, os.path.join(out, f"optimizer-rank{rank}.ckpt"))
    except ValueError as err:
        errors["load_window_checkpoint"] = str(err)
    ms.load_checkpoint(os.path.join(out, f"optimizer-rank{rank}.ckpt"), net=cell)  # same shapes, other mode
    try:
        _train(cell, rank, (2, 3))
    except ValueError as err:
        errors["next_call"] = str(err)
    record["errors"] = errors
    return weights, record


FLUSH_SAMPLES = (100, 108)  # worker 1's one micro-batch of the flushed window


def flush_case(rank):
    """shard="optimizer", GRAPH: a window skipped for an inf in worker 0's input (its
    accumulators keep the inf), then worker 1 alone accumulates one micro-batch and both flush:
    the update is of that micro-batch only (worker 0 adds zeros, not its stale sums)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    x, y = dw.make_data()
    cell = _adamw_cell("optimizer")
    for start, size in schedule(rank)[:2]:
        xb = x[start : start + size].copy()
        if rank == 0:
            xb[0, 0] = np.inf
        cell(Tensor(xb), Tensor(y[start : start + size]))
    if rank == 1:
        lo, hi = FLUSH_SAMPLES
        cell(Tensor(x[lo:hi]), Tensor(y[lo:hi]))
    applied = bool(cell.flush())
    record = {"applied": applied, "skipped_updates": int(cell.skipped_updates.asnumpy())}
    return [w.asnumpy() for w in cell.weights], record


def reference_flush():
    """One nn.AdamWeightDecay step (clipped) on FLUSH_SAMPLES."""
    x, y = dw.make_data()
    net, loss_net = dw.build_loss_net()
    opt = nn.AdamWeightDecay(net.trainable_params(), ADAM_LR, weight_decay=ADAM_DECAY)
    _, grads = ms.value_and_grad(loss_net, None, opt.parameters)(
        Tensor(x[slice(*FLUSH_SAMPLES)]), Tensor(y[slice(*FLUSH_SAMPLES)])
    )
    opt(ops.clip_by_global_norm(grads, CLIP))
    return [p.asnumpy().copy() for p in net.trainable_params()]


def refusals():
    """{what: the error a sharded cell raised for it, or None}: optimizers that cannot shard."""
    from mindspore_accum import GradAccumCell

    out = {}
    for name, make in (("nn.Momentum", lambda p: nn.Momentum(p, dw.LR, dw.MOMENTUM)),):
        net, loss_net = dw.build_loss_net()
        try:
            GradAccumCell(loss_net, make(net.trainable_params()), 2, shard="optimizer")
            out[name] = None
        except (TypeError, ValueError) as err:
            out[name] = f"{type(err).__name__}: {err}"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="graph,pynative")
    ap.add_argument("--cases", default=",".join(CASES + FUNCTIONAL_CASES + EAGER_CASES))
    ap.add_argument("--checkpoints", type=int, default=1, help="run checkpoint_cases (0: no)")
    ap.add_argument("--large-batch", type=int, default=1, help="run LARGE_BATCH_CASES (0: no)")
    args = ap.parse_args(argv)

    rank, world = msrun.init_data_parallel()
    arrays, records = {}, {"rank": rank, "world": world, "cases": {}}
    for mode in args.modes.split(","):
        cases = [(c, None) for c in args.cases.split(",") if c]
        for case in LARGE_BATCH_CASES.get(mode, ()) if args.large_batch else ():
            cases.append((case, os.path.join(args.out, "ckpt", f"{case}-rank{rank}.ckpt") if mode == "graph" else None))
        for case, save in cases:
            weights, records["cases"][f"{mode}/{case}"] = run_case(case, mode, rank, save)
            for i, w in enumerate(weights):
                arrays[f"{mode}/{case}/{i}"] = w
            print(f"rank {rank}: {mode}/{case} done", flush=True)
    records["refusals"] = refusals()
    flushed, records["flush"] = flush_case(rank)
    for i, w in enumerate(flushed):
        arrays[f"flush/{i}"] = w
    if args.checkpoints:
        ckpt_weights, records["checkpoints"] = checkpoint_cases(os.path.join(args.out, "ckpt"), rank)
        for key, ws in ckpt_weights.items():
            for i, w in enumerate(ws):
                arrays[f"ckpt/{key}/{i}"] = w
    msrun.write_results(args.out, arrays, records)
    print(f"rank {rank} of {world}: all done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
