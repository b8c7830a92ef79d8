#!/usr/bin/env python
"""One contender of bench_large_batch.py in its own process: the LAMB or the LARS window end on
a parameter set, timed ``--repeats`` times after ``--warmup`` untimed runs.

    ours    mindspore_accum._C.lamb_update / _C.lars_update, the window's summed gradient given
            as ``grad`` and no accumulator (``acc=None``: 40 / 28 B per float32 element, the
            counts of docs/kernels.md), interleaved repeat by repeat with _C.axpy_ceiling
            (``a += s*b``, 12 B/element) over two arrays per tensor of the same shapes
    torch   PyTorch's best CPU sequence for the same math: torch._foreach_* over the tensor lists
            (see TorchLamb / TorchLars), per-tensor norms by torch._foreach_norm

With ``--dump PATH`` it runs once from the initial state instead and writes the updated state
(.npz) for the driver's parity check. The last stdout line is a JSON report. The workload (state,
hyper-parameters, float64 references) is defined here, NumPy only; torch is imported only by the
torch contender.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

LAMB_BYTES = 40  # pass 1 reads param, m, v, grad, writes m, v (24); pass 2 reads param, m, v, writes param (16)
LARS_BYTES = 28  # pass 1 reads param, grad (8); pass 2 reads param, v, grad, writes v, param (20)
CEIL_BYTES = 12  # axpy: read a, b, write a
OP_BYTES = {"lamb": LAMB_BYTES, "lars": LARS_BYTES}

GRAD_SCALE = 0.25  # 1 / k, k = 4 micro-batches: the window's mean gradient from its sum
LAMB = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 1e-2, "step": 10}
LARS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "coefficient": 1e-3, "epsilon": 1e-5}
# The kernels take float32 hyper-parameters (docs/kernels.md): 0.999 becomes 0.99900001, and
# 1 - beta2 then differs from 0.001 by 1.3e-5 relative. Every contender and the reference get the
# rounded values, so that they compute the same thing and a 1e-5 check can compare them.
LAMB = {k: v if isinstance(v, int) else float(np.float32(v)) for k, v in LAMB.items()}
LARS = {k: float(np.float32(v)) for k, v in LARS.items()}
# No weight decay and no layer-wise ratio for biases and normalisation parameters (BatchNorm's
# gamma/beta, the GPT's LayerNorms ln_*): the usual exclusion of LAMB and LARS training recipes.
EXCLUDED = ("bias", "LayerNorm", "gamma", "beta", "ln_")


def param_set(name: str, quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) pairs: ``resnet50`` (ResNet50-CIFAR, 161 tensors, 23.5 M values) or ``gpt``
    (the GPT example's default model: 4 layers, d_model 256, 512 positions). ``quick``: a few
    small tensors of the same kind."""
    if name == "resnet50":
        from benchmarks.common.resnet50_cifar_shapes import RESNET50_CIFAR_SHAPES

        shapes = RESNET50_CIFAR_SHAPES
        return [(n, s) for n, s in shapes if n.startswith(("conv1", "bn1", "layer1.0", "fc"))] if quick else shapes
    if name == "gpt":
        from examples.gpt_lm.data import gpt_param_shapes

        dims = (1, 64, 128) if quick else (4, 256, 512)
        return list(gpt_param_shapes(*dims).items())
    raise ValueError(f"unknown parameter set {name!r}")


def excluded(name: str) -> bool:
    return any(k in name for k in EXCLUDED)


