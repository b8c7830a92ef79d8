"""The ``native`` backend: the operations of :mod:`.kernel` written with MindSpore's own operators.

It runs on every device MindSpore supports (Ascend included), one fused function per tensor
mapped over the tensor lists, with the math of ``csrc/accum_math.h`` and the same state: the
first micro-batch of a window *writes* its accumulator (``acc = weight * grad``), later ones add
to it, so an accumulator's content is never read at the start of a window and nothing has to be
zeroed after an update.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops

__all__ = ["NativeBackend", "NativeUpdate", "UPDATES", "update", "update_values"]

_accumulate_native = ops.MultitypeFuncGraph("accumulate_native")
_square_sum = ops.MultitypeFuncGraph("square_sum")


@_accumulate_native.register("Tensor", "Tensor", "Tensor", "Tensor")
def _accumulate_one(weight, first, acc, grad):
    add = ops.cast(grad, ms.float32) * weight
    return ops.assign(acc, ops.select(ops.broadcast_to(first, acc.shape), add, acc + add))


@_square_sum.register("Tensor")
def _square_sum_one(x):
    return ops.reduce_sum(ops.square(ops.cast(x, ms.float32)))


class NativeBackend(nn.Cell):
    """Accumulate and sum of squares with MindSpore's own operators (any device MindSpore supports)."""

    def __init__(self):
        super().__init__()
        self._map = ops.HyperMap()

    def accumulate(self, accumulators, grads, weight, first):
        """``acc = weight * grad`` where ``first``, else ``acc += weight * grad``, for every tensor.
        Returns a (1,) placeholder, to keep alive with ``ops.depend``."""
        written = self._map(ops.partial(_accumulate_native, ops.cast(weight, ms.float32), first), accumulators, grads)
        return ops.depend(ops.zeros((1,), ms.float32), written)

    def sum_of_squares(self, tensors):
        """The sum of squares of every element of ``tensors``, a float32 scalar."""
        return ops.addn(self._map(_square_sum, tensors))


# ---------------------------------------------------------------------- the optimizers' updates
# One function per tensor, mapped by FusedOptimizer over (lr,) weight decay, params, states...,
# sources: fn(hyper, lr, weight_decay, param, *states, source), ``hyper`` the tuple of the fields
# named in UPDATES (the kernel's hyper-parameters without the learning rate, same order).

_momentum_native = ops.MultitypeFuncGraph("momentum_native")


def _momentum_math(hyper, lr, weight_decay, param, moment, source):
    """csrc/accum_math.h momentum_value, with MindSpore operators: (new param, new moment)."""
    momentum, grad_scale, nesterov = hyper
    g = ops.cast(source, ms.float32) * grad_scale + weight_decay * param
    v = momentum * moment + g
    step = g + momentum * v if nesterov else v
    return param - lr * step, v


@_momentum_native.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _momentum_one(hyper, lr, weight_decay, param, moment, source):
    new_param, v = _momentum_math(hyper, lr, weight_decay, param, moment, source)
    return ops.depend(ops.assign(param, new_param), ops.assign(moment, v))


_adamw_native = ops.MultitypeFuncGraph("adamw_native")


def _adamw_math(hyper, lr, weight_decay, param, m, v, source):
    """csrc/accum_math.h adamw_value, with MindSpore operators: (new param, new m, new v)."""
    beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2 = hyper
    g = ops.cast(source, ms.float32) * grad_scale
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * g * g
    u = (m_new / bias_correction1) / (ops.sqrt(v_new) / ops.sqrt(bias_correction2) + eps)
    return param - lr * weight_decay * param - lr * u, m_new, v_new


@_adamw_native.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_one(hyper, lr, weight_decay, param, m, v, source):
    new_param, m_new, v_new = _adamw_math(hyper, lr, weight_decay, param, m, v, source)
    written = ops.assign(param, new_param)
    return ops.depend(written, ops.depend(ops.assign(m, m_new), ops.assign(v, v_new)))


# The same updates for a piece of a weight (shard=...): the piece is not a Parameter, so the
# function returns its new value (the state, whole Parameters of piece size, is assigned).
_momentum_value = ops.MultitypeFuncGraph("momentum_value")
_adamw_value = ops.MultitypeFuncGraph("adamw_value")


@_momentum_value.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _momentum_value_one(hyper, lr, weight_decay, param, moment, source):
    new_param, v = _momentum_math(hyper, lr, weight_decay, param, moment, source)
    return ops.depend(new_param, ops.assign(moment, v))


