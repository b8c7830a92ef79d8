"""The MLP of the overhead probes (6 x Dense(W, W) with ReLU, softmax cross-entropy) and the
time floor's graph, shared by overhead_worker.py, dispatch_probe_mlp.py and call_modes_mlp.py.
Import after mindspore.set_context: the cells are built in the caller's mode."""

import mindspore as ms
from mindspore import Tensor, nn


def make_mlp(width: int, layers: int = 6, seed: int = 0):
    """(net, loss_cell), seeded: every call builds the same weights."""
    ms.set_seed(seed)
    cells = []
    for i in range(layers):
        cells.append(nn.Dense(width, width))
        if i < layers - 1:
            cells.append(nn.ReLU())
    net = nn.SequentialCell(cells)
    return net, nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))


class GradsOnly(nn.Cell):
    """Loss and gradients of `weights` (a top-level Cell: MindSpore's fastest launch of a graph);
    with `accumulate_into`, the gradients then go through our accumulate op into those buffers."""

    def __init__(self, loss_cell, weights, accumulate_into=None):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.grad_fn = ms.value_and_grad(loss_cell, None, weights)
        self.accumulators = accumulate_into
        from mindspore_accum import backends  # here: a plain process of bench_overhead never loads us

        self.window_ops = backends.make("kernels")
        self.one, self.add = Tensor(1.0, ms.float32), Tensor(False)

    def construct(self, x, y):
        loss, grads = self.grad_fn(x, y)
        if self.accumulators is None:
            return loss, grads
        return loss, self.window_ops.accumulate(self.accumulators, grads, self.one, self.add)
