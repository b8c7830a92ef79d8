"""Fused optimizers: ``nn.Momentum`` and AdamW as one pass over memory per update.

Each has two backends with the same math and state: ``kernels`` (our multi-tensor AOT kernels,
one launch per learning-rate group, :mod:`.backends.kernel`) and ``native`` (MindSpore operators,
one fused function per tensor; every device, :mod:`.backends.native`). Inside
:class:`GradAccumCell` the window's sum is read directly as the gradient, scaled by
``grad_scale`` = 1 / (items * loss scale) times the clip factor.

A subclass of :class:`FusedOptimizer` declares itself in a :class:`FusedSpec`: the update
operation (its AOT entry in ``backends/kernel.py`` and its per-tensor function in
``backends/native.py``), the hyper-parameters its :meth:`~FusedOptimizer._hyper` returns, and its
state lists; the base class creates the state, makes the operators and checks the layouts.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ._compat import opt_init_args_register, optimizer_parameters
from ._state import zeros_like_params
from .backends import choose_backend
from .sharding.optimizer_state import ShardedStateMixin

__all__ = ["FusedSpec", "FusedOptimizer", "FusedMomentum", "FusedAdamW", "FusedLAMB", "FusedLARS"]


class FusedSpec(NamedTuple):
    """What a fused optimizer is, for :class:`FusedOptimizer`."""

    update: str  # the operation: a key of backends.kernel.ENTRIES and of backends.native.UPDATES
    hyper: Tuple[str, ...]  # the fields of _hyper()'s tuple: the kernel's hyper-parameters after lr
    states: Tuple[Tuple[str, str], ...]  # (attribute, Parameter name prefix) of each state list, in
    #                                       the kernel's order after the parameters
    per_tensor: Tuple[str, ...] = ("weight_decay",)  # the kernel's per-tensor vectors (see
    #                                       _per_tensor_vectors / _native_per_tensor)


class FusedOptimizer(ShardedStateMixin, nn.Optimizer):
    """Base of the fused optimizers: the update of a whole window is :meth:`window_update`.

    A subclass sets ``spec`` (a :class:`FusedSpec`), calls :meth:`_setup_fused` in its
    ``__init__`` after ``nn.Optimizer.__init__``, and returns the hyper-parameters that follow the
    learning rate from :meth:`_hyper`, in the order ``spec.hyper`` names them."""

    spec: FusedSpec

    def _setup_fused(self, backend: str) -> None:
        """Checks the parameters, chooses the backend, creates the state of ``spec.states`` and
        makes the update operator of ``spec.update``."""
        name = type(self).__name__
        if self.is_group and any(self.grad_centralization_flags):
            raise ValueError(f"{name} does not support grad_centralization in parameter groups")
        for param in optimizer_parameters(self):
            if param.dtype != ms.float32:
                raise TypeError(
                    f"{name}: parameter {param.name!r} has dtype {param.dtype}; the fused update keeps "
                    "float32 parameters (keep master weights in float32, e.g. amp level O2)"
                )
        self.params = optimizer_parameters(self)
        self.backend, self.backend_reason = choose_backend(backend, owner=name)
        self._lr_groups = _lr_groups(self)
        self._static_decay = _static_weight_decay(self)
        if self._static_decay is not None:
            self._static_decay_vectors = tuple(
                Tensor(np.asarray([self._static_decay[i] for i in indices], np.float32))
                for indices, _ in self._lr_groups
            )
            self._static_decay_scalars = tuple(Tensor(v, ms.float32) for v in self._static_decay)
        self._map = ops.HyperMap()
        self._create_states()
        self._make_update()

    def _create_states(self) -> None:
        """The state lists of ``spec.states``: float32 zeros shaped like the parameters."""
        for attribute, prefix in self.spec.states:
            setattr(self, attribute, zeros_like_params(self.params, prefix))
        states = tuple(getattr(self, attribute) for attribute, _ in self.spec.states)
        self._states = states
        self._updated = tuple(self.params) + tuple(t for state in states for t in state)
        count = len(self.params)
        # per learning-rate group: indices into _updated of its params, then each state's tensors
        self._group_updated = tuple(
            tuple(k * count + i for k in range(len(states) + 1) for i in indices) for indices, _ in self._lr_groups
        )

    def _make_update(self) -> None:
        """The backend's update of ``spec.update``, its argument layout checked against ours."""
        spec = self.spec
        if self.backend == "kernels":
            from .backends import kernel  # needs the compiled extension: imported when used

            # _kernel_update stacks (lr,) + _hyper(), then passes params, the states, the sources
            found = kernel.entry(spec.update, ("lr",) + spec.hyper, tensors=len(self._states) + 2)
            if found.per_tensor != spec.per_tensor:
                raise ValueError(
                    f"{found.name} reads the per-tensor vectors {found.per_tensor}; "
                    f"{type(self).__name__} builds {spec.per_tensor}"
                )
            self._kernel = kernel.entry_op(spec.update)
        else:
            from .backends import native

            self._native_fn = native.update(spec.update, spec.hyper, len(self._states))

    # ---- the optimizer step on its own (gradients of one batch) ----
    def construct(self, gradients):
        gradients = self.flatten_gradients(gradients)
        return ops.depend(True, self.window_update(gradients, Tensor(1.0 / self.loss_scale, ms.float32)))

    # ---- shared by construct and GradAccumCell ----
    def window_update(self, sources, grad_scale):
        """Updates every parameter with the gradient ``sources * grad_scale`` in one pass and
        advances ``global_step`` once. Returns a (1,) float32 tensor to keep alive with ``ops.depend``."""
        lr = self.get_lr()
        hyper = self._hyper(ops.cast(grad_scale, ms.float32).reshape(()))
        if self.backend == "kernels":
            out = self._kernel_update(lr, hyper, sources)
        else:
            out = self._native_update(lr, hyper, sources)
        return ops.depend(out, ops.assign_add(self.global_step, self.global_step_increase_tensor))

    def _kernel_update(self, lr, hyper, sources):
        out = None
        for group, (indices, lr_index) in enumerate(self._lr_groups):
            group_lr = ops.cast(lr[lr_index] if self.is_group_lr else lr, ms.float32).reshape(())
            values = ops.stack((group_lr,) + hyper)
            per_tensor = self._per_tensor_vectors(group, indices)
            if len(self._lr_groups) == 1:
                # Whole tuples, unpacked: building them element by element in the graph cost
                # MindSpore 2.10 ~35 s and 2.2 GB of compile memory for ResNet50's 161 tensors.
                tensors = self._updated + tuple(sources)
            else:
                tensors = tuple(self._updated[i] for i in self._group_updated[group]) + tuple(
                    sources[i] for i in indices
                )
            group_out = self._kernel(values, *per_tensor, *tensors)
            out = group_out if out is None else ops.depend(out, group_out)
        return out

    def _native_update(self, lr, hyper, sources):
        # Arguments spelled out: star-unpacking inside the window end's branch trips MindSpore 2.10's
        # graph compiler ("no manager for this func graph: UnpackCall").
        decay = self._native_per_tensor()
        fn = self._native_fn
        if self.is_group_lr:
            if len(self._states) == 1:
                written = self._map(ops.partial(fn, hyper), lr, decay, self.params, self._states[0], sources)
            else:
                written = self._map(
                    ops.partial(fn, hyper), lr, decay, self.params, self._states[0], self._states[1], sources
                )
        elif len(self._states) == 1:
            written = self._map(ops.partial(fn, hyper, lr), decay, self.params, self._states[0], sources)
        else:
            written = self._map(
                ops.partial(fn, hyper, lr), decay, self.params, self._states[0], self._states[1], sources
            )
        return ops.depend(ops.zeros((1,), ms.float32), written)

    # ---- the per-tensor arguments: the weight decay (a subclass may add vectors, spec.per_tensor) ----
    def _per_tensor_vectors(self, group, indices):
        """The kernel's per-tensor float32 vectors for the tensors ``indices`` of learning-rate group ``group``."""
        return (self._decay_vector(group, indices),)

    def _native_per_tensor(self):
        """The native function's per-tensor argument, one scalar Tensor per parameter."""
        return self._decay_scalars()

    # ---- weight decay as applied to the unscaled gradient (0 where it is off) ----
    def _decay_scalars(self):
        if self._static_decay is not None:
            return self._static_decay_scalars
        decay = self.get_weight_decay()
        inverse_scale = 1.0 / self.loss_scale  # the base class multiplies by loss_scale
        if self.is_group:
            return tuple(
                ops.cast(decay[i], ms.float32).reshape(()) * (inverse_scale if flag else 0.0)
                for i, flag in enumerate(self.decay_flags)
            )
        return tuple(
            ops.cast(decay, ms.float32).reshape(()) * (inverse_scale if flag else 0.0) for flag in self.decay_flags
        )

    def _decay_vector(self, group, indices):
        if self._static_decay is not None:
            return self._static_decay_vectors[group]
        scalars = self._decay_scalars()
        return ops.stack(tuple(scalars[i] for i in indices))


