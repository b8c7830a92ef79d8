"""Small models, data and references shared by the cell tests.

Nothing here calls `mindspore_accum`: the references are MindSpore's own cells (nn.TrainOneStepCell
with nn.Momentum / nn.Adam on the large batch) or NumPy written from the formulas.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # normally done by conftest.py already

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

MODES = {"GRAPH": ms.GRAPH_MODE, "PYNATIVE": ms.PYNATIVE_MODE}
BACKENDS = ["kernels", "native"]


# ---------------------------------------------------------------- a tiny MLP (6 -> 8 -> 3)


class Mlp(nn.Cell):
    def __init__(self, n_in=6, hidden=8, n_out=3):
        super().__init__()
        self.d1 = nn.Dense(n_in, hidden)
        self.d2 = nn.Dense(hidden, n_out)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.d2(self.relu(self.d1(x)))


# ---------------------------------------------------------------- a tiny BatchNorm-free CNN


class TinyCNN(nn.Cell):
    """conv(3->4) - relu - conv(4->4) - relu - dense(256->10) on 3x8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, pad_mode="same", has_bias=True)
        self.c2 = nn.Conv2d(4, 4, 3, pad_mode="same", has_bias=True)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.d = nn.Dense(256, 10)

    def construct(self, x):
        return self.d(self.flatten(self.relu(self.c2(self.relu(self.c1(x))))))


CNN_SHAPES = {
    "c1.weight": (4, 3, 3, 3),
    "c1.bias": (4,),
    "c2.weight": (4, 4, 3, 3),
    "c2.bias": (4,),
    "d.weight": (10, 256),
    "d.bias": (10,),
}


def cnn_init(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in CNN_SHAPES.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 4
        out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def set_weights(net, init):
    params = {p.name: p for p in net.trainable_params()}
    assert set(params) == set(init), (sorted(params), sorted(init))
    for name, value in init.items():
        params[name].set_data(Tensor(np.array(value, dtype=np.float32)))


def cnn_with_loss(init, float16=False):
    net = TinyCNN()
    set_weights(net, init)
    if float16:
        net.to_float(ms.float16)
    return nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))


def cnn_data(seed, n_batches, batch=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batches, batch, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, (n_batches, batch)).astype(np.int32)
    return x, y


def micro_batches(x, y, n):
    """Splits one batch into n equal micro-batches (as Tensors)."""
    size = x.shape[0] // n
    return [(Tensor(x[i * size : (i + 1) * size]), Tensor(y[i * size : (i + 1) * size])) for i in range(n)]


def weights(params):
    """{name: numpy copy} of an iterable of Parameters (or of a Cell's trainable params)."""
    if isinstance(params, nn.Cell):
        params = params.trainable_params()
    return {p.name: p.asnumpy().copy() for p in params}


def run_big_batch(init, batches, make_opt):
    """nn.TrainOneStepCell on each (x, y) batch in turn; returns (net_with_loss, optimizer)."""
    net = cnn_with_loss(init)
    opt = make_opt(net.trainable_params())
    step = nn.TrainOneStepCell(net, opt)
    step.set_train()
    for x, y in batches:
        step(Tensor(x), Tensor(y))
    return net, opt


def clip_by_norm_numpy(grads, clip):
    """The gradients scaled to global L2 norm <= clip, computed in float64 NumPy (independent of
    MindSpore's clip_by_global_norm, whose result differs between releases)."""
    arrays = [g.asnumpy().astype(np.float64) for g in grads]
    norm = np.sqrt(sum(float((a * a).sum()) for a in arrays))
    factor = min(1.0, clip / max(norm, 1e-30))
    return tuple(Tensor((a * factor).astype(np.float32)) for a in arrays)


def max_rel_diff(actual, expected):
    """max |actual - expected| over all tensors, divided by max |expected|."""
    assert set(actual) == set(expected)
    diff = max(float(np.max(np.abs(actual[k].astype(np.float64) - expected[k]))) for k in expected)
    scale = max(float(np.max(np.abs(expected[k]))) for k in expected)
    return diff / scale


def assert_weights_close(actual, expected, rtol=1e-5, what=""):
    """The acceptance criterion: max|dw| <= rtol * max|w|."""
    rel = max_rel_diff(actual, expected)
    assert rel <= rtol, f"{what}: max|dw| / max|w| = {rel:.3g} > {rtol:g}"


# ---------------------------------------------------------------- a dense softmax-CE model + NumPy


class DenseCE(nn.Cell):
    """logits = x @ W.T + b, mean softmax cross-entropy (sparse labels)."""

    def __init__(self, w, b):
        super().__init__()
        self.dense = nn.Dense(w.shape[1], w.shape[0])
        self.dense.weight.set_data(Tensor(w))
        self.dense.bias.set_data(Tensor(b))
        self.loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def construct(self, x, y):
        return self.loss(self.dense(x), y)


def np_dense_ce_grads(w, b, x, y):
    """Gradients of the mean softmax cross-entropy of x @ w.T + b (float64)."""
    logits = x @ w.T + b
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    d = p / len(y)
    return d.T @ x, d.sum(axis=0)


def np_momentum_step(params, moments, grads, *, lr, momentum, weight_decay, nesterov):
    """nn.Momentum's formula (nesterov as on MindSpore's GPU/Ascend kernels), float64, in place."""
    for i in range(len(params)):
        g = grads[i] + weight_decay[i] * params[i]
        moments[i] = momentum * moments[i] + g
        if nesterov:
            params[i] = params[i] - lr * (g + momentum * moments[i])
        else:
            params[i] = params[i] - lr * moments[i]
