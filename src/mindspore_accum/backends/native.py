"""The two backend-specific operations of a window: accumulate a micro-batch, and the sum of
squares of the window's gradient (the non-finite check and the clip norm). The optimizers'
updates have their own backends (optim.py); everything else in the window is shared code.

Both backends keep the same state with the same meaning: the first micro-batch of a window
*writes* its accumulator (``acc = weight * grad``), later ones add to it, so an accumulator's
content is never read at the start of a window and nothing has to be zeroed after an update.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from . import kernels


def make(backend: str) -> nn.Cell:
    return KernelWindowOps() if backend == "kernels" else NativeWindowOps()


class KernelWindowOps(nn.Cell):
    """Our fused multi-tensor kernels as AOT operators (one launch for all tensors)."""

    def __init__(self):
        super().__init__()
        self._accumulate_op = kernels.custom_op("MsAccumAccumulate")
        # As 322 x (cast, square, sum) MindSpore ops the check took 434 ms per ResNet50 update on
        # a 2-core CPU (27 ms as one kernel) and 7 s to compile.
        self._squares_op = kernels.sum_of_squares_op()

    def accumulate(self, accumulators, grads, weight, first):
        hyper = ops.stack([ops.cast(weight, ms.float32), ops.cast(first, ms.float32)])
        return self._accumulate_op(hyper, *accumulators, *grads)

    def sum_of_squares(self, tensors):
        total, _workspace = self._squares_op(*tensors)
        return ops.reshape(total, ())


_accumulate_native = ops.MultitypeFuncGraph("accumulate_native")
_square_sum = ops.MultitypeFuncGraph("square_sum")


@_accumulate_native.register("Tensor", "Tensor", "Tensor", "Tensor")
def _accumulate_one(weight, first, acc, grad):
    add = ops.cast(grad, ms.float32) * weight
    return ops.assign(acc, ops.select(ops.broadcast_to(first, acc.shape), add, acc + add))


@_square_sum.register("Tensor")
def _square_sum_one(x):
    return ops.reduce_sum(ops.square(ops.cast(x, ms.float32)))


class NativeWindowOps(nn.Cell):
    """The same operations with MindSpore's own operators (any device MindSpore supports)."""

    def __init__(self):
        super().__init__()
        self._map = ops.HyperMap()

    def accumulate(self, accumulators, grads, weight, first):
        written = self._map(ops.partial(_accumulate_native, ops.cast(weight, ms.float32), first), accumulators, grads)
        return ops.depend(ops.zeros((1,), ms.float32), written)

    def sum_of_squares(self, tensors):
        return ops.addn(self._map(_square_sum, tensors))
