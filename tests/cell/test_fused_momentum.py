"""FusedMomentum used alone (issue 3, acceptance 2): nn.Momentum's results with its arguments
(weight decay, parameter groups, learning-rate schedules, loss_scale), and real Nesterov momentum
against NumPy (MindSpore's CPU ApplyMomentum ignores use_nesterov, so it is no reference)."""

import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import FusedMomentum
from tests.cell.accum_models import (
    DenseCE,
    assert_weights_close,
    cnn_data,
    cnn_init,
    cnn_with_loss,
    max_rel_diff,
    np_dense_ce_grads,
    np_momentum_step,
    weights,
)

RTOL = 1e-5


def moments(opt):
    return {p.name.split(".", 1)[1]: p.asnumpy().copy() for p in opt.moments}


def train(make_opt, batches, net=None, sens=1.0):
    net = net if net is not None else cnn_with_loss(cnn_init(0))
    opt = make_opt(net)
    step = nn.TrainOneStepCell(net, opt, sens=sens)
    step.set_train()
    for x, y in batches:
        step(Tensor(x), Tensor(y))
    return net, opt


def grouped(cls):
    """Two groups: the convolutions with their own lr and weight decay; the rest with the
    optimizer's scheduled lr and weight decay."""

    def make(net):
        conv = [p for p in net.trainable_params() if p.name.startswith("c")]
        rest = [p for p in net.trainable_params() if not p.name.startswith("c")]
        groups = [{"params": conv, "lr": 0.05, "weight_decay": 1e-2}, {"params": rest}]
        schedule = nn.ExponentialDecayLR(0.1, 0.8, 1)  # changes every step
        return cls(groups, schedule, 0.9, weight_decay=1e-3)

    return make


def test_five_steps_match_nn_momentum_with_groups_weight_decay_and_schedule(mode):
    x, y = cnn_data(20, 5)
    ref_net, ref_opt = train(grouped(nn.Momentum), zip(x, y))
    net, opt = train(grouped(FusedMomentum), zip(x, y))
    assert_weights_close(weights(net), weights(ref_net), RTOL, "weights")
    assert_weights_close(moments(opt), moments(ref_opt), RTOL, "moments")
    assert int(opt.global_step.asnumpy().item()) == 5 == int(ref_opt.global_step.asnumpy().item())
    # the groups and the schedule matter: a single group with a constant lr ends elsewhere
    plain, _ = train(lambda n: FusedMomentum(n.trainable_params(), 0.1, 0.9, weight_decay=1e-3), zip(x, y))
    assert max_rel_diff(weights(plain), weights(ref_net)) > 100 * RTOL


class DenseLayerNorm(nn.Cell):
    """Has parameters named gamma/beta (LayerNorm): ungrouped weight decay skips them."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(21)
        self.dense = nn.Dense(12, 6)
        self.dense.weight.set_data(Tensor(rng.standard_normal((6, 12)).astype(np.float32) * 0.3))
        self.dense.bias.set_data(Tensor(np.zeros(6, np.float32)))
        self.norm = nn.LayerNorm((6,))
        self.norm.gamma.set_data(Tensor(np.full(6, 1.5, np.float32)))
        self.norm.beta.set_data(Tensor(np.full(6, 0.5, np.float32)))
        self.out = nn.Dense(6, 3)
        self.out.weight.set_data(Tensor(rng.standard_normal((3, 6)).astype(np.float32) * 0.3))
        self.out.bias.set_data(Tensor(np.zeros(3, np.float32)))
        self.loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, y):
        return self.loss(self.out(self.norm(self.dense(x))), y)


def test_ungrouped_weight_decay_skips_gamma_and_beta_like_nn_momentum(mode):
    rng = np.random.default_rng(22)
    batches = [
        (rng.standard_normal((16, 12)).astype(np.float32), rng.integers(0, 3, 16).astype(np.int32)) for _ in range(5)
    ]
    make = {
        cls: (lambda n, cls=cls: cls(n.trainable_params(), 0.1, 0.9, weight_decay=0.5))
        for cls in (nn.Momentum, FusedMomentum)
    }
    ref_net, _ = train(make[nn.Momentum], batches, DenseLayerNorm())
    net, _ = train(make[FusedMomentum], batches, DenseLayerNorm())
    assert {"norm.gamma", "norm.beta"} <= set(weights(net))
    assert_weights_close(weights(net), weights(ref_net), RTOL, "LayerNorm net")


def test_loss_scale_argument_matches_nn_momentum(mode):
    """Gradients scaled by 1024 (TrainOneStepCell's sens) and loss_scale=1024: unscaled once."""
    x, y = cnn_data(23, 3)
    make = {
        cls: (lambda n, cls=cls: cls(n.trainable_params(), 0.1, 0.9, weight_decay=1e-3, loss_scale=1024.0))
        for cls in (nn.Momentum, FusedMomentum)
    }
    ref_net, _ = train(make[nn.Momentum], zip(x, y), sens=1024.0)
    net, _ = train(make[FusedMomentum], zip(x, y), sens=1024.0)
    assert_weights_close(weights(net), weights(ref_net), RTOL, "loss_scale=1024")


@pytest.mark.parametrize("lr_kind", ["list", "tensor"])
def test_per_step_learning_rates(mode, lr_kind):
    x, y = cnn_data(24, 4)
    lrs = [0.1, 0.05, 0.2, 0.01]
    lr = lrs if lr_kind == "list" else Tensor(np.array(lrs, np.float32))
    ref_net, _ = train(lambda n: nn.Momentum(n.trainable_params(), lr, 0.9, weight_decay=1e-3), zip(x, y))
    net, _ = train(lambda n: FusedMomentum(n.trainable_params(), lr, 0.9, weight_decay=1e-3), zip(x, y))
    assert_weights_close(weights(net), weights(ref_net), RTOL, f"lr as {lr_kind}")


def test_nesterov_alone_matches_numpy(mode):
    rng = np.random.default_rng(25)
    w = (rng.standard_normal((5, 12)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(5) * 0.1).astype(np.float32)
    x = rng.standard_normal((5, 32, 12)).astype(np.float32)
    y = rng.integers(0, 5, (5, 32)).astype(np.int32)
    net, opt = train(
        lambda n: FusedMomentum(n.trainable_params(), 0.5, 0.9, weight_decay=1e-2, nesterov=True),
        zip(x, y),
        DenseCE(w, b),
    )
    params = [w.astype(np.float64), b.astype(np.float64)]
    velocity = [np.zeros_like(p) for p in params]
    for xb, yb in zip(x, y):
        grads = np_dense_ce_grads(params[0], params[1], xb.astype(np.float64), yb)
        np_momentum_step(params, velocity, list(grads), lr=0.5, momentum=0.9, weight_decay=[1e-2, 1e-2], nesterov=True)
    expected = {"dense.weight": params[0], "dense.bias": params[1]}
    assert_weights_close(weights(net), expected, RTOL, "nesterov vs NumPy")
    assert_weights_close(moments(opt), {"dense.weight": velocity[0], "dense.bias": velocity[1]}, RTOL, "velocity")