# ====================================================================== momentum


class FusedMomentum(FusedOptimizer):
    """Momentum SGD with ``nn.Momentum``'s arguments and semantics, as one fused pass.

    Per element: ``g = grad / loss_scale + weight_decay * param``; ``v = momentum * v + g``;
    ``param -= lr * (g + momentum * v)`` with ``nesterov`` else ``lr * v``. Learning rates may be a
    float, a Tensor, an iterable or a ``LearningRateSchedule``; parameter groups may set their own
    ``lr`` and ``weight_decay``; ungrouped, weight decay skips parameters whose name contains
    ``beta`` or ``gamma``, exactly as ``nn.Momentum``. Moments start at zero. Unlike MindSpore's
    CPU ``ApplyMomentum``, ``nesterov=True`` really is Nesterov momentum on every device.

    ``backend``: ``"auto"`` (our kernels where they serve the device), ``"kernels"`` or
    ``"native"`` (MindSpore operators). ``loss_scale`` divides the gradients of a standalone step
    like ``nn.Momentum``'s; inside :class:`GradAccumCell` it must stay 1 (the cell unscales).
    """

    spec = FusedSpec("momentum_update", ("momentum", "grad_scale", "nesterov"), (("moments", "moments"),))

    @opt_init_args_register
    def __init__(
        self,
        params,
        learning_rate,
        momentum: float,
        weight_decay=0.0,
        nesterov: bool = False,
        loss_scale: float = 1.0,
        *,
        backend: str = "auto",
    ):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        if isinstance(momentum, int) and not isinstance(momentum, bool):
            momentum = float(momentum)
        if not isinstance(momentum, float):
            raise TypeError(f"FusedMomentum: momentum must be a float, got {type(momentum).__name__}")
        if momentum < 0.0:
            raise ValueError(f"FusedMomentum: momentum must be at least 0.0, got {momentum}")
        if not isinstance(nesterov, bool):
            raise TypeError(f"FusedMomentum: nesterov must be a bool, got {type(nesterov).__name__}")
        self._setup_fused(backend)
        self.momentum_value = float(momentum)
        self.nesterov = nesterov
        self._momentum = Tensor(self.momentum_value, ms.float32)
        # the kernel reads it from its hyper-parameter vector; the native function branches on it
        self._nesterov = Tensor(1.0 if nesterov else 0.0, ms.float32) if self.backend == "kernels" else nesterov

    def _hyper(self, grad_scale):
        return self._momentum, grad_scale, self._nesterov


