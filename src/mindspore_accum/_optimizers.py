"""The optimizers an accumulation window can end with, behind one small interface.

GradAccumCell (and every other front end) talks to its optimizer only through these functions,
so supporting another family of optimizers is a change in this file alone:

* :func:`check_optimizer` -- refuses what cannot be used, saying what to do instead;
* :func:`weights` -- the Parameters it updates, in the order its gradients are passed;
* :func:`apply` -- one step with given (mean, unscaled) gradients, inside a compiled graph;
* :func:`update_index` -- updates applied so far (host side), which an accumulation schedule reads.

Fused optimizers (``optim.FusedOptimizer``) skip :func:`apply`: the window end calls their
``window_update`` directly.
"""

from __future__ import annotations

import numpy as np
from mindspore import nn

__all__ = ["check_optimizer", "weights", "apply", "update_index"]


def check_optimizer(optimizer, owner: str) -> None:
    """Raises TypeError/ValueError when ``optimizer`` cannot end ``owner``'s windows."""
    if not isinstance(optimizer, nn.Optimizer):
        raise TypeError(f"optimizer must be an nn.Optimizer, got {type(optimizer).__name__}")
    if float(optimizer.loss_scale) != 1.0:
        raise ValueError(
            f"optimizer was built with loss_scale={optimizer.loss_scale}; inside {owner} pass "
            f"the loss scale to the {owner} (loss_scale=...) and build the optimizer with loss_scale=1.0, "
            "so the window is unscaled exactly once"
        )


def weights(optimizer):
    """The Parameters ``optimizer`` updates, in the order of the gradients :func:`apply` takes."""
    return optimizer.parameters


def apply(optimizer, grads):
    """One optimizer step with ``grads`` (a tuple like :func:`weights`), in a compiled graph;
    returns a value to depend on."""
    return optimizer(grads)


def update_index(optimizer) -> int:
    """Updates applied so far: the optimizer's global_step (checkpointed with it)."""
    return int(np.asarray(optimizer.global_step.asnumpy()).reshape(-1)[0])
