#!/usr/bin/env python
"""One contender of benchmarks/overhead/bench_default_mode.py in this process, in MindSpore's
default mode (PYNATIVE): builds the model and the contender's training step, runs windows of N
micro-batches, and prints one JSON line (every call's seconds; with ``weights_out``, the final
weights for the parity check).

    python -m benchmarks.overhead.default_mode_worker '<JSON settings>'     # run by bench_default_mode

The contenders (CONTENDERS) are the ways a MindSpore user trains in the default mode:

* ``tutorial``     the functional step of MindSpore's tutorials: ``@ms.jit def train_step(x, y)`` with
                   ``value_and_grad(forward_fn, None, optimizer.parameters, has_aux=True)`` and a
                   plain optimizer (no accumulation) -- the reference;
* ``trainonestep`` ``nn.TrainOneStepCell(loss_cell, optimizer)`` called from Python;
* ``cell``         ``GradAccumCell(loss_cell, fused_optimizer, N)`` called from Python;
* ``cell-eager``   the same with ``jit_micro_step=False``: the micro-step run eagerly (the only
                   way before issue 24; where this build has the argument);
* ``accumulator``  ``GradAccumulator(fused_optimizer, N)`` inside the user's ``@ms.jit`` step
                   (skipped, reported as absent, where this build of mindspore_accum has none);
* ``big``          the tutorial's step on the big batch (N x B): the parity check's reference.

A contender is a function ``(model, cfg) -> Step``; add one by adding it to CONTENDERS.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

from benchmarks.common.proc_memory import import_mindspore

# the same optimizer for every contender of a table: MindSpore's class for the plain steps, its
# fused twin (same arguments, same math) for the accumulating ones
OPTIMIZERS = {"momentum": ("nn.Momentum", "FusedMomentum"), "adamw": ("nn.AdamWeightDecay", "FusedAdamW")}


@dataclass
class Model:
    net: object  # the network (its trainable parameters are the weights)
    forward_fn: Callable  # (x, y) -> (loss, logits): the tutorial's forward function
    loss_cell: object  # an nn.Cell (x, y) -> loss: the same loss for the cells
    data: tuple  # numpy (inputs, labels) of the big batch N x B


@dataclass
class Step:
    call: Callable  # (x, y) -> loss Tensor: one micro-batch (one step of the plain contenders)
    optimizer: object  # its global_step counts the updates applied
    accumulates: bool  # one update per N calls (else one per call)


# ============================================================================ models


def build_model(cfg: dict) -> Model:
    """The example's network, the same weights and data in every process (seeded)."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    ms.set_seed(cfg["seed"])
    rs = np.random.RandomState(cfg["seed"])
    total = cfg["batch"] * cfg["accum"]
    if cfg["model"] == "resnet50":
        from examples.resnet50_cifar10.model import ResNet50

        net = ResNet50(num_classes=10)
        loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        data = (rs.randn(total, 3, 32, 32).astype(np.float32), rs.randint(0, 10, total).astype(np.int32))
    elif cfg["model"] == "gpt":
        from examples.gpt_lm import model as gpt

        seq = cfg["gpt_seq"]
        net = gpt.GPT(cfg["gpt_layers"], cfg["gpt_d_model"], cfg["gpt_heads"], max_positions=seq, seed=cfg["seed"])
        vocab = gpt.VOCAB

        def loss_fn(logits, y):  # the token mean (nothing is padded): every sequence weighs the same
            return ops.cross_entropy(ops.reshape(logits, (-1, vocab)), ops.reshape(y, (-1,)))

        tokens = rs.randint(0, vocab, (total, seq + 1)).astype(np.int32)
        data = (tokens[:, :-1].copy(), tokens[:, 1:].copy())
    else:
        raise ValueError(f"unknown model {cfg['model']!r}")

    def forward_fn(x, y):
        logits = net(x)
        return loss_fn(logits, y), logits

    class LossCell(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x, y):
            return loss_fn(self.net(x), y)

    return Model(net, forward_fn, LossCell(), data)


def make_optimizer(cfg: dict, params, fused: bool):
    from mindspore import nn

    from mindspore_accum import FusedAdamW, FusedMomentum

    if cfg["optimizer"] == "momentum":
        return (FusedMomentum if fused else nn.Momentum)(params, 0.01, 0.9, weight_decay=5e-4)
    if cfg["optimizer"] == "adamw":
        return (FusedAdamW if fused else nn.AdamWeightDecay)(params, 3e-4, weight_decay=0.1)
    raise ValueError(f"unknown optimizer {cfg['optimizer']!r}")


# ============================================================================ contenders


def tutorial(model: Model, cfg: dict) -> Step:
    import mindspore as ms

    optimizer = make_optimizer(cfg, model.net.trainable_params(), fused=False)
    grad_fn = ms.value_and_grad(model.forward_fn, None, optimizer.parameters, has_aux=True)

    @ms.jit
    def train_step(x, y):
        (loss, _), grads = grad_fn(x, y)
        optimizer(grads)
        return loss

    return Step(train_step, optimizer, accumulates=False)


def trainonestep(model: Model, cfg: dict) -> Step:
    from mindspore import nn

    optimizer = make_optimizer(cfg, model.net.trainable_params(), fused=False)
    cell = nn.TrainOneStepCell(model.loss_cell, optimizer)
    cell.set_train()
    return Step(cell, optimizer, accumulates=False)


