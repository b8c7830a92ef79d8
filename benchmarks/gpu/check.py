"""The one-call GPU check: the kernels on PyTorch tensors through DLPack, against PyTorch.

    python -m benchmarks.gpu.check                       # CUDA (the default when torch sees a GPU)
    python -m benchmarks.gpu.check --device cpu --quick  # the same code path on PyTorch CPU tensors (CI)
    bash benchmarks/gpu/check.sh                         # builds the extension on the machine first

For accumulate, the momentum window end and the AdamW window end (and sum_of_squares):

1. Parity against PyTorch (``torch._foreach_add_``, ``torch.optim.SGD(momentum=...)``,
   ``torch.optim.AdamW(fused=True)``) and against a float64 reference, on fp32/fp16/bf16
   gradients, 1 to ~200 tensors of odd sizes: normwise relative error <= 1e-6 per tensor
   (sum_of_squares: <= 257 float32 ulps, its documented bound). Our tensors must keep their
   storage (same data_ptr: in place, no copy). On CUDA also: a call on a side stream.
2. Bandwidth (CUDA events on a GPU, wall clock on the CPU; warm-up, median of repeats): bytes
   each op must move divided by its time, against the device-to-device copy bandwidth measured
   in the same run and against PyTorch's fastest sequence for the same window end, on the
   ResNet50-CIFAR and GPT-2-small parameter sets and, on a GPU, one 1-billion-element set.
3. ``compute-sanitizer --tool memcheck`` on a small case (CUDA, where the tool is on PATH), last.

Writes a JSON (``--json``), prints a table and the README rows. Exit status 1 when a parity or
memcheck check fails (bandwidth targets are reported, not enforced). Needs PyTorch; the package
itself does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.common.resnet50_cifar_shapes import RESNET50_CIFAR_SHAPES
from mindspore_accum import _C, kernels

RTOL = 1e-6
RTOL_SQUARES = 257 * 2.0**-24  # per-thread float32 partial sums of <= 256 squares (docs/kernels.md)
GRAD_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Bytes each op must move per element, besides the gradient's own 4 or 2 bytes:
# accumulate reads and writes acc; the updates read param, state(s) and acc and write them all
# (acc = 0 at the end).
BYTES = {"accumulate": 8, "momentum": 24, "adamw": 32}
OPS = ("accumulate", "momentum", "adamw")


def f32(x):
    """x rounded to float32, as the kernels take every scalar."""
    return float(torch.tensor(x, dtype=torch.float32))


# Hyper-parameters already rounded to float32, so that PyTorch (which computes with the Python
# doubles) and the kernels (float32 scalars, docs/kernels.md) solve the same problem: with
# beta2 = 0.999 as a double, 1 - beta2 differs by 1.3e-5 relative from the float32 contract.
SCALE = 0.5
GRAD_SCALE = 0.25
MOMENTUM = dict(lr=f32(0.05), momentum=f32(0.9), weight_decay=f32(1e-4), nesterov=True)
ADAMW = dict(lr=f32(1e-3), beta1=f32(0.9), beta2=f32(0.999), eps=f32(1e-8), weight_decay=f32(1e-2), step=10)
TARGET_COPY_FRACTION = 0.90
TARGET_SPEEDUP = {"momentum": 1.3, "adamw": 1.3}


def gpt_shapes(layers=12, d_model=768, vocab=50257, positions=1024):
    """GPT-2's trainable tensors (the layout of examples/ GPT: wte, wpe, per block ln_1,
    c_attn, c_proj, ln_2, c_fc, c_proj, then ln_f); the defaults are GPT-2 small, 124M values."""
    shapes = [("wte", (vocab, d_model)), ("wpe", (positions, d_model))]
    for i in range(layers):
        b = f"h.{i}."
        shapes += [
            (b + "ln_1.gamma", (d_model,)),
            (b + "ln_1.beta", (d_model,)),
            (b + "attn.c_attn.weight", (d_model, 3 * d_model)),
            (b + "attn.c_attn.bias", (3 * d_model,)),
            (b + "attn.c_proj.weight", (d_model, d_model)),
            (b + "attn.c_proj.bias", (d_model,)),
            (b + "ln_2.gamma", (d_model,)),
            (b + "ln_2.beta", (d_model,)),
            (b + "mlp.c_fc.weight", (d_model, 4 * d_model)),
            (b + "mlp.c_fc.bias", (4 * d_model,)),
            (b + "mlp.c_proj.weight", (4 * d_model, d_model)),
            (b + "mlp.c_proj.bias", (d_model,)),
        ]
    return shapes + [("ln_f.gamma", (d_model,)), ("ln_f.beta", (d_model,))]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------- state and the two implementations


def make_state(shapes, grad_dtype, device, seed):
    """param, moment (SGD), exp_avg, exp_avg_sq, acc (float32) and grad (grad_dtype) per shape."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def lst(std, dtype=torch.float32, square=False):
        out = []
        for s in shapes:
            t = torch.randn(s, generator=gen, device=device) * std
            out.append((t * t + 1e-4 if square else t).to(dtype))
        return out

    return {
        "param": lst(0.05),
        "moment": lst(0.01),
        "exp_avg": lst(0.01),
        "exp_avg_sq": lst(0.01, square=True),
        "acc": lst(0.1),
        "grad": lst(1.0, grad_dtype),
    }