# ====================================================================== AdamW


class FusedAdamW(FusedOptimizer):
    """AdamW with decoupled weight decay, as one fused pass (accumulator read, moments, param).

    ``bias_correction=False`` (default): ``nn.AdamWeightDecay``'s semantics -- ``u = m / (sqrt(v) +
    eps)``, ``param -= lr * (u + weight_decay * param)`` -- including its defaults (eps 1e-6),
    schedules, parameter groups and decay filter (ungrouped, names containing ``beta``/``gamma``
    get no decay). ``bias_correction=True``: ``torch.optim.AdamW`` / ``mindspore.mint.optim.AdamW``
    -- ``u = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` with t the update count
    from 1. Moments are float32, named ``adam_m.*`` and ``adam_v.*`` like ``nn.AdamWeightDecay``'s.
    """

    spec = FusedSpec(
        "adamw_update",
        ("beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"),
        (("moments1", "adam_m"), ("moments2", "adam_v")),
    )

    @opt_init_args_register
    def __init__(
        self,
        params,
        learning_rate=1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-6,
        weight_decay=0.0,
        bias_correction: bool = False,
        *,
        backend: str = "auto",
    ):
        super().__init__(learning_rate, params, weight_decay)
        _check_betas("FusedAdamW", beta1, beta2, eps)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"FusedAdamW: bias_correction must be a bool, got {type(bias_correction).__name__}")
        self._setup_fused(backend)
        _set_betas(self, beta1, beta2, eps)
        self.bias_correction = bias_correction

    def _hyper(self, grad_scale):
        if self.bias_correction:
            corrections = _bias_corrections(self)
        else:
            corrections = (Tensor(1.0, ms.float32), Tensor(1.0, ms.float32))
        return self._betas + (grad_scale,) + corrections


