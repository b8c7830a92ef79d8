"""The optimizers an accumulation window can end with, behind one small interface.

GradAccumCell (and every other front end) talks to its optimizer only through these functions,
so supporting another family of optimizers is a change in this file alone:

* :func:`check_optimizer` -- refuses what cannot be used, saying what to do instead (and gives an
  optimizer that counts no steps a counter, see :func:`step_counter`);
* :func:`weights` -- the Parameters it updates, in the order its gradients are passed;
* :func:`apply` -- one step with given (mean, unscaled) gradients, inside a compiled graph;
* :func:`update_index` -- updates applied so far (host side), which an accumulation schedule reads.

Two families (docs/compatibility.md, "Optimizers"):

* ``nn.Optimizer`` (``nn.Momentum``, ``nn.Adam``, ... and our fused ones): ``construct(grads)``
  over ``optimizer.parameters``; a ``loss_scale`` (must be 1 here: the window unscales); the step
  counter ``global_step`` (int32, from 0).
* ``mindspore.experimental.optim.Optimizer`` and the ``mindspore.mint.optim`` optimizers built on
  it (torch-style: ``param_groups``, ``lr`` per group, no ``loss_scale``): ``construct(grads)``
  over ``optimizer.parameters`` (the groups' params in group order). Their step counter is their
  own Parameter, ``state_step`` (Adam, AdamW) or ``step_t`` (SGD of mint, Adagrad, Adamax, ASGD,
  NAdam, RAdam, Rprop); ``mint.optim.AdamW``/``FusedAdamW`` start it at -1 (their AdamW operator
  adds 1). ``experimental.optim.SGD``, ``Adadelta`` and ``RMSprop`` count nothing (nor does
  ``mint.optim.SGD`` before MindSpore 2.10, see :func:`_step_t_stays_zero`): they get a
  ``global_step`` Parameter here, advanced by :func:`apply`. State they keep in plain lists of
  Parameters (ASGD, NAdam, the learning rates) is registered as the optimizer's Parameters.

Every counter and state is a Parameter of the optimizer, so a checkpoint of the cell holding it
captures it.
Fused optimizers (``optim.FusedOptimizer``) skip :func:`apply`: the window end calls their
``window_update`` directly.
"""

from __future__ import annotations

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

__all__ = ["check_optimizer", "weights", "apply", "update_index", "step_counter"]

# The step counters of MindSpore's optimizers, by attribute name (each a Parameter).
_COUNTERS = ("global_step", "state_step", "step_t")
# Set (True) on an optimizer that counts no steps, once :func:`step_counter` gave it a global_step.
_ADDED = "_msaccum_counts_steps"


def _experimental_base():
    """``mindspore.experimental.optim.Optimizer`` (the base of ``mint.optim``'s), or None."""
    try:
        from mindspore.experimental.optim import Optimizer
    except ImportError:  # pragma: no cover - every supported release has it (2.7+)
        return None
    return Optimizer


def _counter_starts_at_minus_one(optimizer) -> bool:
    """mint.optim.AdamW and FusedAdamW initialise ``state_step`` to -1: their AdamW operator is
    given the count before this step and adds 1 itself."""
    try:
        from mindspore.mint import optim as mint_optim
    except ImportError:  # pragma: no cover
        return False
    classes = tuple(getattr(mint_optim, name) for name in ("AdamW", "FusedAdamW") if hasattr(mint_optim, name))
    return isinstance(optimizer, classes)


