"""GradAccumCell(shard="optimizer" | "gradients") on 2 CPU workers under msrun (ZeRO-1/2 windows).

One msrun launch runs tests/distributed/shard_worker.py: every case (FusedAdamW with
clip_global_norm, FusedMomentum) x (shard "optimizer", "gradients") x (backend kernels, native),
FusedLAMB and FusedLARS on the whole-tensor layout (a few cases: sw.LARGE_BATCH_CASES; against
their formulas in NumPy),
FusedAdamW with parameter groups (learning rate and weight decay per group; "optimizer"),
GradAccumulator (FusedAdamW, clip) inside the user's @ms.jit step, and GradAccumCell with
jit_micro_step=False (eager micro-steps in PYNATIVE), in GRAPH and in PYNATIVE mode, on uneven
shards (per window worker 0 holds micro-batches of 8 and 8 samples, worker 1 of 8 and 3), for 3
updates. Checked against what the test computes itself:

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
import os

import numpy as np
import pytest

from tests.distributed import msrun
from tests.distributed import shard_worker as sw

WORLD = 2
MODES = ("graph", "pynative")
RTOL = 1e-5
SIZES = [w.size for w in sw.dw.initial_weights()]  # [96, 16, 64, 4]
PSI = sum(SIZES)  # 180
SHARD = -(-PSI // WORLD)


def _whole_tensor_split(sizes):
    """FusedLAMB/FusedLARS's layout on 2 workers, by brute force over the cut between weights:
    (elements rank 0 owns, elements rank 1 owns), the split whose larger part is least."""
    assert WORLD == 2
    return min(((sum(sizes[:c]), sum(sizes[c:])) for c in range(len(sizes) + 1)), key=max)


def _whole_owned(case):
    """(96, 84); the "groups" cases' order [64, 4, 16, 96]: (84, 96)."""
    grouped = case.split("-")[0].endswith("groups")
    return _whole_tensor_split([SIZES[i] for i in sw.GROUPS_ORDER] if grouped else SIZES)


WHOLE_SHARD = max(_whole_owned("lamb-optimizer-kernels"))
assert WHOLE_SHARD == max(_whole_owned("lambgroups-optimizer-kernels"))
LARGE_BATCH = [(mode, case) for mode in MODES for case in sw.LARGE_BATCH_CASES[mode]]


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory):
    """The msrun job's directory (its checkpoints are under out/ckpt) and results."""
    tmp = tmp_path_factory.mktemp("shard")
    return tmp, msrun.launch(sw.__file__, tmp, WORLD)


@pytest.fixture(scope="module")
def dist(dist_dir):
    return dist_dir[1]


@functools.lru_cache(maxsize=None)
def _reference(optimizer):
    return sw.reference(optimizer)


