"""FusedAdamW (issue 13): alone against MindSpore's nn.AdamWeightDecay and a NumPy transcription
of torch.optim.AdamW; inside GradAccumCell against nn.TrainOneStepCell on the large batch.

The references are MindSpore's own optimizer and cells, or NumPy written here from PyTorch's
documented algorithm; nothing in them calls mindspore_accum.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import FusedAdamW, GradAccumCell
from tests.cell.accum_models import (
    assert_weights_close,
    clip_by_norm_numpy,
    cnn_data,
    cnn_init,
    cnn_with_loss,
    micro_batches,
    weights,
)

RTOL = 1e-5


def grouped(params, lr):
    """Two parameter groups (conv weights with their own decay, the rest with its own lr) and a
    schedule as the default learning rate."""
    conv = [p for p in params if p.name.startswith("c") and p.name.endswith("weight")]
    rest = [p for p in params if p.name not in {q.name for q in conv}]
    return [{"params": conv, "weight_decay": 0.05}, {"params": rest, "lr": 3e-3}, {"order_params": params}]


def schedule():
    return nn.ExponentialDecayLR(1e-2, 0.7, 1)


@pytest.mark.parametrize("groups", [False, True])
def test_alone_matches_adam_weight_decay_for_5_steps(mode, backend, groups):
    x, y = cnn_data(11, 5)

    def train(make_opt):
        net = cnn_with_loss(cnn_init(0))
        params = net.trainable_params()
        opt = make_opt(grouped(params, None) if groups else params)
        step = nn.TrainOneStepCell(net, opt)
        for i in range(5):
            step(Tensor(x[i]), Tensor(y[i]))
        return weights(net), opt

    expected, _ = train(lambda p: nn.AdamWeightDecay(p, schedule(), weight_decay=0.01))
    got, opt = train(lambda p: FusedAdamW(p, schedule(), weight_decay=0.01, backend=backend))
    assert_weights_close(got, expected, RTOL, f"FusedAdamW vs nn.AdamWeightDecay, groups={groups}")
    assert int(opt.global_step.asnumpy().item()) == 5


class Quadratic(nn.Cell):
    """loss = sum(c * w * w) + sum(d * w): the gradient 2 c w + d is known in NumPy at every step."""

    def __init__(self, w, c, d):
        super().__init__()
        self.w = ms.Parameter(Tensor(w), name="w")
        self.c, self.d = Tensor(c), Tensor(d)

    def construct(self):
        return (self.c * self.w * self.w).sum() + (self.d * self.w).sum()


def test_bias_correction_matches_numpy_transcription_of_torch_adamw(mode, backend):
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(50).astype(np.float32)
    c = np.abs(rng.standard_normal(50)).astype(np.float32)
    d = rng.standard_normal(50).astype(np.float32)
    net = Quadratic(w0, c, d)
    opt = FusedAdamW(
        net.trainable_params(),
        1e-2,
        beta1=0.9,
        beta2=0.99,
        eps=1e-8,
        weight_decay=0.1,
        bias_correction=True,
        backend=backend,
    )
    step = nn.TrainOneStepCell(net, opt)
    # torch.optim.AdamW (amsgrad=False), float64, transcribed from its documentation; the
    # gradient 2 c w + d is evaluated at the reference's own weights
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
    ref, m, v = w0.astype(np.float64), np.zeros(50), np.zeros(50)
    for t in range(1, 6):
        step()
        g = 2 * c * ref + d
        ref = ref * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        ref = ref - lr / (1 - beta1**t) * m / (np.sqrt(v) / np.sqrt(1 - beta2**t) + eps)
    params = [ref]
    assert_weights_close({"w": net.w.asnumpy()}, {"w": params[0]}, RTOL, "bias-corrected AdamW vs NumPy torch")
    # without bias correction the first steps are ~sqrt(1 - beta2) / (1 - beta1) smaller: far away
    net2 = Quadratic(w0, c, d)
    step2 = nn.TrainOneStepCell(
        net2,
        FusedAdamW(net2.trainable_params(), 1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, backend=backend),
    )
    for _ in range(5):
        step2()
    assert np.abs(net2.w.asnumpy() - params[0]).max() > 1e-3


# ====================================================================== inside GradAccumCell


def _reference_accumulated(mode_name, x, y, clip=None):
    """nn.AdamWeightDecay on each batch of 32 (with clip: the step written out with
    the clip computed in NumPy)."""
    net = cnn_with_loss(cnn_init(0))
    opt = nn.AdamWeightDecay(net.trainable_params(), 1e-2, weight_decay=0.01)
    if clip is None:
        step = nn.TrainOneStepCell(net, opt)
    else:
        grad_fn = ms.value_and_grad(net, None, opt.parameters)

        def step(xb, yb):
            _, grads = grad_fn(xb, yb)
            opt(clip_by_norm_numpy(grads, clip))

    for i in range(3):
        step(Tensor(x[i]), Tensor(y[i]))
    return weights(net)


@pytest.mark.parametrize("variant", ["plain", "clip", "dynamic_loss_scale"])
def test_accumulated_4x8_equals_adam_weight_decay_on_32(mode, backend, variant):
    x, y = cnn_data(12, 3)
    clip = 0.5 if variant == "clip" else None
    expected = _reference_accumulated(mode, x, y[:, :32], clip)
    x8, y8 = x[:, :32], y[:, :32]
    net = cnn_with_loss(cnn_init(0))
    loss_scale = (
        nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**12, scale_factor=2, scale_window=2)
        if variant == "dynamic_loss_scale"
        else None
    )
    cell = GradAccumCell(
        net,
        FusedAdamW(net.trainable_params(), 1e-2, weight_decay=0.01, backend=backend),
        4,
        clip_global_norm=clip,
        loss_scale=loss_scale,
        backend=backend,
    )
    for i in range(3):
        for xb, yb in micro_batches(x8[i], y8[i], 4):
            cell(xb, yb)
    assert int(cell.optimizer.global_step.asnumpy().item()) == 3
    assert_weights_close(weights(net), expected, RTOL, f"FusedAdamW accumulated, {variant}")
    if variant == "dynamic_loss_scale":
        assert float(cell.loss_scale.asnumpy()) == 2.0**13  # grew once, after window 2


def test_mid_window_checkpoint_resumes_bit_identically(mode, backend, tmp_path):
    x, y = cnn_data(13, 3)
    micro = [mb for i in range(3) for mb in micro_batches(x[i], y[i], 4)]

    def make():
        net = cnn_with_loss(cnn_init(0))
        opt = FusedAdamW(net.trainable_params(), 1e-2, weight_decay=0.01, bias_correction=True, backend=backend)
        return GradAccumCell(net, opt, 4, backend=backend)

    full = make()
    for xb, yb in micro:
        full(xb, yb)
    expected = {p.name: p.asnumpy().copy() for p in full.get_parameters()}
    first = make()
    for xb, yb in micro[:6]:
        first(xb, yb)
    path = str(tmp_path / "adamw.ckpt")
    ms.save_checkpoint(first, path)
    saved = ms.load_checkpoint(path)
    assert {"adam_m.c1.weight", "adam_v.c1.weight", "global_step"} <= set(saved)
    resumed = make()
    ms.load_param_into_net(resumed, saved)
    for xb, yb in micro[6:]:
        resumed(xb, yb)
    for p in resumed.get_parameters():
        assert np.array_equal(p.asnumpy(), expected[p.name]), f"{p.name} differs after resume"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"eps": 0.0}, "eps"),
        ({"bias_correction": 1}, "bias_correction"),
    ],
)
def test_bad_hyper_parameters_are_rejected(kwargs, match):
    net = cnn_with_loss(cnn_init(0))
    with pytest.raises((TypeError, ValueError), match=match):
        FusedAdamW(net.trainable_params(), **kwargs)