def clone_state(st):
    return {k: [t.clone() for t in v] for k, v in st.items()}


def run_ours(op, st, stream=None):
    if op == "accumulate":
        kernels.accumulate(st["acc"], st["grad"], SCALE, stream=stream)
    elif op == "momentum":
        m = MOMENTUM
        kernels.momentum_update(
            st["param"],
            st["moment"],
            st["acc"],
            st["grad"],
            lr=m["lr"],
            momentum=m["momentum"],
            grad_scale=GRAD_SCALE,
            weight_decay=m["weight_decay"],
            nesterov=m["nesterov"],
            stream=stream,
        )
    else:
        a = ADAMW
        kernels.adamw_update(
            st["param"],
            st["exp_avg"],
            st["exp_avg_sq"],
            st["acc"],
            st["grad"],
            lr=a["lr"],
            beta1=a["beta1"],
            beta2=a["beta2"],
            eps=a["eps"],
            weight_decay=a["weight_decay"],
            step=a["step"],
            grad_scale=GRAD_SCALE,
            bias_correction=True,
            stream=stream,
        )


def torch_variants(op, device):
    """PyTorch sequences doing the same window end, as (name, make(st) -> step function)."""
    if op == "accumulate":
        return [("_foreach_add_", lambda st: lambda: torch._foreach_add_(st["acc"], st["grad"], alpha=SCALE))]

    def window_end(st, opt, scale_in_optimizer):
        # the last micro-batch's gradient into the accumulators, the 1/k scale, the step, acc = 0
        for p, a in zip(st["param"], st["acc"]):
            p.grad = a
        if scale_in_optimizer:  # the fused kernels divide by grad_scale on load (as under GradScaler)
            opt.grad_scale = torch.tensor(1.0 / GRAD_SCALE, device=device)
            opt.found_inf = torch.tensor(0.0, device=device)

        def step():
            torch._foreach_add_(st["acc"], st["grad"])
            if not scale_in_optimizer:
                torch._foreach_mul_(st["acc"], GRAD_SCALE)
            opt.step()
            torch._foreach_zero_(st["acc"])

        return step

    if op == "momentum":
        m = MOMENTUM

        def sgd(kind, scale_in_optimizer):
            def make(st):
                opt = torch.optim.SGD(
                    st["param"],
                    lr=m["lr"],
                    momentum=m["momentum"],
                    nesterov=m["nesterov"],
                    weight_decay=m["weight_decay"],
                    **{kind: True},
                )
                for p, v in zip(st["param"], st["moment"]):
                    opt.state[p]["momentum_buffer"] = v
                return window_end(st, opt, scale_in_optimizer)

            return make

        return [
            ("SGD(foreach) sequence", sgd("foreach", False)),
            ("SGD(fused) sequence", sgd("fused", False)),
            ("SGD(fused, grad_scale) sequence", sgd("fused", True)),
        ]

    a = ADAMW

    def adamw(scale_in_optimizer):
        def make(st):
            opt = torch.optim.AdamW(
                st["param"],
                lr=a["lr"],
                betas=(a["beta1"], a["beta2"]),
                eps=a["eps"],
                weight_decay=a["weight_decay"],
                fused=True,
            )
            for p, m, v in zip(st["param"], st["exp_avg"], st["exp_avg_sq"]):
                opt.state[p].update(step=torch.tensor(float(a["step"] - 1), device=device), exp_avg=m, exp_avg_sq=v)
            return window_end(st, opt, scale_in_optimizer)

        return make

    return [("AdamW(fused) sequence", adamw(False)), ("AdamW(fused, grad_scale) sequence", adamw(True))]