def make_state(op: str, shapes, seed: int = 2) -> dict[str, list[np.ndarray]]:
    """The state before the window end, float32: param, the optimizer's moments, the window's
    summed gradient. Biases start at zero, as they are initialised: their ratio is 1 (a zero
    norm), so an error in the scale of LAMB's ``u``, which the ratio cancels elsewhere, shows."""
    rng = np.random.default_rng(seed)

    def lst(std, square=False):
        out = []
        for _, s in shapes:
            a = (rng.standard_normal(s, dtype=np.float32) * std).astype(np.float32)
            out.append(np.square(a) + np.float32(1e-6) if square else a)
        return out

    param = [np.zeros_like(a) if "bias" in n else a for (n, _), a in zip(shapes, lst(0.05))]
    if op == "lamb":
        return {"param": param, "exp_avg": lst(0.01), "exp_avg_sq": lst(0.01, square=True), "grad": lst(1.0)}
    return {"param": param, "moment": lst(0.01), "grad": lst(1.0)}


def state_keys(op: str) -> tuple[str, ...]:
    """The arrays a window end updates (compared between contenders)."""
    return ("param", "exp_avg", "exp_avg_sq") if op == "lamb" else ("param", "moment")


def reference(op: str, shapes, state) -> dict[str, list[np.ndarray]]:
    """One window end in float64, from the formulas of issue 27 (double hyper-parameters)."""
    out = {k: [] for k in state_keys(op)}
    for i, (name, _) in enumerate(shapes):
        p = state["param"][i].astype(np.float64)
        g = state["grad"][i].astype(np.float64) * GRAD_SCALE
        if op == "lamb":
            h = LAMB
            wd = 0.0 if excluded(name) else h["weight_decay"]
            m = h["beta1"] * state["exp_avg"][i].astype(np.float64) + (1 - h["beta1"]) * g
            v = h["beta2"] * state["exp_avg_sq"][i].astype(np.float64) + (1 - h["beta2"]) * g * g
            bc1, bc2 = 1 - h["beta1"] ** h["step"], 1 - h["beta2"] ** h["step"]
            u = (m / bc1) / (np.sqrt(v / bc2) + h["eps"]) + wd * p
            wn, un = np.linalg.norm(p), np.linalg.norm(u)
            r = wn / un if wn > 0 and un > 0 else 1.0
            out["param"].append(p - h["lr"] * r * u)
            out["exp_avg"].append(m)
            out["exp_avg_sq"].append(v)
        else:
            h = LARS
            if excluded(name):
                d = g
            else:
                wn, gn = np.linalg.norm(p), np.linalg.norm(g)
                wd = h["weight_decay"]
                trust = h["coefficient"] * wn / (gn + wd * wn + h["epsilon"]) if wn > 0 and gn > 0 else 1.0
                d = trust * (g + wd * p)
            v = h["momentum"] * state["moment"][i].astype(np.float64) + d
            out["param"].append(p - h["lr"] * v)
            out["moment"].append(v)
    return out


def max_rel_err(got, want) -> float:
    """max |got - want| / max(|want|, 1e-3) over all elements (as adamw_common.max_rel_err)."""
    worst = 0.0
    for x, y in zip(got, want):
        if x.size:
            y = np.asarray(y, np.float64)
            worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - y) / np.maximum(np.abs(y), 1e-3))))
    return worst


# --------------------------------------------------------------------------------------------
# ours


class Ours:
    def __init__(self, op, shapes, state):
        import mindspore_accum._C as C

        self.C, self.op, self.s = C, op, state
        self.lars_flags = [not excluded(n) for n, _ in shapes]
        self.lamb_wds = [0.0 if excluded(n) else LAMB["weight_decay"] for n, _ in shapes]
        # the ceiling's own arrays (a += s*b must not touch the optimizer state)
        self.ceil_a = [np.zeros(s, np.float32) for _, s in shapes]
        self.ceil_b = [np.full(s, 1e-3, np.float32) for _, s in shapes]

    def run(self):
        s = self.s
        if self.op == "lamb":
            h = LAMB
            self.C.lamb_update(
                s["param"],
                s["exp_avg"],
                s["exp_avg_sq"],
                None,
                s["grad"],
                lr=h["lr"],
                beta1=h["beta1"],
                beta2=h["beta2"],
                eps=h["eps"],
                weight_decay=self.lamb_wds,
                step=h["step"],
                grad_scale=GRAD_SCALE,
            )
        else:
            h = LARS
            self.C.lars_update(
                s["param"],
                s["moment"],
                None,
                s["grad"],
                lr=h["lr"],
                momentum=h["momentum"],
                grad_scale=GRAD_SCALE,
                weight_decay=h["weight_decay"],
                coefficient=h["coefficient"],
                epsilon=h["epsilon"],
                lars=self.lars_flags,
            )

    def ceiling(self):
        self.C.axpy_ceiling(self.ceil_a, self.ceil_b, 1e-3)


