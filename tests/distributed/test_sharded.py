"""GradAccumCell(shard="optimizer" | "gradients") on 2 CPU workers under msrun (ZeRO-1/2 windows).

One msrun launch runs tests/distributed/shard_worker.py: every case (FusedAdamW with
clip_global_norm, FusedMomentum) x (shard "optimizer", "gradients") x (backend kernels, native),
in GRAPH and in PYNATIVE mode, on uneven shards (per window worker 0 holds micro-batches of 8 and
8 samples, worker 1 of 8 and 3), for 3 updates. Checked against what the test computes itself:

* weights: every worker equals a single-process nn.AdamWeightDecay + clip_by_global_norm /
  nn.Momentum step on each batch of 27 samples (max|dw| <= 1e-5 * max|w|), workers bit-identical;
* collectives, read from the compiled graphs with their sizes (shard_worker.CollectiveCounter):
  "optimizer": none in a micro-step that does not end the window; a window end launches one
  full-size AllReduce (the flat accumulators; CPU has no ReduceScatter), one AllReduce of at most
  8 values (squares and counts) and one full-size AllGather (the weights);
  "gradients": every micro-step one full-size AllReduce, the window end only the small
  AllReduce and the AllGather;
* Parameter bytes per worker: weights 4*Psi, accumulators 4*Psi ("optimizer") or 4*ceil(Psi/W)
  ("gradients"), optimizer state 8 (AdamW) or 4 (momentum) bytes per element this worker owns.
"""

import functools

import numpy as np
import pytest

from tests.distributed import msrun
from tests.distributed import shard_worker as sw

WORLD = 2
MODES = ("graph", "pynative")
RTOL = 1e-5
PSI = sum(w.size for w in sw.dw.initial_weights())  # 180
SHARD = -(-PSI // WORLD)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    return msrun.launch(sw.__file__, tmp_path_factory.mktemp("shard"), WORLD)


@functools.lru_cache(maxsize=None)
def _reference(optimizer):
    return sw.reference(optimizer)


@pytest.mark.parametrize("case", sw.CASES)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_weights_equal_single_process(dist, mode, case):
    ref, norms = _reference(case.split("-")[0])
    if case.startswith("adamw"):
        assert max(norms) > sw.CLIP, "the clip never acts: the test would not see a wrong clip norm"
    scale = max(float(np.abs(w).max()) for w in ref)
    per_rank = []
    for r in range(WORLD):
        arrays, record = dist[r]
        assert record["cases"][f"{mode}/{case}"]["shard_mode"] == case.split("-")[1]
        weights = [arrays[f"{mode}/{case}/{i}"] for i in range(len(ref))]
        err = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(weights, ref))
        print(f"{mode}/{case} rank {r}: max|dw| = {err:.3g}, max|w| = {scale:.3g}")
        assert err <= RTOL * scale, f"rank {r}: max|dw| {err:.3g} > {RTOL:g} * {scale:.3g}"
        assert record["cases"][f"{mode}/{case}"]["skipped_updates"] == 0
        per_rank.append(weights)
    for r in range(1, WORLD):
        for i, (a, b) in enumerate(zip(per_rank[0], per_rank[r])):
            assert np.array_equal(a, b), f"weights differ between rank 0 and rank {r} (tensor {i})"


def _expected(shard, ends_window):
    full = [("AllReduce", SHARD * WORLD)]  # the padded flat vector
    micro = full if shard == "gradients" else []
    if not ends_window:
        return sorted(micro)
    window_end = [("AllGather", SHARD * WORLD)] + ([] if shard == "gradients" else full)
    return sorted(micro + window_end)


@pytest.mark.parametrize("case", sw.CASES)
@pytest.mark.parametrize("mode", MODES)
def test_collectives_per_micro_step_and_window(dist, mode, case):
    shard = case.split("-")[1]
    for r in range(WORLD):
        events = dist[r][1]["cases"][f"{mode}/{case}"]["events"]
        assert len(events) == 2 * sw.UPDATES
        for k, event in enumerate(events):
            ends = k % 2 == 1
            launched = [tuple(x) for x in event["launched"]]
            small = [x for x in launched if x[0] == "AllReduce" and x[1] <= 8]
            assert len(small) == (1 if ends else 0), f"{mode}/{case} rank {r} event {k}: {launched}"
            big = sorted(x for x in launched if x not in small)
            print(f"{mode}/{case} rank {r} event {k}: {launched}")
            assert big == _expected(shard, ends), f"{mode}/{case} rank {r} event {k}: {launched}"
            assert event["pending_after"] == (0 if ends else 1)


