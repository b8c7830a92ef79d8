"""TEMPORARY development aid (removed before the final commit): a token-exact accumulation
cell with GradAccumCell's interface, on nn.AdamWeightDecay, until the lead's API lands."""
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


class DevAccumCell(nn.Cell):
    def __init__(self, loss_cell, optimizer, k, clip_global_norm=None, loss_scale=None):
        super().__init__(auto_prefix=False)
        self.network, self.optimizer, self.k = loss_cell, optimizer, k
        self.weights = optimizer.parameters
        self.clip = clip_global_norm
        self.acc = [np.zeros(w.shape, np.float32) for w in self.weights]
        self.items = 0
        self.micro_step = Parameter(Tensor(0, ms.int32), name="dev.micro_step", requires_grad=False)
        self.skipped_updates = Parameter(Tensor(0, ms.int32), name="dev.skipped", requires_grad=False)
        self.accum = ms.ParameterTuple([Parameter(Tensor(a), name="dev.acc." + w.name, requires_grad=False)
                                        for a, w in zip(self.acc, self.weights)])
        self.items_p = Parameter(Tensor(0, ms.int32), name="dev.items", requires_grad=False)

        def fwd(x, y):
            s, n = self.network(x, y)
            return s, n
        self.vg = ms.jit(ms.value_and_grad(fwd, None, self.weights, has_aux=True))

    @property
    def pending(self):
        return int(self.micro_step.asnumpy())

    def __call__(self, x, y):
        (s, n), g = self.vg(x, y)
        for p, gi in zip(self.accum, g):
            p.set_data(Tensor(p.asnumpy() + gi.asnumpy()))
        self.items_p.set_data(Tensor(int(self.items_p.asnumpy()) + int(n.asnumpy()), ms.int32))
        self.micro_step.set_data(Tensor(self.pending + 1, ms.int32))
        if self.pending == self.k:
            self.flush()
        return s / ops.cast(n, ms.float32)

    def flush(self):
        n = int(self.items_p.asnumpy())
        grads = tuple(Tensor(p.asnumpy() / n) for p in self.accum)
        if self.clip:
            grads = ops.clip_by_global_norm(grads, self.clip)
        self.optimizer(grads)
        for p in self.accum:
            p.set_data(Tensor(np.zeros(p.shape, np.float32)))
        self.items_p.set_data(Tensor(0, ms.int32))
        self.micro_step.set_data(Tensor(0, ms.int32))