# --------------------------------------------------------------------------------------------
# PyTorch: the fewest passes torch._foreach_* allows for the same math


class TorchLamb:
    """Per window end (g = grad_scale * grad folded into the scalars, no temporary for g)::

    m = b1*m + (1-b1)*gs*grad                  _foreach_mul_, _foreach_add_(alpha)
    v = b2*v + (1-b2)*gs^2*grad^2              _foreach_mul_, _foreach_addcmul_(value)
    den = sqrt(v) + eps*sqrt(bc2)              _foreach_sqrt, _foreach_add_
    u = wd*p + (sqrt(bc2)/bc1) * m/den         _foreach_mul(p, wds), _foreach_addcdiv_
                                               (= (m/bc1)/(sqrt(v/bc2)+eps) + wd*p)
    r = ||p|| / ||u||  (1 if either is 0)      _foreach_norm x 2, one vector op
    p -= lr*r*u                                _foreach_mul_(u, scalars), _foreach_add_
    """

    def __init__(self, shapes, state):
        import torch

        self.t = torch
        self.p = [torch.from_numpy(a) for a in state["param"]]
        self.m = [torch.from_numpy(a) for a in state["exp_avg"]]
        self.v = [torch.from_numpy(a) for a in state["exp_avg_sq"]]
        self.g = [torch.from_numpy(a) for a in state["grad"]]
        self.wds = [0.0 if excluded(n) else LAMB["weight_decay"] for n, _ in shapes]

    @property
    def state(self):
        return {"param": self.p, "exp_avg": self.m, "exp_avg_sq": self.v}

    def run(self):
        t, h, gs = self.t, LAMB, GRAD_SCALE
        b1, b2 = h["beta1"], h["beta2"]
        bc1, bc2 = 1 - b1 ** h["step"], 1 - b2 ** h["step"]
        with t.no_grad():
            t._foreach_mul_(self.m, b1)
            t._foreach_add_(self.m, self.g, alpha=(1 - b1) * gs)
            t._foreach_mul_(self.v, b2)
            t._foreach_addcmul_(self.v, self.g, self.g, value=(1 - b2) * gs * gs)
            den = t._foreach_sqrt(self.v)
            t._foreach_add_(den, h["eps"] * math.sqrt(bc2))
            u = t._foreach_mul(self.p, self.wds)
            t._foreach_addcdiv_(u, self.m, den, value=math.sqrt(bc2) / bc1)
            del den
            wn = t.stack(t._foreach_norm(self.p))
            un = t.stack(t._foreach_norm(u))
            r = t.where((wn > 0) & (un > 0), wn / un, t.ones_like(wn))
            t._foreach_mul_(u, (-h["lr"] * r).tolist())
            t._foreach_add_(self.p, u)


