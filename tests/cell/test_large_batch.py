"""mindspore_accum.large_batch: the linear scaling rule with warm-up (Goyal et al. 2017) against
the formula written out here, and as the learning rate of every fused optimizer."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from mindspore_accum import FusedAdamW, FusedLAMB, FusedLARS, FusedMomentum, WarmupLinearScaling, linear_scaling_rule
from mindspore_accum.large_batch import LearningRateSchedule


def goyal(t, base_lr=0.1, k=32, warmup=5):
    """Goyal et al. 2017, 2.2: from base_lr, a constant increase per update up to k * base_lr."""
    peak = base_lr * k
    return base_lr + (peak - base_lr) * t / warmup if t < warmup else peak


def test_linear_scaling_rule():
    assert linear_scaling_rule(0.1, 256, 8192) == pytest.approx(3.2)
    assert linear_scaling_rule(0.1, 256, 256) == 0.1
    with pytest.raises(ValueError, match="batch_size"):
        linear_scaling_rule(0.1, 256, 0)
    with pytest.raises(ValueError, match="base_lr"):
        linear_scaling_rule(float("nan"), 256, 512)


def test_schedule_matches_the_formula():
    schedule = WarmupLinearScaling(0.1, 256, 8192, warmup_steps=5)
    values = [float(schedule(Tensor(t, ms.int32)).asnumpy()) for t in range(9)]
    np.testing.assert_allclose(values, [goyal(t) for t in range(9)], rtol=1e-6)


def test_schedule_hands_over_to_after():
    after = nn.CosineDecayLR(0.0, 3.2, 100)
    schedule = WarmupLinearScaling(0.1, 256, 8192, warmup_steps=5, after=after)
    for t in (0, 4, 5, 50):
        expected = goyal(t) if t < 5 else float(after(Tensor(t, ms.int32)).asnumpy())
        assert float(schedule(Tensor(t, ms.int32)).asnumpy()) == pytest.approx(expected, rel=1e-6)


def test_no_warmup_is_the_rule_alone():
    schedule = WarmupLinearScaling(0.1, 8, 32, warmup_steps=0)
    assert float(schedule(Tensor(0, ms.int32)).asnumpy()) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "bad, match", [({"warmup_steps": -1}, "warmup_steps"), ({"start": -1.0}, "start"), ({"after": 3.0}, "after")]
)
def test_bad_arguments_are_named(bad, match):
    args = dict(base_lr=0.1, base_batch_size=8, batch_size=32, warmup_steps=2)
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=match):
        WarmupLinearScaling(**args)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, lr: FusedMomentum(p, lr, 0.0, backend="native"),
        lambda p, lr: FusedAdamW(p, lr, backend="native"),
        lambda p, lr: FusedLAMB(p, lr, backend="native"),
        lambda p, lr: FusedLARS(p, lr, backend="native"),
        lambda p, lr: nn.Momentum(p, lr, 0.0),
    ],
    ids=["FusedMomentum", "FusedAdamW", "FusedLAMB", "FusedLARS", "nn.Momentum"],
)
def test_every_optimizer_takes_it(make):
    params = [Parameter(Tensor(np.ones(3, np.float32)), name="w")]
    opt = make(params, WarmupLinearScaling(0.1, 8, 32, warmup_steps=3))
    assert isinstance(opt.learning_rate, LearningRateSchedule)
    seen = []
    for _ in range(5):
        seen.append(float(opt.get_lr().asnumpy().reshape(-1)[0]))
        opt.global_step.set_data(opt.global_step + 1)
    np.testing.assert_allclose(seen, [goyal(t, 0.1, 4, 3) for t in range(5)], rtol=1e-6)
