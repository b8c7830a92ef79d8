"""The two MindSpore accumulation patterns ``bench_peers.py`` measures against ``GradAccumCell``,
written from their documentation (the algorithm as documented; the code is ours). Import after
MindSpore may be imported (``ONEDNN_MAX_CPU_ISA`` set).

* ``boost_cell``: ``mindspore.boost.GradientAccumulation`` driven the documented way -- the
  "Boost Model" section of MindSpore's "Gradient Accumulation Algorithm" tutorial
  (mindspore-ai/docs, ``tutorials/experts/source_en/optimize/gradient_accumulation.md``, the
  1.x-era version, commit 24b7620; replaced by the Accumulator version from r2.0) subclasses
  ``nn.TrainOneStepCell`` as ``TrainGradAccumulationStepsCell``: forward, ``GradOperation`` with
  ``sens``, the grad reducer, then ``GradientAccumulation(max_accumulation_step, optimizer)(loss,
  grads)``, which adds ``grad / max_accumulation_step`` into its accumulators (HyperMap of
  AssignAdd), calls the optimizer on them every N-th call and zeroes them. The network returns a
  mean loss per micro-batch, so the update is the mean of the micro-batch means.
* ``tutorial_step``: the ``Accumulator`` of the MindSpore 2.x tutorial of the same name
  (https://www.mindspore.cn/tutorials/experts/zh-CN/r2.0/optimize/gradient_accumulation.html;
  English source: mindspore-ai/docs ``tutorials/experts/source_en/optimize/
  gradient_accumulation.md`` at r2.0, commit 00bfaa2): a ``ms.jit_class`` holding ``inner_grads``
  and ``zeros`` (two zero clones of the optimizer's parameters) and a ``counter`` Parameter
  starting at 1; each call adds the gradients with ``HyperMap(partial(assign_add))`` (the older
  tutorial's ``_sum_op``, an AssignAdd), and when ``counter % accumulate_step == 0`` runs the
  optimizer on ``inner_grads`` and assigns ``zeros`` back; then ``counter += 1``. The loss is
  divided by ``accumulate_step`` in ``forward_fn`` "as the gradients are accumulated", and
  ``train_step`` is an ``@ms.jit`` function of ``ms.value_and_grad(forward_fn, None, weights)``
  followed by ``accumulator(grads)``. (The tutorial's unused ``clip_norm`` argument is left out.)
"""

from __future__ import annotations


def boost_cell(loss_net, optimizer, steps: int):
    """MindSpore's ``boost.GradientAccumulation`` inside the tutorial's TrainOneStepCell subclass."""
    from mindspore import nn, ops
    from mindspore.boost import GradientAccumulation

    class TrainGradAccumulationStepsCell(nn.TrainOneStepCell):
        def __init__(self, network, opt, sens=1.0, max_accumulation_step=1):
            super().__init__(network, opt, sens)
            self.max_accumulation_step = max_accumulation_step
            self.grad_accumulation = GradientAccumulation(max_accumulation_step, self.optimizer)

        def construct(self, *inputs):
            loss = self.network(*inputs)
            sens = ops.fill(loss.dtype, loss.shape, self.sens)
            grads = self.grad(self.network, self.weights)(*inputs, sens)
            grads = self.grad_reducer(grads)
            return self.grad_accumulation(loss, grads)

    return TrainGradAccumulationStepsCell(loss_net, optimizer, 1.0, steps)


def tutorial_step(loss_net, optimizer, steps: int, weights):
    """The tutorial's ``Accumulator`` + ``forward_fn`` (loss / accumulate_step) + jit ``train_step``.
    Returns ``train_step(*inputs) -> loss``; the optimizer runs inside every ``steps``-th call."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, ops

    @ms.jit_class
    class Accumulator:
        def __init__(self, opt, accumulate_step):
            self.optimizer = opt
            self.inner_grads = opt.parameters.clone(prefix="accumulate_", init="zeros")
            self.zeros = opt.parameters.clone(prefix="zeros_", init="zeros")
            self.counter = Parameter(Tensor(1, ms.int32), "counter_")
            assert accumulate_step > 0
            self.accumulate_step = accumulate_step
            self.map = ops.HyperMap()

        def __call__(self, grads):
            self.map(ops.partial(ops.assign_add), self.inner_grads, grads)  # accumulate
            if self.counter % self.accumulate_step == 0:
                self.optimizer(self.inner_grads)  # update every N-th step
                self.map(ops.partial(ops.assign), self.inner_grads, self.zeros)  # then clear
            ops.assign_add(self.counter, Tensor(1, ms.int32))
            return True

    accumulator = Accumulator(optimizer, steps)

    def forward_fn(*inputs):
        return loss_net(*inputs) / steps  # "loss divided by accumulate_step"

    grad_fn = ms.value_and_grad(forward_fn, None, weights)

    @ms.jit
    def train_step(*inputs):
        loss, grads = grad_fn(*inputs)
        accumulator(grads)
        return loss

    return train_step