# ====================================================================== LAMB and LARS


def _no_bias_layernorm(param) -> bool:
    return "bias" not in param.name and "LayerNorm" not in param.name


def _bias_corrections(opt: nn.Optimizer):
    """(1 - beta1^t, 1 - beta2^t) of this update (t = global_step + 1) as -expm1(t * log(beta)):
    accurate in float32 where 1 - pow(beta, t) is not (1 - 0.999f has a relative error of 1.3e-5)."""
    t = ops.cast(opt.global_step + 1, ms.float32).reshape(())
    return tuple(-ops.expm1(t * log_beta) for log_beta in opt._log_betas)


def _set_betas(opt: nn.Optimizer, beta1, beta2, eps) -> None:
    """The Adam-family constants as float32 Tensors, and log(beta) for :func:`_bias_corrections`."""
    opt.beta1, opt.beta2, opt.eps = float(beta1), float(beta2), float(eps)
    opt._betas = (Tensor(opt.beta1, ms.float32), Tensor(opt.beta2, ms.float32), Tensor(opt.eps, ms.float32))
    opt._log_betas = tuple(Tensor(math.log(b) if b > 0 else -math.inf, ms.float32) for b in (opt.beta1, opt.beta2))


def _check_betas(name: str, beta1, beta2, eps) -> None:
    for arg, value in (("beta1", beta1), ("beta2", beta2)):
        if isinstance(value, bool) or not isinstance(value, (float, int)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: {arg} must be a float in [0, 1), got {value!r}")
    if isinstance(eps, bool) or not isinstance(eps, (float, int)) or not eps > 0.0:
        raise ValueError(f"{name}: eps must be a positive float, got {eps!r}")


class FusedLAMB(FusedOptimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
    minutes") with ``nn.Lamb``'s arguments, schedules and parameter groups, as a fused window end.

    Per tensor, at update t (from 1), g the window's mean gradient::

        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
        u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * w
        r = ||w|| / ||u||  (1 if either norm is 0);   w -= lr * r * u

    Two passes over the tensors (the norms need the whole tensor): moments and norms, then the
    step -- 40 bytes per element with float32 gradients (docs/kernels.md). Ungrouped, no weight
    decay where the parameter's name contains ``bias`` or ``LayerNorm`` (``decay_filter``, the
    default of the LAMB papers' reference and of older ``nn.Lamb``; MindSpore 2.10's ``nn.Lamb``
    filters ``beta``/``gamma``); unlike ``nn.Lamb`` the ratio is not clipped to [0, 10].
    Moments are float32, named ``lamb_m.*`` and ``lamb_v.*`` like ``nn.Lamb``'s.
    """

    spec = FusedSpec(
        "lamb_update",
        ("beta1", "beta2", "eps", "grad_scale", "bias_correction1", "bias_correction2"),
        (("moments1", "lamb_m"), ("moments2", "lamb_v")),
    )

    @opt_init_args_register
    def __init__(
        self,
        params,
        learning_rate=1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-6,
        weight_decay=0.0,
        *,
        decay_filter=_no_bias_layernorm,
        backend: str = "auto",
    ):
        super().__init__(learning_rate, params, weight_decay)
        _check_betas("FusedLAMB", beta1, beta2, eps)
        if not callable(decay_filter):
            raise TypeError(f"FusedLAMB: decay_filter must be callable, got {type(decay_filter).__name__}")
        if not self.is_group:
            self.decay_flags = tuple(bool(decay_filter(p)) for p in self._parameters)
        self._setup_fused(backend)
        _set_betas(self, beta1, beta2, eps)

    def _hyper(self, grad_scale):
        return self._betas + (grad_scale,) + _bias_corrections(self)


class FusedLARS(FusedOptimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") around momentum
    SGD, with the semantics of ``nn.LARS(nn.Momentum(...))``, as a fused window end.

    Per tensor, g the window's mean gradient: where ``lars_filter(param)`` holds (default: the
    name contains neither ``bias`` nor ``LayerNorm``, as ``nn.LARS``)::

        trust = coefficient * ||w|| / (||g|| + weight_decay * ||w|| + epsilon)  (1 if ||w|| or ||g|| is 0)
        d = trust * (g + weight_decay * w)

    elsewhere ``d = g`` (no decay); then ``v = momentum * v + d;  w -= lr * v``. ``weight_decay``
    is the one of the parameter's group, and ungrouped 0 where the name contains ``beta`` or
    ``gamma`` (``nn.Momentum``'s decay filter, which ``nn.LARS`` keeps). Two passes (the norms,
    then the step): 28 bytes per element with float32 gradients. Moments are float32, named
    ``moments.*`` like ``nn.Momentum``'s.
    """

    spec = FusedSpec(
        "lars_update",
        ("momentum", "grad_scale", "coefficient", "epsilon"),
        (("moments", "moments"),),
        per_tensor=("weight_decay", "lars"),
    )

    @opt_init_args_register
    def __init__(
        self,
        params,
        learning_rate,
        momentum: float = 0.9,
        weight_decay=0.0,
        coefficient: float = 0.001,
        epsilon: float = 1e-5,
        lars_filter=_no_bias_layernorm,
        *,
        backend: str = "auto",
    ):
        super().__init__(learning_rate, params, weight_decay)
        for arg, value in (("momentum", momentum), ("coefficient", coefficient), ("epsilon", epsilon)):
            if isinstance(value, bool) or not isinstance(value, (float, int)) or not 0.0 <= value < math.inf:
                raise ValueError(f"FusedLARS: {arg} must be a finite float >= 0, got {value!r}")
        if not callable(lars_filter):
            raise TypeError(f"FusedLARS: lars_filter must be callable, got {type(lars_filter).__name__}")
        self.lars_flags = tuple(bool(lars_filter(p)) for p in optimizer_parameters(self))
        self._setup_fused(backend)
        self.momentum_value, self.coefficient, self.epsilon = float(momentum), float(coefficient), float(epsilon)
        self._constants = (
            Tensor(self.momentum_value, ms.float32),
            Tensor(self.coefficient, ms.float32),
            Tensor(self.epsilon, ms.float32),
        )
        self._lars_vectors = tuple(
            Tensor(np.asarray([1.0 if self.lars_flags[i] else 0.0 for i in indices], np.float32))
            for indices, _ in self._lr_groups
        )
        self._lars_scalars = tuple(Tensor(1.0 if flag else 0.0, ms.float32) for flag in self.lars_flags)

    def _hyper(self, grad_scale):
        momentum, coefficient, epsilon = self._constants
        return momentum, grad_scale, coefficient, epsilon

    def _per_tensor_vectors(self, group, indices):
        return self._decay_vector(group, indices), self._lars_vectors[group]

    def _native_per_tensor(self):
        return tuple(ops.stack((decay, flag)) for decay, flag in zip(self._decay_scalars(), self._lars_scalars))


# ====================================================================== helpers


def _lr_groups(opt: nn.Optimizer) -> List[Tuple[List[int], int]]:
    """[(tensor indices, index into get_lr()'s tuple)] for each distinct learning rate."""
    count = len(optimizer_parameters(opt))
    if not opt.is_group_lr:
        return [(list(range(count)), 0)]
    groups = {}
    for i in range(count):
        groups.setdefault(id(opt.learning_rate[i]), []).append(i)
    return [(indices, indices[0]) for indices in groups.values()]


def _static_weight_decay(opt: nn.Optimizer) -> Optional[List[float]]:
    """Per-tensor weight decay when it does not change during training (None if it does)."""
    if opt.dynamic_weight_decay:
        return None
    inverse_scale = 1.0 / opt.loss_scale  # nn.Optimizer stores weight_decay * loss_scale
    if opt.is_group:
        return [
            float(wd.asnumpy()) * inverse_scale if flag else 0.0 for wd, flag in zip(opt.weight_decay, opt.decay_flags)
        ]
    base = float(opt.weight_decay.asnumpy()) * inverse_scale
    return [base if flag else 0.0 for flag in opt.decay_flags]