def check_optimizer(optimizer, owner: str) -> None:
    """Raises TypeError/ValueError when ``optimizer`` cannot end ``owner``'s windows. An
    experimental/mint optimizer that counts no steps is given a counter (:func:`step_counter`)."""
    if isinstance(optimizer, nn.Optimizer):
        if float(optimizer.loss_scale) != 1.0:
            raise ValueError(
                f"optimizer was built with loss_scale={optimizer.loss_scale}; inside {owner} pass "
                f"the loss scale to the {owner} (loss_scale=...) and build the optimizer with loss_scale=1.0, "
                "so the window is unscaled exactly once"
            )
        return
    base = _experimental_base()
    if base is not None and isinstance(optimizer, base):
        _register_state(optimizer)
        step_counter(optimizer)
        return
    if isinstance(optimizer, nn.Cell) and hasattr(optimizer, "param_groups"):
        what = "a Cell with param_groups that does not derive from mindspore.experimental.optim.Optimizer"
    else:
        what = type(optimizer).__name__
    raise TypeError(
        f"optimizer must be an nn.Optimizer (e.g. nn.Momentum, nn.Adam, mindspore_accum.FusedAdamW) or a "
        f"mindspore.experimental.optim / mindspore.mint.optim optimizer, built over the weights the loss "
        f"cell trains (e.g. nn.Momentum(net.trainable_params(), 0.1, 0.9)); got {what}"
    )


def _register_state(optimizer) -> None:
    """Makes every Parameter an experimental/mint optimizer keeps in a plain list a Parameter of the
    optimizer Cell, so that checkpoints capture it: ASGD's ``mu``/``eta``, NAdam's ``mu_product``
    and every optimizer's ``lrs`` (``learning_rate_group_<i>``, which an LRScheduler changes) are
    lists that MindSpore's own checkpoints of these optimizers miss; a resume would restart them."""
    known = {id(p) for p in optimizer.get_parameters()}
    for value in list(vars(optimizer).values()):
        if not isinstance(value, list) or not value or not all(isinstance(p, Parameter) for p in value):
            continue
        for param in value:
            if id(param) not in known and param.name not in optimizer._params:
                optimizer.insert_param_to_cell(param.name, param, check_name_contain_dot=False)
                known.add(id(param))


def _find_counter(optimizer):
    """(attribute name, Parameter) of ``optimizer``'s step counter, or (None, None)."""
    for name in _COUNTERS:
        counter = getattr(optimizer, name, None)
        if isinstance(counter, Parameter) and not (name == "step_t" and _step_t_stays_zero(optimizer)):
            return name, counter
    return None, None


def _step_t_stays_zero(optimizer) -> bool:
    """mint.optim.SGD advances ``step_t`` with ``Parameter.add_``, which MindSpore 2.7.0 does not
    apply (its step_t stays 0, eager and compiled; 2.10 counts): before 2.10 it counts nothing."""
    from . import _compat

    try:
        from mindspore.mint.optim import SGD
    except ImportError:  # pragma: no cover
        return False
    return isinstance(optimizer, SGD) and (_compat.mindspore_version() or (0,)) < (2, 10)


def step_counter(optimizer) -> Parameter:
    """The Parameter counting ``optimizer``'s steps (see the module docstring); an
    experimental/mint optimizer without one gets ``global_step`` (int32, 0), which :func:`apply`
    advances."""
    _, counter = _find_counter(optimizer)
    if counter is not None:
        return counter
    # A Parameter attribute of a Cell is one of its Parameters: checkpoints of the cell capture it.
    optimizer.global_step = Parameter(Tensor(0, mstype.int32), name="global_step", requires_grad=False)
    object.__setattr__(optimizer, _ADDED, True)
    return optimizer.global_step


def weights(optimizer):
    """The Parameters ``optimizer`` updates, in the order of the gradients :func:`apply` takes
    (for experimental/mint optimizers, the ``param_groups``' params in group order)."""
    return optimizer.parameters


def apply(optimizer, grads):
    """One optimizer step with ``grads`` (a tuple like :func:`weights`), in a compiled graph;
    returns a value to depend on."""
    out = optimizer(grads)
    if getattr(optimizer, _ADDED, False):  # a constant of the graph: the counter we gave it
        out = ops.depend(out, ops.assign_add(optimizer.global_step, Tensor(1, mstype.int32)))
    return out


def update_index(optimizer) -> int:
    """Updates applied so far, read from the optimizer's step counter (checkpointed with it)."""
    name, counter = _find_counter(optimizer)
    if counter is None:
        counter = step_counter(optimizer)
    value = int(round(float(np.asarray(counter.asnumpy()).reshape(-1)[0])))  # state_step may be float32
    return value + 1 if name == "state_step" and _counter_starts_at_minus_one(optimizer) else value