@pytest.mark.parametrize("case", sw.CASES)
def test_parameter_bytes_per_worker(dist, case):
    optimizer, shard, _ = case.split("-")
    per_element = 8 if optimizer == "adamw" else 4
    for r in range(WORLD):
        owned = min(PSI, (r + 1) * SHARD) - r * SHARD
        got = dist[r][1]["cases"][f"graph/{case}"]["bytes"]
        assert got["weights"] == 4 * PSI
        assert got["accumulators"] == (4 * PSI if shard == "optimizer" else 4 * SHARD)
        assert got["state"] == per_element * owned, f"rank {r}: {got}"


def test_optimizers_that_cannot_shard_are_refused(dist):
    for r in range(WORLD):
        refused = dist[r][1]["refusals"]
        assert refused["nn.Momentum"] and "TypeError" in refused["nn.Momentum"]
        assert "FusedAdamW or FusedMomentum" in refused["nn.Momentum"]
        assert refused["FusedLAMB"] and "ValueError" in refused["FusedLAMB"]
        assert "norms of whole tensors" in refused["FusedLAMB"]


def test_shard_on_one_worker_is_the_replicated_cell():
    """No init(): a single worker owns everything, so shard= changes nothing (same state names)."""
    import mindspore as ms
    from mindspore import Tensor

    from mindspore_accum import FusedAdamW, GradAccumCell

    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        x, y = sw.dw.make_data()
        cells = []
        for shard in (None, "optimizer"):
            net, loss_net = sw.dw.build_loss_net()
            opt = FusedAdamW(net.trainable_params(), sw.ADAM_LR, weight_decay=sw.ADAM_DECAY)
            cell = GradAccumCell(loss_net, opt, 2, clip_global_norm=sw.CLIP, shard=shard)
            for start in (0, 8, 16, 24):
                cell(Tensor(x[start : start + 8]), Tensor(y[start : start + 8]))
            cells.append(cell)
        assert cells[1].shard_mode is None
        assert list(cells[0].parameters_dict()) == list(cells[1].parameters_dict())
        for a, b in zip(cells[0].weights, cells[1].weights):
            assert np.array_equal(a.asnumpy(), b.asnumpy())
    finally:
        ms.set_context(mode=before)


def test_bad_shard_value_is_refused():
    from mindspore_accum import FusedMomentum, GradAccumCell

    net, loss_net = sw.dw.build_loss_net()
    with pytest.raises(ValueError, match="shard must be None .* got 'zero2'"):
        GradAccumCell(loss_net, FusedMomentum(net.trainable_params(), 0.1, 0.9), 2, shard="zero2")


def test_sharded_state_replaces_the_full_state():
    """The optimizer keeps state only for the pieces it is given, and holds no full state any more."""
    from mindspore_accum import FusedAdamW, FusedLAMB

    net, _ = sw.dw.build_loss_net()
    opt = FusedAdamW(net.trainable_params(), 1e-3)
    names = [p.name for p in net.trainable_params()]
    opt._shard_state([0], [(90,)])  # rank 0 of 2 in the layout of test_sharding_layout
    state = {p.name: p.shape for p in opt.get_parameters() if p.name.startswith(("adam_m", "adam_v"))}
    assert state == {f"adam_m.{names[0]}.shard": (90,), f"adam_v.{names[0]}.shard": (90,)}
    with pytest.raises(ValueError, match="already sharded"):
        opt._shard_state([0], [(90,)])
    net, _ = sw.dw.build_loss_net()
    with pytest.raises(ValueError, match="FusedLAMB cannot shard its state: its update takes norms of whole"):
        FusedLAMB(net.trainable_params(), 1e-3)._shard_state([0], [(90,)])