@_adamw_value.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_value_one(hyper, lr, weight_decay, param, m, v, source):
    new_param, m_new, v_new = _adamw_math(hyper, lr, weight_decay, param, m, v, source)
    return ops.depend(new_param, ops.depend(ops.assign(m, m_new), ops.assign(v, v_new)))


def _norm(x):
    return ops.sqrt(ops.reduce_sum(ops.square(x)))


def _ratio(numerator_norm, denominator_norm, value):
    """``value`` where both norms are positive, else 1 (accum_math.h lamb_ratio / lars_trust)."""
    both = ops.logical_and(numerator_norm > 0.0, denominator_norm > 0.0)
    return ops.select(both, value, ops.ones_like(value))


_lamb_native = ops.MultitypeFuncGraph("lamb_native")


@_lamb_native.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _lamb_one(hyper, lr, weight_decay, param, m, v, source):
    """csrc/accum_math.h lamb_moments, lamb_ratio and lamb_apply, with MindSpore operators."""
    beta1, beta2, eps, grad_scale, bias_correction1, bias_correction2 = hyper
    g = ops.cast(source, ms.float32) * grad_scale
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * g * g
    u = (m_new / bias_correction1) / (ops.sqrt(v_new / bias_correction2) + eps) + weight_decay * param
    w_norm, u_norm = _norm(param), _norm(u)
    ratio = _ratio(w_norm, u_norm, w_norm / ops.maximum(u_norm, 1e-38))
    written = ops.assign(param, param - lr * ratio * u)
    return ops.depend(written, ops.depend(ops.assign(m, m_new), ops.assign(v, v_new)))


_lars_native = ops.MultitypeFuncGraph("lars_native")


@_lars_native.register("Tuple", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _lars_one(hyper, lr, per_tensor, param, moment, source):
    """csrc/accum_math.h lars_trust and lars_value, with MindSpore operators. ``per_tensor`` is
    ``[weight_decay, lars]`` (lars 1: the trust ratio, 0: plain momentum without decay)."""
    momentum, grad_scale, coefficient, epsilon = hyper
    lars = per_tensor[1] > 0.0
    weight_decay = ops.select(lars, per_tensor[0], ops.zeros_like(per_tensor[0]))
    g = ops.cast(source, ms.float32) * grad_scale
    w_norm, g_norm = _norm(param), _norm(g)
    trust = _ratio(w_norm, g_norm, coefficient * w_norm / (g_norm + weight_decay * w_norm + epsilon))
    trust = ops.select(lars, trust, ops.ones_like(trust))
    v = momentum * moment + trust * (g + weight_decay * param)
    return ops.depend(ops.assign(param, param - lr * v), ops.assign(moment, v))


class NativeUpdate(NamedTuple):
    fn: ops.MultitypeFuncGraph  # fn(hyper, lr, weight_decay, param, *states, source)
    hyper: Tuple[str, ...]  # the fields of its ``hyper`` tuple, in order
    states: int  # per-tensor state lists after the parameters


UPDATES = {
    "momentum_update": NativeUpdate(_momentum_native, ("momentum", "grad_scale", "nesterov"), 1),
    "adamw_update": NativeUpdate(
        _adamw_native, ("beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"), 2
    ),
    "lamb_update": NativeUpdate(
        _lamb_native, ("beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"), 2
    ),
    # its per-tensor argument is [weight_decay, lars] (FusedLARS), not the weight decay alone
    "lars_update": NativeUpdate(_lars_native, ("momentum", "grad_scale", "coefficient", "epsilon"), 1),
}


VALUES = {"momentum_update": _momentum_value, "adamw_update": _adamw_value}


def update_values(operation: str, hyper: Sequence[str], states: int) -> ops.MultitypeFuncGraph:
    """As :func:`update`, the variant returning the new parameter instead of assigning it."""
    update(operation, hyper, states)  # the same checks
    if operation not in VALUES:
        raise ValueError(f"the native {operation} has no variant on pieces of weights (shard=...)")
    return VALUES[operation]


def update(operation: str, hyper: Sequence[str], states: int) -> ops.MultitypeFuncGraph:
    """The per-tensor function of ``operation`` after checking that the caller's hyper tuple
    (fields ``hyper``, in order) and number of state lists are what it unpacks."""
    found = UPDATES[operation]
    if tuple(hyper) != found.hyper or states != found.states:
        raise ValueError(
            f"the native {operation} unpacks hyper {found.hyper} and {found.states} state list(s); "
            f"the caller passes {tuple(hyper)} and {states}"
        )
    return found.fn