class TorchLars:
    """Per window end (nn.LARS around nn.Momentum; the excluded tensors: d = g)::

    ||p||, ||grad|| of the LARS tensors        _foreach_norm x 2
    trust = coef*||p|| / (gs*||grad|| + wd*||p|| + eps)  (1 if a norm is 0)
    d = trust*(wd*p + gs*grad)                 _foreach_mul(p, wd), _foreach_add_(alpha), _foreach_mul_(trust)
    d = gs*grad  (excluded tensors)            _foreach_mul
    v = mu*v + d                               _foreach_mul_, _foreach_add_
    p -= lr*v                                  _foreach_add_(alpha)
    """

    def __init__(self, shapes, state):
        import torch

        self.t = torch
        self.p = [torch.from_numpy(a) for a in state["param"]]
        self.v = [torch.from_numpy(a) for a in state["moment"]]
        self.g = [torch.from_numpy(a) for a in state["grad"]]
        self.lars = [i for i, (n, _) in enumerate(shapes) if not excluded(n)]
        self.plain = [i for i, (n, _) in enumerate(shapes) if excluded(n)]
        self.p_l, self.g_l = [self.p[i] for i in self.lars], [self.g[i] for i in self.lars]
        self.g_p = [self.g[i] for i in self.plain]
        # the update's lists in the order [LARS tensors..., excluded tensors...]
        self.v_all = [self.v[i] for i in self.lars + self.plain]
        self.p_all = [self.p[i] for i in self.lars + self.plain]

    @property
    def state(self):
        return {"param": self.p, "moment": self.v}

    def run(self):
        t, h, gs = self.t, LARS, GRAD_SCALE
        wd = h["weight_decay"]
        with t.no_grad():
            wn = t.stack(t._foreach_norm(self.p_l))
            gn = t.stack(t._foreach_norm(self.g_l)) * gs
            trust = t.where((wn > 0) & (gn > 0), h["coefficient"] * wn / (gn + wd * wn + h["epsilon"]), t.ones_like(wn))
            d = t._foreach_mul(self.p_l, wd)
            t._foreach_add_(d, self.g_l, alpha=gs)
            t._foreach_mul_(d, trust.tolist())
            d += t._foreach_mul(self.g_p, gs)
            t._foreach_mul_(self.v_all, h["momentum"])
            t._foreach_add_(self.v_all, d)
            del d
            t._foreach_add_(self.p_all, self.v_all, alpha=-h["lr"])


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=["ours", "torch"], required=True)
    ap.add_argument("--op", choices=["lamb", "lars"], required=True)
    ap.add_argument("--set", dest="pset", choices=["resnet50", "gpt"], required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="threads of the contender (0: its default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dump", default=None, metavar="NPZ", help="run once from the initial state, write the state")
    args = ap.parse_args(argv)

    shapes = param_set(args.pset, args.quick)
    state = make_state(args.op, shapes)
    if args.impl == "ours":
        impl = Ours(args.op, shapes, state)
        if args.threads > 0:
            impl.C.set_num_threads(args.threads)
        threads, version = impl.C.num_threads(), impl.C.build_info()["version"]
    else:
        impl = (TorchLamb if args.op == "lamb" else TorchLars)(shapes, state)
        if args.threads > 0:
            impl.t.set_num_threads(args.threads)
        threads, version = impl.t.get_num_threads(), impl.t.__version__
    report = {"impl": args.impl, "op": args.op, "set": args.pset, "threads": threads, "version": version}
    report["elements"] = int(sum(math.prod(s) for _, s in shapes))
    report["tensors"] = len(shapes)

    if args.dump:
        impl.run()
        np.savez(args.dump, **{f"{k}.{i}": a for k in state_keys(args.op) for i, a in enumerate(state[k])})
        print(json.dumps(report), flush=True)
        return 0

    times, ceil = [], []
    for r in range(args.warmup + args.repeats):
        # ours and the ceiling alternate, the order flipped every repeat
        fns = [("op", impl.run)] + ([("ceil", impl.ceiling)] if args.impl == "ours" else [])
        for what, fn in fns if r % 2 == 0 else fns[::-1]:
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1e3
            if r >= args.warmup:
                (times if what == "op" else ceil).append(dt)
    report["times_ms"] = times
    report["median_ms"] = statistics.median(times)
    if ceil:
        report["ceiling_ms"] = ceil
        report["ceiling_median_ms"] = statistics.median(ceil)
    report["finite"] = bool(all(np.isfinite(a).all() for k in state_keys(args.op) for a in state[k]))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
