"""A fused optimizer's state and update for one worker's pieces of the weights (shard=...).

:class:`~.optim.FusedOptimizer` inherits :class:`ShardedStateMixin`. A sharded window calls
:meth:`~ShardedStateMixin._shard_state` once, before training: the optimizer then keeps its state
(moments) only for the worker's pieces (``sharding.layout.Piece``), under the replicated names
(``adam_m.<weight name>``, ...) with the piece's shape -- the flattened piece, or the weight's
shape when the piece is the whole weight, so loading a checkpoint of another layout fails on
the shapes instead of loading part of it -- and the window end calls
:meth:`~ShardedStateMixin._shard_update` with the pieces of the weights. The same kernels and
native functions as the replicated update run on those pieces, each with its weight's
per-tensor arguments (weight decay, learning-rate group, FusedLARS's trust-ratio flag).
FusedLAMB and FusedLARS are given whole weights only (WHOLE_TENSOR_UPDATES): their kernels then
compute each trust ratio from the whole tensor, exactly as replicated.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, ops
from mindspore.common.initializer import initializer

__all__ = ["ShardedStateMixin", "SHARDABLE", "WHOLE_TENSOR_UPDATES"]

SHARDABLE = ("momentum_update", "adamw_update", "lamb_update", "lars_update")
# LAMB and LARS take norms of whole tensors (their trust ratios), which a piece cut from a tensor
# cannot give without another reduction: they shard on the layout whose pieces are whole weights
WHOLE_TENSOR_UPDATES = ("lamb_update", "lars_update")
# the per-tensor vectors the sharded update knows how to build for pieces (optim.FusedSpec.per_tensor)
_PER_TENSOR = (("weight_decay",), ("weight_decay", "lars"))


class ShardedStateMixin:
    """State and update on pieces of the weights (mixed into FusedOptimizer)."""

    _sharded = False

    def _shard_state(self, indices, shapes) -> None:
        """Keeps the state of ``spec.states`` only for pieces of the weights ``indices`` (one
        piece per weight at most), shaped ``shapes``; the full state is released."""
        name = type(self).__name__
        if self.spec.update not in SHARDABLE or self.spec.per_tensor not in _PER_TENSOR:
            raise ValueError(f"{name} cannot shard its state (update {self.spec.update}); use shard=None with it")
        if self.spec.update in WHOLE_TENSOR_UPDATES:
            cut = [self.params[i].name for i, s in zip(indices, shapes) if tuple(s) != tuple(self.params[i].shape)]
            if cut:
                raise ValueError(
                    f"{name} shards whole tensors only (its trust ratios take norms of whole tensors); "
                    f"given pieces of {cut}: use the whole-tensor layout (ShardLayout(whole_tensors=True))"
                )
        if self._sharded:
            raise ValueError(f"{name} is already sharded by another accumulation window; build one per window")
        weight_names = [p.name for p in self.params]
        for attribute, prefix in self.spec.states:
            for full in getattr(self, attribute):  # a new tuple does not unregister the old one's
                self._params.pop(full.name, None)
            setattr(
                self,
                attribute,
                ms.ParameterTuple(
                    Parameter(
                        initializer("zeros", shape, ms.float32),
                        name=f"{prefix}.{weight_names[i]}",
                        requires_grad=False,
                    )
                    for i, shape in zip(indices, shapes)
                ),
            )
        self._states = tuple(getattr(self, attribute) for attribute, _ in self.spec.states)
        self._updated = ()  # the replicated update (construct) no longer applies
        self._sharded = True
        self._piece_weights = tuple(int(i) for i in indices)
        groups = []
        for group_indices, lr_index in self._lr_groups:
            members = set(group_indices)
            pieces = tuple(k for k, i in enumerate(self._piece_weights) if i in members)
            if pieces:
                groups.append((pieces, lr_index))
        self._piece_groups = tuple(groups)
        if "lars" in self.spec.per_tensor:  # FusedLARS: 1 where the trust ratio applies
            self._piece_lars_vectors = tuple(
                Tensor(np.asarray([float(self.lars_flags[self._piece_weights[k]]) for k in pieces], np.float32))
                for pieces, _ in groups
            )
        if self._static_decay is not None:
            self._piece_decay_vectors = tuple(
                Tensor(np.asarray([self._static_decay[self._piece_weights[k]] for k in pieces], np.float32))
                for pieces, _ in groups
            )
        if self.backend == "native":
            from ..backends import native

            if self.spec.update in WHOLE_TENSOR_UPDATES:  # the pieces are the weights: assigned in place
                self._native_value_fn = native.update(self.spec.update, self.spec.hyper, len(self._states))
            else:  # a cut piece is a temporary: the function returns its new value
                self._native_value_fn = native.update_values(self.spec.update, self.spec.hyper, len(self._states))

    def _shard_update(self, params, sources, grad_scale):
        """Updates the pieces ``params`` (Parameters, or slices of weights) and this worker's state
        with ``sources * grad_scale``; advances ``global_step``. Returns (the updated pieces, a
        (1,) tensor to keep alive)."""
        lr = self.get_lr()
        hyper = self._hyper(ops.cast(grad_scale, ms.float32).reshape(()))
        out = ops.zeros((1,), ms.float32)
        if not self._piece_weights:  # this worker's shard is padding only
            new = params
        elif self.backend == "kernels":
            out = self._piece_kernel_update(lr, hyper, params, sources)
            new = tuple(ops.depend(p, out) for p in params)  # written in place by the kernel
        else:
            new = self._piece_native_update(lr, hyper, params, sources)
            out = ops.depend(out, new)
        return new, ops.depend(out, ops.assign_add(self.global_step, self.global_step_increase_tensor))

    def _piece_kernel_update(self, lr, hyper, params, sources):
        out = None
        for group, (pieces, lr_index) in enumerate(self._piece_groups):
            group_lr = ops.cast(lr[lr_index] if self.is_group_lr else lr, ms.float32).reshape(())
            values = ops.stack((group_lr,) + hyper)
            tensors = tuple(params[k] for k in pieces)
            for state in self._states:
                tensors += tuple(state[k] for k in pieces)
            tensors += tuple(sources[k] for k in pieces)
            group_out = self._kernel(values, *self._piece_per_tensor(group, pieces), *tensors)
            out = group_out if out is None else ops.depend(out, group_out)
        return out

    def _piece_per_tensor(self, group, pieces):
        """The kernel's per-tensor vectors (spec.per_tensor) for the pieces ``pieces`` of ``group``."""
        if self._static_decay is not None:
            decay = self._piece_decay_vectors[group]
        else:
            scalars = self._decay_scalars()
            decay = ops.stack(tuple(scalars[self._piece_weights[k]] for k in pieces))
        if "lars" in self.spec.per_tensor:
            return decay, self._piece_lars_vectors[group]
        return (decay,)

    def _piece_native_update(self, lr, hyper, params, sources):
        per_tensor = self._native_per_tensor()  # one per weight: decay, or (decay, lars) for FusedLARS
        decay = tuple(per_tensor[i] for i in self._piece_weights)
        fn = self._native_value_fn
        if self.is_group_lr:
            lrs = tuple(lr[i] for i in self._piece_weights)
            if len(self._states) == 1:
                return self._map(ops.partial(fn, hyper), lrs, decay, params, self._states[0], sources)
            return self._map(ops.partial(fn, hyper), lrs, decay, params, self._states[0], self._states[1], sources)
        if len(self._states) == 1:
            return self._map(ops.partial(fn, hyper, lr), decay, params, self._states[0], sources)
        return self._map(ops.partial(fn, hyper, lr), decay, params, self._states[0], self._states[1], sources)