@pytest.mark.parametrize("case", sw.CASES + sw.FUNCTIONAL_CASES + sw.EAGER_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_sharded_weights_equal_single_process(dist, mode, case):
    _check_weights(dist, mode, case)


@pytest.mark.parametrize("mode, case", LARGE_BATCH)
def test_lamb_lars_sharded_weights_equal_numpy_formula(dist, mode, case):
    """FusedLAMB / FusedLARS on the whole-tensor layout: each worker's trust ratios are of whole
    tensors; the weights equal the NumPy formula's single-process steps on 27 samples."""
    _check_weights(dist, mode, case)


def _check_weights(dist, mode, case):
    ref, norms = _reference(case.split("-")[0])
    if case.startswith("adamw"):  # clipped
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


def _expected(shard, ends_window, padded=SHARD * WORLD):
    full = [("AllReduce", padded)]  # the padded flat vector
    micro = full if shard == "gradients" else []
    if not ends_window:
        return sorted(micro)
    window_end = [("AllGather", padded)] + ([] if shard == "gradients" else full)
    return sorted(micro + window_end)


@pytest.mark.parametrize("case", sw.CASES)
@pytest.mark.parametrize("mode", MODES)
def test_collectives_per_micro_step_and_window(dist, mode, case):
    _check_collectives(dist, mode, case, SHARD * WORLD)


@pytest.mark.parametrize("mode, case", LARGE_BATCH)
def test_lamb_lars_collectives_as_adamw(dist, mode, case):
    """The same collectives as FusedAdamW's, on the whole-tensor layout's padded vector."""
    _check_collectives(dist, mode, case, WHOLE_SHARD * WORLD)


def _check_collectives(dist, mode, case, padded):
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
            assert big == _expected(shard, ends, padded), f"{mode}/{case} rank {r} event {k}: {launched}"
            assert event["pending_after"] == (0 if ends else 1)


@pytest.mark.parametrize("case", sw.FUNCTIONAL_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_functional_step_in_jit_holds_the_sharded_collectives(dist, mode, case):
    """GradAccumulator inside the user's @ms.jit: the step's graph holds the window end in a
    branch; over all its function graphs: 2 AllReduce ("optimizer": the window's full-size one
    and the small one; "gradients": the micro-step's and the small one) and 1 AllGather."""
    for r in range(WORLD):
        nodes = [tuple(x) for x in dist[r][1]["cases"][f"{mode}/{case}"]["step_nodes"]]
        assert sorted(nodes) == [("AllGather", -1), ("AllReduce", -1), ("AllReduce", -1)], nodes


@pytest.mark.parametrize("case", sw.CASES)
def test_parameter_bytes_per_worker(dist, case):
    optimizer, shard, _ = case.split("-")
    per_element = 8 if optimizer.startswith("adamw") else 4
    for r in range(WORLD):
        owned = min(PSI, (r + 1) * SHARD) - r * SHARD
        got = dist[r][1]["cases"][f"graph/{case}"]["bytes"]
        assert got["weights"] == 4 * PSI
        assert got["accumulators"] == (4 * PSI if shard == "optimizer" else 4 * SHARD)
        assert got["state"] == per_element * owned, f"rank {r}: {got}"


@pytest.mark.parametrize("mode, case", [x for x in LARGE_BATCH if x[0] == "graph"])
def test_lamb_lars_parameter_bytes_per_worker(dist, mode, case):
    """State of the whole weights a worker owns (the largest run of weights sets the padded size)."""
    optimizer, shard, _ = case.split("-")
    per_element = 8 if optimizer.startswith("lamb") else 4
    for r in range(WORLD):
        got = dist[r][1]["cases"][f"{mode}/{case}"]["bytes"]
        assert got["weights"] == 4 * PSI
        assert got["accumulators"] == (4 * PSI if shard == "optimizer" else 4 * WHOLE_SHARD)
        assert got["state"] == per_element * _whole_owned(case)[r], f"rank {r}: {got}"


def test_lamb_rank_checkpoints_consolidate_to_the_formula_state(dist_dir, tmp_path):
    """FusedLAMB's rank checkpoints (whole-tensor layout) merge into the replicated names and
    shapes: weights and lamb_m/lamb_v equal the NumPy formula's after 3 updates."""
    import mindspore as ms

    from mindspore_accum import consolidate_checkpoint

    tmp, _ = dist_dir
    case = "lamb-optimizer-kernels"
    shards = [str(tmp / "out" / "ckpt" / f"{case}-rank{r}.ckpt") for r in range(WORLD)]
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ref, _ = sw.reference("lamb")  # fills sw.LARGE_BATCH_MOMENTS
        merged = ms.load_checkpoint(consolidate_checkpoint(shards, str(tmp_path / "lamb.ckpt")))
        names = [p.name for p in sw.dw.build_loss_net()[0].trainable_params()]
    finally:
        ms.set_context(mode=before)
    assert "accumulation.shard" not in merged
    _close([merged[n].asnumpy() for n in names], ref, "consolidated FusedLAMB weights")
    for prefix, moments in sw.LARGE_BATCH_MOMENTS["lamb"].items():
        _close([merged[f"{prefix}.{n}"].asnumpy() for n in names], moments, f"consolidated {prefix}")


def test_optimizers_that_cannot_shard_are_refused(dist):
    for r in range(WORLD):
        refused = dist[r][1]["refusals"]
        assert refused["nn.Momentum"] and "TypeError" in refused["nn.Momentum"]
        assert "FusedAdamW, FusedMomentum, FusedLAMB or FusedLARS" in refused["nn.Momentum"]


def test_flush_with_nothing_pending_on_one_worker_adds_zeros(dist):
    """shard="optimizer": after a window skipped for an inf on worker 0, worker 1 alone holds a
    micro-batch when both flush; the update is that micro-batch's (worker 0's accumulators still
    hold the inf: summed, or multiplied by 0, they would skip or corrupt the window)."""
    ref = sw.reference_flush()
    for r in range(WORLD):
        arrays, record = dist[r]
        assert record["flush"] == {"applied": True, "skipped_updates": 1}, record["flush"]
        _close([arrays[f"flush/{i}"] for i in range(len(ref))], ref, f"rank {r} flush")


# ---------------------------------------------------------------------- checkpoints


def _ckpt_weights(dist, key, rank=0):
    arrays = dist[rank][0]
    return [arrays[f"ckpt/{key}/{i}"] for i in range(4)]


def _close(weights, ref, what):
    scale = max(float(np.abs(w).max()) for w in ref)
    err = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(weights, ref))
    print(f"{what}: max|dw| = {err:.3g}, max|w| = {scale:.3g}")
    assert err <= RTOL * scale, f"{what}: max|dw| {err:.3g} > {RTOL:g} * {scale:.3g}"


@pytest.mark.parametrize("shard", sw.SHARDS)
def test_replicated_checkpoint_resumes_on_sharded_workers(dist, shard):
    """2 updates replicated, saved, loaded into sharded cells (each worker takes its pieces of the
    moments; "optimizer" from a .ckpt, "gradients" from a .safetensors), 1 more update: the
    single-process run of 3 updates."""
    assert sorted(sw.REPLICATED_FORMAT.values()) == ["ckpt", "safetensors"]
    ref, _ = _reference("adamw")
    for r in range(WORLD):
        _close(_ckpt_weights(dist, f"from-replicated-{shard}", r), ref, f"rank {r} from replicated, {shard}")


def test_loading_another_setting_raises_naming_both(dist):
    for r in range(WORLD):
        errors = dist[r][1]["checkpoints"]["errors"]
        for how in ("load_window_checkpoint", "next_call"):
            message = errors.get(how)
            assert message, f"rank {r}: {how} accepted a checkpoint of shard='optimizer' in a 'gradients' cell"
            assert f"rank {r} of 2 workers with shard='optimizer'" in message, message
            assert f"rank {r} of 2 workers with shard='gradients'" in message, message
            assert "consolidate_checkpoint" in message


def _resume_on_one_worker(path, fmt):
    """A replicated cell on 1 worker, loaded from ``path`` (format ``fmt``), makes the 3rd update
    on all 27 samples."""
    import mindspore as ms
    from mindspore import Tensor

    from mindspore_accum import FusedAdamW, GradAccumCell

    x, y = sw.dw.make_data()
    net, loss_net = sw.dw.build_loss_net()
    opt = FusedAdamW(net.trainable_params(), sw.ADAM_LR, weight_decay=sw.ADAM_DECAY)
    cell = GradAccumCell(loss_net, opt, 4, clip_global_norm=sw.CLIP)
    names = {p.name: p.shape for p in cell.get_parameters()}
    loaded = ms.load_checkpoint(str(path), format=fmt)
    assert {n: tuple(p.shape) for n, p in loaded.items()} == {n: tuple(s) for n, s in names.items()}
    ms.load_checkpoint(str(path), net=cell, strict_load=True, format=fmt)
    assert int(opt.global_step.asnumpy().reshape(-1)[0]) == 2
    start = 2 * sw.BATCH
    for size in (8, 8, 8, 3):
        cell(Tensor(x[start : start + size]), Tensor(y[start : start + size]))
        start += size
    return [p.asnumpy() for p in net.trainable_params()]


# (format of the merged file, formats of the rank files by rank)
FORMATS = [("ckpt", ("ckpt", "ckpt")), ("safetensors", ("safetensors", "ckpt"))]


@pytest.mark.parametrize("fmt, shard_formats", FORMATS, ids=[f for f, _ in FORMATS])
@pytest.mark.parametrize("shard", sw.SHARDS)
def test_consolidated_checkpoint_resumes_on_one_worker(dist_dir, shard, fmt, shard_formats, tmp_path):
    """Rank checkpoints after 2 updates, consolidated (given in any order; .safetensors: from a
    .safetensors and a .ckpt) into the replicated format -- the names and shapes a shard=None cell
    has -- and resumed on 1 worker: its 3rd update equals the 2-worker run's. The merged file is
    in the format of its extension, with its CRC (load_checkpoint_verified accepts it)."""
    import mindspore as ms

    from mindspore_accum import consolidate_checkpoint, load_checkpoint_verified

    tmp, dist = dist_dir
    shards = [tmp / "out" / "ckpt" / f"{shard}-rank{r}.{shard_formats[r]}" for r in reversed(range(WORLD))]
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        out = consolidate_checkpoint([str(p) for p in shards], str(tmp_path / f"merged.{fmt}"))
        assert out.endswith(f"merged.{fmt}")
        load_checkpoint_verified(out)
        weights = _resume_on_one_worker(out, fmt)
    finally:
        ms.set_context(mode=before)
    _close(weights, _ckpt_weights(dist, f"saved-{shard}"), f"consolidated {shard} ({fmt}), resumed on 1 worker")


def test_consolidate_to_safetensors_refuses_string_entries(dist_dir, tmp_path):
    """A string entry of the rank checkpoints (e.g. saved with append_dict) cannot go into
    safetensors: a ValueError naming it, before anything is written; a .ckpt takes it."""
    import mindspore as ms

    from mindspore_accum import consolidate_checkpoint

    tmp, _ = dist_dir
    shards = []
    for r in range(WORLD):
        params = ms.load_checkpoint(str(tmp / "out" / "ckpt" / f"optimizer-rank{r}.ckpt"))
        shards.append(str(tmp_path / f"rank{r}.ckpt"))
        ms.save_checkpoint(list(params.values()), shards[-1], append_dict={"run_name": "a"})
    with pytest.raises(ValueError, match=r"\['run_name'\] .*strings.*consolidate into a \.ckpt"):
        consolidate_checkpoint(shards, str(tmp_path / "merged.safetensors"))
    assert not [p for p in os.listdir(tmp_path) if "safetensors" in p]
    assert ms.load_checkpoint(consolidate_checkpoint(shards, str(tmp_path / "merged.ckpt")))["run_name"] == "a"


def test_consolidate_refuses_missing_ranks_and_command_line(dist_dir, tmp_path):
    import subprocess
    import sys

    import mindspore as ms

    from mindspore_accum import consolidate_checkpoint

    tmp, _ = dist_dir
    ckpt = tmp / "out" / "ckpt"
    with pytest.raises(ValueError, match=r"2 workers; the checkpoints of ranks \[1\] are missing"):
        consolidate_checkpoint([str(ckpt / "optimizer-rank0.ckpt")], str(tmp_path / "x.ckpt"))
    with pytest.raises(ValueError, match="different settings"):
        consolidate_checkpoint([str(ckpt / "optimizer-rank0.ckpt"), str(ckpt / "gradients-rank1.ckpt")], "y")
    with pytest.raises(ValueError, match="not the checkpoint of a sharded window"):
        consolidate_checkpoint([str(ckpt / "replicated-rank0.ckpt")], "z")
    out = tmp_path / "cli.safetensors"  # the command line writes the format of OUT's extension
    shards = [str(ckpt / f"gradients-rank{r}.{ext}") for r, ext in enumerate(("safetensors", "ckpt"))]
    proc = subprocess.run(
        [sys.executable, "-m", "mindspore_accum", "consolidate", str(out), *shards], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    by_function = ms.load_checkpoint(consolidate_checkpoint(shards, str(tmp_path / "fn.ckpt")))
    by_cli = ms.load_checkpoint(str(out), format="safetensors")
    assert sorted(by_cli) == sorted(by_function)
    for name in by_cli:
        assert np.array_equal(by_cli[name].asnumpy(), by_function[name].asnumpy()), name
