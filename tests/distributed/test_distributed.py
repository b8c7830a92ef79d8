"""GradAccumCell under MindSpore data parallelism: 2 CPU workers launched with msrun.

One msrun launch (2 workers on 127.0.0.1, a free port, logs under tmp_path) runs
tests/distributed/dist_worker.py, which plays every case in GRAPH and then in PYNATIVE mode in the same
processes (msrun start-up costs far more than the cases). Each worker trains a BatchNorm-free
MLP on its own shard: per update, 2 workers x 2 micro-batches x 8 samples = 32 samples.

Cases (see ``dist_worker.schedule``):
  fused     FusedMomentum, 3 updates;
  momentum  nn.Momentum (the non-fused path: the optimizer runs on the reduced mean), 3 updates;
  flush     1 update, then 1 micro-batch per worker and flush() (a window of 16 samples);
  uneven    accumulation 3; worker 0 holds 1 micro-batch, worker 1 holds 2; flush(): the mean
            is over the 3 micro-batches of both workers;
  overflow  update 0; update 1 has an inf in the input of ONE worker's micro-batch; update 2.

Every worker's weights must equal a single-process ``nn.TrainOneStepCell`` + ``nn.Momentum`` run on
the same 32 (16, 24) samples per update: max|dw| <= 1e-5 * max|w| (the tolerance of the
equivalence tests: float32 sums in a different order), and the workers' weights must be
bit-identical to each other.

How AllReduce launches are counted (``dist_worker.AllReduceCounter``), per micro-step / flush:
  * PYNATIVE: the cell's ``_allreduce`` primitive is replaced on the instance by a counting
    callable (real launches from Python), and ``AllReduce.__call__`` is patched at class level
    so that any other AllReduce launched from Python would be counted too;
  * GRAPH (and anything jitted in PYNATIVE, e.g. nn.Momentum's construct): MindSpore's JIT
    executor is patched at class level; when a phase is compiled, its compiled graph is read
    back (``get_func_graph_proto(phase, "anf_ir")``) and its AllReduce nodes counted; every run
    of that graph adds that number (the cell's phases are straight-line graphs, so each node
    runs once per run).
The test asserts exactly 1 launch for each micro-step / flush that ends a window and 0 for
micro-steps that only accumulate, on every worker, in both modes; in GRAPH mode also that the
one AllReduce sits in the window-end phase (1 node; ``_WindowEndGraph`` in GRAPH mode,
``_graph_window_end`` in PYNATIVE) and no other compiled phase has one.
"""

import functools
import os

import numpy as np
import pytest

from tests.distributed import dist_worker as dw
from tests.distributed import msrun

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
WORLD = 2
MODES = ("graph", "pynative")
RTOL = 1e-5
# the window end's compiled phase: a top-level Cell in GRAPH mode, an ms.jit method in PYNATIVE
WINDOW_END = ("_WindowEndGraph", "_graph_window_end")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """Launches the 2-worker job once; returns {rank: (arrays, record)}."""
    return msrun.launch(WORKER, tmp_path_factory.mktemp("dist"), WORLD)


def _weights(arrays, mode, case, snap=-1):
    keys = sorted({k.split("/")[2] for k in arrays if k.startswith(f"{mode}/{case}/")}, key=int)
    s = keys[snap]
    n = len([k for k in arrays if k.startswith(f"{mode}/{case}/{s}/")])
    return [arrays[f"{mode}/{case}/{s}/{i}"] for i in range(n)]


@functools.lru_cache(maxsize=None)
def _reference(case):
    return tuple(dw.reference_weights(case, WORLD))


def _rel_err(weights, ref):
    scale = max(float(np.abs(w).max()) for w in ref)
    err = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(weights, ref))
    return err, scale


@pytest.mark.parametrize("case", dw.CASES)
@pytest.mark.parametrize("mode", MODES)
def test_weights_equal_single_process(dist, mode, case):
    ref = _reference(case)
    per_rank = [_weights(dist[r][0], mode, case) for r in range(WORLD)]
    for r, weights in enumerate(per_rank):
        assert dist[r][1]["cases"][f"{mode}/{case}"]["distributed"], "the cell did not see data parallelism"
        err, scale = _rel_err(weights, ref)
        print(f"{mode}/{case} rank {r}: max|dw| = {err:.3g}, max|w| = {scale:.3g}")
        assert err <= RTOL * scale, f"rank {r}: max|dw| {err:.3g} > {RTOL:g} * {scale:.3g}"
    for r in range(1, WORLD):
        for i, (a, b) in enumerate(zip(per_rank[0], per_rank[r])):
            assert np.array_equal(a, b), f"weights differ between rank 0 and rank {r} (tensor {i})"
    # the weights moved: a run that never updated would fail the reference check, but say so
    init = dw.initial_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(per_rank[0], init)) > 1e-3


def _expected_launches(case, rank):
    """1 for every event that ends a window (the accumulation_steps-th micro-batch since the last
    update, or a flush: every worker joins its all-reduce, also with nothing pending), 0 for
    micro-steps that only accumulate."""
    events, accum, _, _ = dw.schedule(case, rank, WORLD)
    expected, pending = [], 0
    for ev in events:
        if ev[0] == "snap":
            continue
        if ev[0] == "flush":
            expected.append(1)
            pending = 0
        else:
            pending += 1
            expected.append(1 if pending == accum else 0)
            pending %= accum
    return expected