def cell(model: Model, cfg: dict, **options) -> Step:
    from mindspore_accum import GradAccumCell

    optimizer = make_optimizer(cfg, model.net.trainable_params(), fused=True)
    accum = GradAccumCell(model.loss_cell, optimizer, cfg["accum"], **options)
    accum.set_train()
    return Step(accum, optimizer, accumulates=True)


def accumulator(model: Model, cfg: dict) -> Step:
    import mindspore as ms
    from mindspore import ops

    from mindspore_accum import GradAccumulator

    optimizer = make_optimizer(cfg, model.net.trainable_params(), fused=True)
    grad_fn = ms.value_and_grad(model.forward_fn, None, optimizer.parameters, has_aux=True)
    accumulate = GradAccumulator(optimizer, accumulation_steps=cfg["accum"])

    @ms.jit
    def train_step(x, y):
        (loss, _), grads = grad_fn(x, y)
        return ops.depend(loss, accumulate(grads, x.shape[0]))

    return Step(train_step, optimizer, accumulates=True)


CONTENDERS = {
    "tutorial": tutorial,
    "trainonestep": trainonestep,
    "cell": cell,
    "cell-eager": lambda model, cfg: cell(model, cfg, jit_micro_step=False),
    "accumulator": accumulator,
    "big": tutorial,  # on the big batch (see worker)
}


def available(name: str) -> bool:
    """Whether this build of mindspore_accum has what the contender needs."""
    if name == "accumulator":
        import mindspore_accum

        return hasattr(mindspore_accum, "GradAccumulator")
    if name == "cell-eager":
        import inspect

        from mindspore_accum import GradAccumCell

        return "jit_micro_step" in inspect.signature(GradAccumCell).parameters
    return name in CONTENDERS


# ============================================================================ the worker


def worker(cfg: dict) -> dict:
    """Timing run: one first window (compile included), then ``windows`` timed windows of N
    calls, every call read back and synchronised. Parity run (``weights_out``): ``updates``
    updates, untimed, then the weights saved. BatchNorm is frozen (``freeze_bn``) for parity:
    in training mode a micro-batch's statistics are not the big batch's, by definition."""
    t_start = time.perf_counter()
    import_mindspore("pynative")  # MindSpore's default mode: what this benchmark is about
    import numpy as np
    from mindspore import Tensor

    name, n, b = cfg["contender"], cfg["accum"], cfg["batch"]
    if not available(name):
        return dict(contender=name, available=False)
    model = build_model(cfg)
    t0 = time.perf_counter()
    step = CONTENDERS[name](model, cfg)
    build_s = time.perf_counter() - t0
    # training mode, as the tutorial's train loop sets it (model.set_train()) and the cells do:
    # BatchNorm on batch statistics. Frozen (inference statistics) only for parity
    model.net.set_train(not cfg.get("freeze_bn"))
    if name == "big":
        batches = [tuple(Tensor(a) for a in model.data)]
    else:
        batches = [tuple(Tensor(a[i * b : (i + 1) * b]) for a in model.data) for i in range(n)]
    from mindspore.common.api import _pynative_executor  # ms.runtime.synchronize() refuses the CPU

    step_counter = step.optimizer.global_step

    cpu_times = []  # per window: the process's CPU seconds (all threads) of each call

    def window():
        times, cpu = [], []
        for x, y in batches:
            c0, t0 = time.process_time(), time.perf_counter()
            loss = float(step.call(x, y).asnumpy())
            _pynative_executor.sync()  # every queued operator has run, the optimizer's writes too
            step_counter.asnumpy()  # written by the update
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{name}: loss {loss}")
        cpu_times.append(cpu)
        return times

    out = dict(contender=name, available=True, build_s=build_s)
    if cfg.get("weights_out"):
        weights = {"init:" + p.name: p.asnumpy().copy() for p in model.net.trainable_params()}
        for _ in range(cfg["updates"]):
            window()
        weights.update({p.name: p.asnumpy() for p in model.net.trainable_params()})
        np.savez(cfg["weights_out"], **weights)
        out["updates"] = int(step_counter.asnumpy().reshape(-1)[0])
    else:
        first = window()
        calls = [window() for _ in range(cfg["windows"])]
        out.update(
            first_window_s=sum(first),
            first_call_s=first[0],
            first_calls_s=first,
            call_times_s=calls,
            # the calls that do not end a window (all calls cost the same in the plain steps)
            micro_step_s=float(np.median([t for w in calls for t in w[:-1]])),
            update_s=float(np.median([sum(w) for w in calls])),
            last_call_s=float(np.median([w[-1] for w in calls])),
            updates=int(step_counter.asnumpy().reshape(-1)[0]),
            # CPU time: what the calls cost this process, less sensitive than wall time to the
            # other jobs of a shared machine (it counts MindSpore's spinning threads, though)
            cpu_call_times_s=cpu_times[1:],
            cpu_micro_step_s=float(np.median([t for w in cpu_times[1:] for t in w[:-1]])),
            cpu_update_s=float(np.median([sum(w) for w in cpu_times[1:]])),
        )
    out["wall_s"] = time.perf_counter() - t_start
    return out


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))), flush=True)