def reference(op, st):
    """float64 window end from the contract (docs/kernels.md), scalars rounded to float32."""
    d = {k: [t.double() for t in v] for k, v in st.items()}
    if op == "accumulate":
        return {"acc": [a + f32(SCALE) * g for a, g in zip(d["acc"], d["grad"])]}
    gs = f32(GRAD_SCALE)
    out = {"param": [], "acc": [torch.zeros_like(a) for a in d["acc"]]}
    if op == "momentum":
        lr, mom, wd = f32(MOMENTUM["lr"]), f32(MOMENTUM["momentum"]), f32(MOMENTUM["weight_decay"])
        out["moment"] = []
        for p, v, a, g in zip(d["param"], d["moment"], d["acc"], d["grad"]):
            gg = (a + g) * gs + wd * p
            v = mom * v + gg
            out["param"].append(p - lr * (gg + mom * v) if MOMENTUM["nesterov"] else p - lr * v)
            out["moment"].append(v)
        return out
    A = ADAMW
    lr, b1, b2, eps, wd = (f32(A[k]) for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    bc1, bc2 = f32(1 - A["beta1"] ** A["step"]), f32(1 - A["beta2"] ** A["step"])
    out["exp_avg"], out["exp_avg_sq"] = [], []
    for p, m, v, a, g in zip(d["param"], d["exp_avg"], d["exp_avg_sq"], d["acc"], d["grad"]):
        gg = (a + g) * gs
        m = b1 * m + (1 - b1) * gg
        v = b2 * v + (1 - b2) * gg * gg
        out["param"].append(p - lr * wd * p - lr * (m / bc1) / (v.sqrt() / bc2**0.5 + eps))
        out["exp_avg"].append(m)
        out["exp_avg_sq"].append(v)
    return out


def normwise_error(xs, refs):
    """max over tensors of max|x - ref| / max|ref| (exact comparison where ref is all zero)."""
    worst = 0.0
    for x, r in zip(xs, refs):
        if r.numel() == 0:
            continue
        diff = float((x.double() - r.double()).abs().max())
        scale = float(r.double().abs().max())
        worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
    return worst


# ---------------------------------------------------------------- parity


def parity_sizes(count, device, quick, seed):
    gen = torch.Generator().manual_seed(seed)
    hi = 3000 if quick else 70_001
    sizes = [int(x) for x in torch.randint(1, hi, (count,), generator=gen)]
    if count >= 7:  # chunk edges (65536 elements per block on CUDA), tiny and empty tensors
        sizes[:4] = [1, 3, 0, 65537 if not quick else 4099]
    if count >= 100 and not quick:
        sizes[50] = 1_000_003
    return [(n,) for n in sizes]


def parity_case(op, shapes, grad_name, device):
    st = make_state(shapes, GRAD_DTYPES[grad_name], device, seed=len(shapes) * 31 + OPS.index(op))
    ref = reference(op, st)
    ours = clone_state(st)
    ptrs = {k: [t.data_ptr() for t in v] for k, v in ours.items()}
    run_ours(op, ours)
    in_place = all(t.data_ptr() == p for k, v in ours.items() for t, p in zip(v, ptrs[k]))
    grads_untouched = all(torch.equal(a, b) for a, b in zip(ours["grad"], st["grad"]))
    result = {
        "op": op,
        "grad": grad_name,
        "tensors": len(shapes),
        "elements": sum(numel(s) for s in shapes),
        "in_place": in_place,
        "grad_untouched": grads_untouched,
        "ours_vs_ref": 0.0,
        "torch": {},
    }
    for key in ref:
        result["ours_vs_ref"] = max(result["ours_vs_ref"], normwise_error(ours[key], ref[key]))
    for name, make in torch_variants(op, device):
        theirs = clone_state(st)
        try:
            make(theirs)()
        except Exception as e:  # a variant this PyTorch/device lacks: reported, not compared
            result["torch"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            continue
        vs_ref = max(normwise_error(theirs[k], ref[k]) for k in ref)
        vs_ours = max(normwise_error(ours[k], theirs[k]) for k in ref)
        result["torch"][name] = {"torch_vs_ref": vs_ref, "ours_vs_torch": vs_ours}
    compared = [v for v in result["torch"].values() if "error" not in v]
    result["ok"] = (
        in_place
        and grads_untouched
        and result["ours_vs_ref"] <= RTOL
        and bool(compared)
        and all(v["ours_vs_torch"] <= RTOL for v in compared)
    )
    return result


def squares_case(shapes, grad_name, device):
    st = make_state(shapes, GRAD_DTYPES[grad_name], device, seed=7)
    ours = kernels.sum_of_squares(st["grad"])
    exact = float(sum(float((g.double() ** 2).sum()) for g in st["grad"]))
    err = abs(ours - exact) / exact if exact else abs(ours)
    return {
        "op": "sum_of_squares",
        "grad": grad_name,
        "tensors": len(shapes),
        "ours_vs_ref": err,
        "ok": err <= RTOL_SQUARES,
    }


def stream_case(device):
    """CUDA only: the same accumulate on a side stream (stream= its handle) and on the default one."""
    shapes = parity_sizes(7, device, True, 3)
    st = make_state(shapes, torch.bfloat16, device, seed=5)
    a, b = clone_state(st), clone_state(st)
    run_ours("accumulate", a)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_ours("accumulate", b, stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.current_stream().wait_stream(side)
    ok = all(torch.equal(x, y) for x, y in zip(a["acc"], b["acc"]))
    return {"op": "accumulate on a side stream", "grad": "bf16", "tensors": len(shapes), "ok": ok}


def run_parity(device, quick):
    counts = [1, 7, 40] if quick else [1, 7, 200]
    results = []
    for op in OPS:
        for grad_name in GRAD_DTYPES:
            for i, count in enumerate(counts):
                results.append(parity_case(op, parity_sizes(count, device, quick, seed=i), grad_name, device))
    for grad_name in GRAD_DTYPES:
        results.append(squares_case(parity_sizes(counts[-1], device, quick, seed=9), grad_name, device))
    if device == "cuda":
        results.append(stream_case(device))
    return results


# ---------------------------------------------------------------- memcheck


def run_memcheck(device, timeout):
    tool = shutil.which("compute-sanitizer")
    if device != "cuda":
        return {"ran": False, "why": "not on a GPU"}
    if tool is None:
        return {"ran": False, "why": "compute-sanitizer is not on PATH"}
    cmd = [
        tool,
        "--tool",
        "memcheck",
        "--error-exitcode",
        "99",
        sys.executable,
        "-m",
        "benchmarks.gpu.check",
        "--memcheck-case",
    ]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ran": True, "ok": False, "why": f"timed out after {timeout} s"}
    out = proc.stdout + proc.stderr
    summary = [line for line in out.splitlines() if "ERROR SUMMARY" in line]
    ok = proc.returncode == 0 and bool(summary) and summary[-1].split("ERROR SUMMARY:")[1].strip().startswith("0 ")
    return {
        "ran": True,
        "ok": ok,
        "returncode": proc.returncode,
        "summary": summary[-1] if summary else None,
        "seconds": round(time.time() - t0, 1),
        "tail": out[-3000:] if not ok else "",
    }


def memcheck_case():
    """Small odd cases of every op, one misaligned (a view one element in), under memcheck."""
    device = "cuda"
    for op in OPS:
        for grad_name in GRAD_DTYPES:
            st = make_state([(n,) for n in (1, 3, 5, 4097, 65537)], GRAD_DTYPES[grad_name], device, seed=1)
            run_ours(op, st)
    base = torch.zeros(4098, device=device)
    kernels.accumulate([base[1:]], [torch.ones(4097, device=device, dtype=torch.float16)], 1.0)
    kernels.sum_of_squares([base, torch.ones(70_001, device=device, dtype=torch.bfloat16)])
    torch.cuda.synchronize()
    print("memcheck case done")


# ---------------------------------------------------------------- bandwidth


class Timer:
    def __init__(self, device):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def median_seconds(self, fn, repeats, warmup=3, min_sample_s=2e-3):
        """Median seconds per call: `warmup` calls, then `repeats` samples of `inner` back-to-back
        calls each (inner chosen so that a sample lasts >= min_sample_s)."""
        for _ in range(warmup):
            fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        one = max(time.perf_counter() - t0, 1e-7)
        inner = max(1, min(100, int(min_sample_s / one)))
        samples = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples.append((time.perf_counter() - t0) / inner)
        return statistics.median(samples)


def copy_bandwidth(device, nbytes, timer, repeats):
    """Device-to-device copy: bytes read + written per second (torch copy_ = cudaMemcpyAsync D2D)."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * n * 4 / timer.median_seconds(lambda: dst.copy_(src), repeats)  # freed on return


def bandwidth_entry(set_name, shapes, op, grad_name, device, timer, repeats, copy_bps):
    elements = sum(numel(s) for s in shapes)
    gbytes = GRAD_DTYPES[grad_name].itemsize
    nbytes = elements * (BYTES[op] + gbytes)

    def measure(make):  # a fresh state per implementation, freed on return (the 1-billion set)
        st = make_state(shapes, GRAD_DTYPES[grad_name], device, seed=11)
        return timer.median_seconds(make(st), repeats)

    ours_s = measure(lambda st: lambda: run_ours(op, st))
    variants = {}
    for name, make in torch_variants(op, device):
        try:
            variants[name] = measure(make)
        except Exception as e:  # a variant this PyTorch/device lacks
            variants[name] = None
            print(f"  ({name} unavailable: {str(e).splitlines()[0]})")
        if device == "cuda":
            torch.cuda.empty_cache()
    timed = {k: v for k, v in variants.items() if v}
    best = min(timed, key=timed.get) if timed else None
    return {
        "set": set_name,
        "op": op,
        "grad": grad_name,
        "tensors": len(shapes),
        "elements": elements,
        "bytes": nbytes,
        "ours_s": ours_s,
        "ours_GBps": nbytes / ours_s / 1e9,
        "fraction_of_copy": nbytes / ours_s / copy_bps,
        "torch_s": variants,
        "torch_best": best,
        "speedup_vs_torch_best": (timed[best] / ours_s) if best else None,
    }


def run_bandwidth(device, quick, repeats):
    timer = Timer(device)
    if device == "cuda":
        sets = [
            ("resnet50_cifar", [s for _, s in RESNET50_CIFAR_SHAPES], ("fp32", "bf16")),
            ("gpt2_small", [s for _, s in gpt_shapes()], ("fp32", "bf16")),
            ("1b", [(125_000_000,)] * 8, ("fp32",)),
        ]
        copy_bytes = 2 << 30
    elif quick:
        sets = [("resnet50_cifar[:40]", [s for _, s in RESNET50_CIFAR_SHAPES[:40]], ("fp32",))]
        copy_bytes = 32 << 20
    else:
        sets = [("resnet50_cifar", [s for _, s in RESNET50_CIFAR_SHAPES], ("fp32", "bf16"))]
        copy_bytes = 256 << 20
    copy_bps = copy_bandwidth(device, copy_bytes, timer, repeats)
    entries = []
    for set_name, shapes, grads in sets:
        for op in OPS:
            for grad_name in grads:
                e = bandwidth_entry(set_name, shapes, op, grad_name, device, timer, repeats, copy_bps)
                entries.append(e)
                vs = f"{e['speedup_vs_torch_best']:.2f}x {e['torch_best']}" if e["torch_best"] else ""
                print(
                    f"  {set_name:20s} {op:10s} {grad_name}: {e['ours_GBps']:8.1f} GB/s "
                    f"({100 * e['fraction_of_copy']:.0f} % of copy), {vs}",
                    flush=True,
                )
        if device == "cuda":
            torch.cuda.empty_cache()
    return copy_bps, entries


# ---------------------------------------------------------------- report


def environment(device):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "build_info": dict(_C.build_info()),
        "device": device,
        "host": platform.node(),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(
            gpu=p.name,
            gpu_memory_GiB=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            torch_cuda=torch.version.cuda,
        )
    else:
        env.update(cpu=platform.processor() or platform.machine(), threads=_C.num_threads())
    return env


def print_parity(results):
    print(f"{'op':28s} {'grad':5s} {'tensors':>7s} {'ours vs f64':>12s} {'ours vs torch':>14s}  ok")
    for r in results:
        vs_torch = max((v["ours_vs_torch"] for v in r.get("torch", {}).values() if "error" not in v), default=None)
        print(
            f"{r['op']:28s} {r['grad']:5s} {r['tensors']:7d} {r.get('ours_vs_ref', 0.0):12.2e} "
            f"{'' if vs_torch is None else f'{vs_torch:.2e}':>14s}  {'ok' if r['ok'] else 'FAIL'}"
        )


def readme_rows(device, env, copy_bps, entries):
    where = env.get("gpu", env.get("cpu", device))
    rows = [
        f"Measured by `python -m benchmarks.gpu.check` on {where} (torch {env['torch']}); device-to-device copy "
        f"{copy_bps / 1e9:.0f} GB/s (read + write).",
        "",
        "| set | op | grad | tensors | ours GB/s | % of copy | vs PyTorch's best sequence |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    names = {"accumulate": "accumulate", "momentum": "momentum window end", "adamw": "AdamW window end"}
    for e in entries:
        vs = f"{e['speedup_vs_torch_best']:.2f}x ({e['torch_best']})" if e["torch_best"] else "n/a"
        rows.append(
            f"| {e['set']} | {names[e['op']]} | {e['grad']} | {e['tensors']} | {e['ours_GBps']:.0f} | "
            f"{100 * e['fraction_of_copy']:.0f} % | {vs} |"
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="cuda (default when PyTorch sees a GPU) or cpu (PyTorch CPU tensors: the CI run)",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds): parity and the code path")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per measurement (median)")
    ap.add_argument("--json", default=None, help="where to write the results (default: a file in the temp dir)")
    ap.add_argument("--no-bandwidth", action="store_true")
    ap.add_argument("--no-memcheck", action="store_true")
    ap.add_argument("--memcheck-timeout", type=int, default=180, help="seconds (default 180)")
    ap.add_argument("--memcheck-case", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memcheck_case:
        memcheck_case()
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda: PyTorch sees no GPU", file=sys.stderr)
            return 2
        if not _C.build_info()["cuda"]:
            print(
                "mindspore_accum was built without CUDA: run benchmarks/gpu/check.sh (builds with nvcc)",
                file=sys.stderr,
            )
            return 2
    repeats = args.repeats or (2 if args.quick else (10 if device == "cuda" else 5))
    t_start = time.time()
    env = environment(device)
    print(
        f"== mindspore_accum GPU check on {device}: {env.get('gpu', env.get('cpu'))}, torch {env['torch']}, "
        f"build {env['build_info']}"
    )

    print("== parity (normwise relative error per tensor; <= 1e-6, sum_of_squares <= 257 ulp)")
    parity = run_parity(device, args.quick)
    print_parity(parity)
    parity_ok = all(r["ok"] for r in parity)

    copy_bps, entries = None, []
    if not args.no_bandwidth:
        print(f"== bandwidth (median of {repeats})")
        copy_bps, entries = run_bandwidth(device, args.quick, repeats)
        print(f"device-to-device copy: {copy_bps / 1e9:.1f} GB/s")
        rows = readme_rows(device, env, copy_bps, entries)
        print("== README rows")
        print("\n".join(rows))
        for e in entries:
            e["meets_copy_target"] = e["fraction_of_copy"] >= TARGET_COPY_FRACTION
            if e["op"] in TARGET_SPEEDUP and e["speedup_vs_torch_best"] is not None:
                e["meets_speedup_target"] = e["speedup_vs_torch_best"] >= TARGET_SPEEDUP[e["op"]]

    # Last: under compute-sanitizer PyTorch's start-up alone can take minutes.
    memcheck = (
        {"ran": False, "why": "--no-memcheck"} if args.no_memcheck else run_memcheck(device, args.memcheck_timeout)
    )
    print(f"== memcheck: {memcheck}")

    ok = parity_ok and memcheck.get("ok", True)
    report = {
        "ok": ok,
        "parity_ok": parity_ok,
        "environment": env,
        "parity": parity,
        "memcheck": memcheck,
        "copy_bandwidth_Bps": copy_bps,
        "bandwidth": entries,
        "quick": args.quick,
        "repeats": repeats,
        "elapsed_s": round(time.time() - t_start, 1),
    }
    path = args.json or os.path.join(tempfile.gettempdir(), f"msaccum_gpu_check_{device}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"== {'PASS' if ok else 'FAIL'} in {report['elapsed_s']} s; results in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