@pytest.mark.parametrize("mode", MODES)
def test_one_allreduce_per_update(dist, mode):
    for r in range(WORLD):
        record = dist[r][1]
        for case in dw.CASES:
            if case in dw.SINK_CASES or case in dw.IN_GRAPH_CASES:  # one graph per epoch / step: see below
                continue
            events = record["cases"][f"{mode}/{case}"]["events"]
            launches = [e["py_allreduce"] + e["graph_allreduce"] for e in events]
            expected = _expected_launches(case, r)
            print(f"{mode}/{case} rank {r}: AllReduce launches per call {launches}")
            assert launches == expected, f"{mode}/{case} rank {r}: {launches} != {expected}"
            assert sum(expected) >= 1
            # launched inside the compiled window end (both modes), once per window end
            assert [e["py_allreduce"] for e in events] == [0] * len(events)
            assert [sum(e["graph_runs"].get(n, 0) for n in WINDOW_END) for e in events] == expected
        last = [c for c in dw.CASES if c not in dw.SINK_CASES][-1]
        phases = record["cases"][f"{mode}/{last}"]["phases"]  # cumulative over the run
        reduce_nodes = [n for name, n, _ in phases.values() if name in WINDOW_END]
        in_graph = set(dw.IN_GRAPH_CASES.values())
        other_nodes = [n for name, n, _ in phases.values() if name not in WINDOW_END and name not in in_graph]
        assert reduce_nodes and all(n == 1 for n in reduce_nodes), phases
        assert all(n == 0 for n in other_nodes), phases


@pytest.mark.parametrize("mode", MODES)
def test_functional_step_in_jit_holds_one_allreduce(dist, mode):
    """GradAccumulator inside the user's @ms.jit: the window end is part of the step's graph;
    that graph holds exactly one AllReduce (in the branch taken once per window)."""
    for r in range(WORLD):
        for case, step_name in dw.IN_GRAPH_CASES.items():
            phases = dist[r][1]["cases"][f"{mode}/{case}"]["phases"]
            nodes = [n for name, n, _ in phases.values() if name == step_name]
            assert nodes and all(n == 1 for n in nodes), phases


@pytest.mark.parametrize("case", dw.FUNCTIONAL_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_functional_window_loss_is_the_big_batch_loss(dist, mode, case):
    """The window loss folds into the window's all-reduce: the loss of all 27 samples."""
    expected = dw.reference_loss(case, WORLD)
    for r in range(WORLD):
        got = dist[r][1]["cases"][f"{mode}/{case}"]["window_loss"]
        assert abs(got - expected) <= 1e-5 * abs(expected), f"rank {r}: {got} != {expected}"


@pytest.mark.parametrize("mode", MODES)
def test_overflow_on_one_worker_skips_on_all(dist, mode):
    snaps = [[_weights(dist[r][0], mode, "overflow", s) for s in range(3)] for r in range(WORLD)]
    for r in range(WORLD):
        record = dist[r][1]["cases"][f"{mode}/overflow"]
        assert record["skipped_updates"] == 1, f"rank {r}: {record['skipped_updates']} skipped"
        before, after = snaps[r][0], snaps[r][1]
        for a, b in zip(before, after):
            assert np.array_equal(a, b), f"rank {r}: the overflowing window changed the weights"
        assert all(np.isfinite(w).all() for w in snaps[r][2])
        for s in range(3):
            for a, b in zip(snaps[0][s], snaps[r][s]):
                assert np.array_equal(a, b), f"ranks 0 and {r} differ at snapshot {s}"
    # the inf was on the last worker only
    assert [e["kind"] for e in dist[WORLD - 1][1]["cases"][f"{mode}/overflow"]["events"]].count("inf") == 1
    assert [e["kind"] for e in dist[0][1]["cases"][f"{mode}/overflow"]["events"]].count("inf") == 0


@pytest.mark.parametrize("mode", MODES)
def test_flush_applies_on_every_worker(dist, mode):
    for r in range(WORLD):
        for case in ("flush", "uneven", "flush_empty"):
            events = dist[r][1]["cases"][f"{mode}/{case}"]["events"]
            flushes = [e for e in events if e["kind"] == "flush"]
            assert [e["result"] for e in flushes] == [True], f"{case} rank {r}"
            assert events[-1]["pending_after"] == 0


def test_other_parallel_modes_are_refused_with_a_clear_error(dist):
    """Under msrun: (semi-)auto and hybrid parallel would leave the window unreduced or
    wrongly reduced; the cell refuses them, naming the mode."""
    for r in range(WORLD):
        refused = dist[r][1]["refused_modes"]
        assert set(refused) == set(dw.REFUSED_MODES)
        for mode, message in refused.items():
            assert message is not None, f"rank {r}: GradAccumCell accepted parallel_mode={mode}"
            assert mode in message and "data_parallel" in message, message


@pytest.mark.parametrize("mode", MODES)
def test_same_worker_code_in_a_single_process(mode):
    """No init(), no msrun: the cell has no AllReduce and equals the single-process reference."""
    import mindspore as ms

    before = ms.get_context("mode")
    try:
        snapshots, record = dw.run_case("fused", mode, rank=0, world=1)
    finally:
        dw.COUNTER.uninstall()
        ms.set_context(mode=before)
    assert not record["distributed"]
    assert all(e["py_allreduce"] + e["graph_allreduce"] == 0 for e in record["events"])
    err, scale = _rel_err(snapshots[-1], dw.reference_weights("fused", 1))
    assert err <= RTOL * scale, f"max|dw| {err:.3g} > {RTOL:g} * {scale:.3g}"
