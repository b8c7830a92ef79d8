"""FusedMomentum: ``nn.Momentum`` on the fused kernel."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer
from mindspore.nn.optim.optimizer import opt_init_args_register

from . import kernels

__all__ = ["FusedMomentum"]


class FusedMomentum(nn.Optimizer):
    """Momentum SGD with ``nn.Momentum``'s arguments and semantics, on one fused kernel pass.

    Per element: ``g = grad / loss_scale + weight_decay * param``; ``v = momentum * v + g``;
    ``param -= lr * (g + momentum * v)`` with ``nesterov`` else ``lr * v``. Learning rates may be a
    float, a Tensor (scalar or one value per step), an iterable or a ``LearningRateSchedule``;
    parameter groups may set their own ``lr`` and ``weight_decay``; ungrouped, weight decay skips
    parameters whose name contains ``beta`` or ``gamma`` (BatchNorm), exactly as ``nn.Momentum``.
    Moments start at zero. Unlike MindSpore's CPU ``ApplyMomentum``, ``nesterov=True`` really is
    Nesterov momentum on every device.

    Used on its own it is a drop-in, faster ``nn.Momentum``. Inside :class:`GradAccumCell` the
    last micro-batch's gradient add, the average, weight decay, momentum and the accumulator
    reset happen in one pass over memory.

    Dynamic weight decay (a Cell) is supported; gradient centralization is not (a group asking
    for it raises ``ValueError``).
    """

    @opt_init_args_register
    def __init__(self, params, learning_rate, momentum: float, weight_decay=0.0, nesterov: bool = False,
                 loss_scale: float = 1.0):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        if isinstance(momentum, int) and not isinstance(momentum, bool):
            momentum = float(momentum)
        if not isinstance(momentum, float):
            raise TypeError(f"FusedMomentum: momentum must be a float, got {type(momentum).__name__}")
        if momentum < 0.0:
            raise ValueError(f"FusedMomentum: momentum must be at least 0.0, got {momentum}")
        if not isinstance(nesterov, bool):
            raise TypeError(f"FusedMomentum: nesterov must be a bool, got {type(nesterov).__name__}")
        if self.is_group and any(self.grad_centralization_flags):
            raise ValueError("FusedMomentum does not support grad_centralization in parameter groups")
        for param in self._parameters:
            if param.dtype != ms.float32:
                raise TypeError(f"FusedMomentum: parameter {param.name!r} has dtype {param.dtype}; the fused kernel "
                                "updates float32 parameters (keep master weights in float32, e.g. amp level O2)")
        self.params = self._parameters
        self.momentum_value = float(momentum)
        self.nesterov = nesterov
        self.moments = ParameterTuple_zeros(self._parameters, "moments")
        # Groups of tensors that share one learning rate: one kernel call each (one call when
        # the optimizer has a single learning rate).
        self._lr_groups = _lr_groups(self)
        self._static_weight_decay = _static_weight_decay(self)
        self._flush_acc_grad = kernels.custom_op("MsAccumFlush")
        self._flush_acc = kernels.custom_op("MsAccumFlushAcc")
        self._flush_grad = kernels.custom_op("MsAccumFlushGrad")

    # ---- the optimizer step (gradients of one batch) ----
    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        out = self.fused_update(None, gradients, Tensor(1.0 / self.loss_scale, ms.float32))
        return ops.depend(True, out)

    # ---- shared by construct and GradAccumCell (GRAPH mode and GPU) ----
    def fused_update(self, accumulators, gradients, grad_scale):
        """One fused update through the AOT kernel: ``(acc + grad) * grad_scale`` is the gradient.

        ``accumulators`` or ``gradients`` may be None. Advances ``global_step`` once. Returns the
        placeholder output to keep alive with ``ops.depend``.
        """
        lr = self.get_lr()
        weight_decay = self._weight_decay_vector()
        op = self._flush_op(accumulators is not None, gradients is not None)
        nesterov = 1.0 if self.nesterov else 0.0
        out = None
        for indices, lr_index in self._lr_groups:
            group_lr = lr[lr_index] if self.is_group_lr else lr
            hyper = ops.stack([ops.cast(group_lr, ms.float32).reshape(()),
                               Tensor(self.momentum_value, ms.float32),
                               ops.cast(grad_scale, ms.float32).reshape(()),
                               Tensor(nesterov, ms.float32)])
            if len(self._lr_groups) == 1:
                # Whole tuples, unpacked: building them element by element in the graph cost
                # MindSpore 2.10 ~35 s and 2.2 GB of compile memory for ResNet50's 161 tensors.
                group_out = _call_flush(op, hyper, weight_decay, self.params, self.moments, accumulators, gradients)
            else:
                group_out = _call_flush(
                    op, hyper, ops.gather(weight_decay, Tensor(indices, ms.int32), 0),
                    tuple(self.params[i] for i in indices), tuple(self.moments[i] for i in indices),
                    None if accumulators is None else tuple(accumulators[i] for i in indices),
                    None if gradients is None else tuple(gradients[i] for i in indices))
            out = group_out if out is None else ops.depend(out, group_out)
        step = ops.assign_add(self.global_step, self.global_step_increase_tensor)
        return ops.depend(out, step)

    # ---- PyNative on CPU: the same kernel on zero-copy NumPy views ----
    def host_update(self, acc_views: Optional[List[np.ndarray]], grad_views: Optional[List[np.ndarray]],
                    grad_scale: float) -> None:
        """Runs the update with ``_C.momentum_flush`` on NumPy views of the tensors' memory.

        The caller guarantees that every producer of these tensors has finished.
        """
        lr = self.get_lr()
        lr_values = [float(x.asnumpy()) for x in lr] if self.is_group_lr else float(lr.asnumpy())
        weight_decay = self._weight_decay_vector().asnumpy()
        param_views = [p.asnumpy() for p in self.params]
        moment_views = [m.asnumpy() for m in self.moments]
        for indices, lr_index in self._lr_groups:
            kernels.momentum_flush(
                [param_views[i] for i in indices], [moment_views[i] for i in indices],
                None if acc_views is None else [acc_views[i] for i in indices],
                None if grad_views is None else [grad_views[i] for i in indices],
                lr=lr_values[lr_index] if self.is_group_lr else lr_values, momentum=self.momentum_value,
                grad_scale=grad_scale, weight_decay=weight_decay[indices], nesterov=self.nesterov)
        step = self.global_step.asnumpy()
        step += 1

    def _flush_op(self, has_acc: bool, has_grad: bool):
        if has_acc and has_grad:
            return self._flush_acc_grad
        if has_acc:
            return self._flush_acc
        if has_grad:
            return self._flush_grad
        raise ValueError("FusedMomentum: an update needs accumulators, gradients or both")

    def _weight_decay_vector(self):
        """Per-tensor weight decay as applied to the unscaled gradient (0 where it is off)."""
        if self._static_weight_decay is not None:
            return self._static_weight_decay
        # Dynamic weight decay: the base class multiplies by loss_scale (it decays the scaled
        # gradient); the kernel decays the unscaled one, so divide it back out.
        decay = self.get_weight_decay()
        inverse_scale = 1.0 / self.loss_scale
        if self.is_group:
            values = [ops.cast(decay[i], ms.float32).reshape(()) * (inverse_scale if flag else 0.0)
                      for i, flag in enumerate(self.decay_flags)]
        else:
            values = [ops.cast(decay, ms.float32).reshape(()) * (inverse_scale if flag else 0.0)
                      for flag in self.decay_flags]
        return ops.stack(values)


def _call_flush(op, hyper, weight_decay, params, moments, accumulators, gradients):
    if accumulators is None:
        return op(hyper, weight_decay, *params, *moments, *gradients)
    if gradients is None:
        return op(hyper, weight_decay, *params, *moments, *accumulators)
    return op(hyper, weight_decay, *params, *moments, *accumulators, *gradients)


def ParameterTuple_zeros(params, prefix: str):
    """float32 zero Parameters shaped like ``params``, named ``<prefix>.<param name>``."""
    return ms.ParameterTuple(
        Parameter(initializer("zeros", p.shape, ms.float32), name=f"{prefix}.{p.name}") for p in params)


def _lr_groups(opt: nn.Optimizer) -> List[Tuple[List[int], int]]:
    """[(tensor indices, index into get_lr()'s tuple)] for each distinct learning rate."""
    count = len(opt._parameters)
    if not opt.is_group_lr:
        return [(list(range(count)), 0)]
    groups = {}
    for i in range(count):
        groups.setdefault(id(opt.learning_rate[i]), []).append(i)
    return [(indices, indices[0]) for indices in groups.values()]


def _static_weight_decay(opt: nn.Optimizer) -> Optional[Tensor]:
    """The per-tensor weight decay vector when it does not change during training."""
    if opt.dynamic_weight_decay:
        return None
    inverse_scale = 1.0 / opt.loss_scale  # nn.Optimizer stores weight_decay * loss_scale
    if opt.is_group:
        values = [float(wd.asnumpy()) * inverse_scale if flag else 0.0
                  for wd, flag in zip(opt.weight_decay, opt.decay_flags)]
    else:
        base = float(opt.weight_decay.asnumpy()) * inverse_scale
        values = [base if flag else 0.0 for flag in opt.decay_flags]
    return Tensor(np.asarray(values, dtype=np.float32))
