"""shard= without msrun: the single-worker case, argument checks, the optimizer's sharded state."""

import numpy as np
import pytest

from tests.distributed import shard_worker as sw


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
    from mindspore_accum import FusedAdamW

    net, _ = sw.dw.build_loss_net()
    opt = FusedAdamW(net.trainable_params(), 1e-3)
    names = [p.name for p in net.trainable_params()]
    opt._shard_state([0], [(90,)])  # rank 0 of 2 in the layout of test_sharding_layout
    state = {p.name: p.shape for p in opt.get_parameters() if p.name.startswith(("adam_m", "adam_v"))}
    assert state == {f"adam_m.{names[0]}": (90,), f"adam_v.{names[0]}": (90,)}
    with pytest.raises(ValueError, match="already sharded"):
        opt._shard_state([0], [(90,)])


@pytest.mark.parametrize("name", ["FusedLAMB", "FusedLARS"])
def test_trust_ratio_optimizers_shard_whole_tensors_only(name):
    """A piece cut from a tensor would give a wrong trust ratio: refused; whole tensors are kept."""
    import mindspore_accum as ma

    make = {"FusedLAMB": lambda p: ma.FusedLAMB(p, 1e-3), "FusedLARS": lambda p: ma.FusedLARS(p, 0.1)}[name]
    net, _ = sw.dw.build_loss_net()
    with pytest.raises(ValueError, match=f"{name} shards whole tensors only .* given pieces of \\['0.weight'\\]"):
        make(net.trainable_params())._shard_state([0], [(90,)])
    net, _ = sw.dw.build_loss_net()
    params = net.trainable_params()
    opt = make(params)
    opt._shard_state([1, 2, 3], [(16,), (4, 16), (4,)])  # rank 1's run of the whole-tensor layout
    prefixes = ("lamb_m", "lamb_v") if name == "FusedLAMB" else ("moments",)
    state = {p.name: p.shape for p in opt.get_parameters() if p.name.startswith(prefixes)}
    assert state == {f"{s}.{params[i].name}": params[i].shape for s in prefixes for i in (1, 2, 3)}


def test_consolidate_refuses_mixing_the_whole_tensor_and_flat_layouts(tmp_path):
    """accumulation.shard ends with 1 for the whole-tensor layout (FusedLAMB/FusedLARS): rank
    checkpoints of the two layouts, same mode and world size otherwise, are not merged."""
    from mindspore import Tensor

    from mindspore_accum import consolidate_checkpoint, save_checkpoint_atomic

    paths = []
    for rank, info in enumerate(([1, 2, 0, 1], [1, 2, 1])):
        entries = {
            "w": np.zeros(4, np.float32),
            "moments.w": np.zeros(4 if rank == 0 else 1, np.float32),
            "accumulation.shard": np.asarray(info, np.int32),
            "accumulation.micro_step": np.array(0, np.int32),
        }
        paths.append(str(tmp_path / f"rank{rank}.ckpt"))
        save_checkpoint_atomic([{"name": k, "data": Tensor(v)} for k, v in entries.items()], paths[-1])
    with pytest.raises(ValueError, match=r"different settings: \[\(1, 2\), \(1, 2, 1\)\]"):
        consolidate_checkpoint(paths, str(tmp_path / "merged.ckpt"))
