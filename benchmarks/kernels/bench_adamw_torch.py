#!/usr/bin/env python
"""PyTorch's AdamW window end on the ResNet50-CIFAR parameter set, for bench_kernels.py.

Run by bench_kernels.py --torch-python PATH in its own process (PyTorch is not a dependency of
mindspore_accum; install it in its own venv: pip install torch==2.13.0 numpy). What one run does,
the PyTorch way of ending an accumulation window with the same math as _C.adamw_update:

    torch._foreach_add_(acc, grad)           # the last micro-batch's gradient     12 B/element
    opt.step()   # torch.optim.AdamW(fused=True), p.grad = acc, grad_scale = 1 / GRAD_SCALE
                 # (the fused kernel divides the gradient by it, as under GradScaler)  28 B/element
    torch._foreach_zero_(acc)                                                       4 B/element

Protocol (line based, so that the parent can alternate rounds with its own implementations):
the script prints one JSON line {"ready": ..., "verify": max relative error vs float64} after
checking one run against the float64 reference of adamw_common.py (from a fresh state), then
for every line "run" on stdin runs once and prints {"ms": time of that run}; "quit" ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.common.adamw_common import (
    BETA1,
    BETA2,
    EPS,
    GRAD_SCALE,
    LR,
    STEP,
    adamw_init,
    adamw_reference,
    adamw_weight_decays,
    max_rel_err,
)
from benchmarks.common.resnet50_cifar_shapes import RESNET50_CIFAR_SHAPES, check_shapes


class TorchAdamW:
    def __init__(self, init, wds):
        self.params = [torch.from_numpy(a.copy()) for a in init["param"]]
        self.acc = [torch.from_numpy(a.copy()) for a in init["acc"]]
        self.grad = [torch.from_numpy(a.copy()) for a in init["grad"]]
        for p, a in zip(self.params, self.acc):
            p.grad = a  # the accumulator is the gradient the optimizer reads
        # one group per weight decay value (nn.AdamWeightDecay's filter: none for beta/gamma)
        groups = {}
        for p, wd in zip(self.params, wds):
            groups.setdefault(wd, []).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()],
            lr=LR,
            betas=(BETA1, BETA2),
            eps=EPS,
            fused=True,
        )
        # GradScaler's interface of the fused kernels: grads are divided by grad_scale, skipped if found_inf
        self.opt.grad_scale = torch.tensor(1.0 / GRAD_SCALE, dtype=torch.float32)
        self.opt.found_inf = torch.tensor(0.0, dtype=torch.float32)
        # state as after STEP - 1 updates, with the given moments (the step is counted before the update)
        for p, m, v in zip(self.params, init["exp_avg"], init["exp_avg_sq"]):
            self.opt.state[p] = {
                "step": torch.tensor(float(STEP - 1)),
                "exp_avg": torch.from_numpy(m.copy()),
                "exp_avg_sq": torch.from_numpy(v.copy()),
            }

    @torch.no_grad()
    def run(self):
        torch._foreach_add_(self.acc, self.grad)
        self.opt.step()
        torch._foreach_zero_(self.acc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--quick", action="store_true", help="the quick subset of bench_kernels.py (no layer4)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    check_shapes()
    shapes = RESNET50_CIFAR_SHAPES
    if args.quick:
        shapes = [(n, s) for n, s in shapes if not n.startswith("layer4.")]
    init = adamw_init(shapes)
    wds = adamw_weight_decays(shapes)

    check = TorchAdamW(init, wds)
    check.run()
    ref = adamw_reference(init, wds, bias_correction=True, float32_hyper=False)
    errs = {
        "param": max_rel_err([p.numpy() for p in check.params], ref["param"]),
        "exp_avg": max_rel_err([check.opt.state[p]["exp_avg"].numpy() for p in check.params], ref["exp_avg"]),
        "exp_avg_sq": max_rel_err([check.opt.state[p]["exp_avg_sq"].numpy() for p in check.params], ref["exp_avg_sq"]),
        "acc==0": float(max(float(a.abs().max()) for a in check.acc)),
    }
    del check, ref
    bench = TorchAdamW(init, wds)
    del init
    print(
        json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(), "verify": errs}),
        flush=True,
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
            continue
        t0 = time.perf_counter()
        bench.run()
        dt = time.perf_counter() - t0
        print(json.dumps({"ms": dt * 1e3}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
