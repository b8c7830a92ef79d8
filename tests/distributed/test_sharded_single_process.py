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
    from mindspore_accum import FusedAdamW, FusedLAMB

    net, _ = sw.dw.build_loss_net()
    opt = FusedAdamW(net.trainable_params(), 1e-3)
    names = [p.name for p in net.trainable_params()]
    opt._shard_state([0], [(90,)])  # rank 0 of 2 in the layout of test_sharding_layout
    state = {p.name: p.shape for p in opt.get_parameters() if p.name.startswith(("adam_m", "adam_v"))}
    assert state == {f"adam_m.{names[0]}": (90,), f"adam_v.{names[0]}": (90,)}
    with pytest.raises(ValueError, match="already sharded"):
        opt._shard_state([0], [(90,)])
    net, _ = sw.dw.build_loss_net()
    with pytest.raises(ValueError, match="FusedLAMB cannot shard its state: its update takes norms of whole"):
        FusedLAMB(net.trainable_params(), 1e-3)._shard_state([0], [(90,)])
