"""The AdamW window-end workload shared by bench_kernels.py (ours, MindSpore) and
bench_adamw_torch.py (PyTorch, in its own process): initial state, hyper-parameters and the
float64 reference every implementation is checked against. NumPy only (no MindSpore, no torch).

One window end, per element:
    g = (acc + grad) * grad_scale
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
    u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)        bc = 1 - beta**step, or 1 without correction
    param = param - lr * wd * param - lr * u;  acc = 0
It reads param, m, v, acc, grad and writes param, m, v, acc: 36 B/element in float32.
"""

from __future__ import annotations

import numpy as np

ADAMW_BYTES = 36
LR = 1e-4  # small, so that repeated runs keep every value finite and normal
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-8
WEIGHT_DECAY = 1e-2
GRAD_SCALE = 0.25  # 1 / (k * loss_scale), k = 4 micro-batches
STEP = 10


def adamw_init(shapes, seed=1) -> dict[str, list[np.ndarray]]:
    """param, exp_avg, exp_avg_sq (non-negative), acc, grad: float32, one array per (name, shape)."""
    rng = np.random.default_rng(seed)

    def lst(std, square=False):
        out = []
        for _, s in shapes:
            a = (rng.standard_normal(s, dtype=np.float32) * std).astype(np.float32)
            out.append(np.square(a) + np.float32(1e-6) if square else a)
        return out

    return {
        "param": lst(0.05),
        "exp_avg": lst(0.01),
        "exp_avg_sq": lst(0.01, square=True),
        "acc": lst(0.1),
        "grad": lst(1.0),
    }


def adamw_weight_decays(shapes) -> list[float]:
    # nn.AdamWeightDecay's default filter: no decay for names containing beta/gamma.
    return [0.0 if ("gamma" in n or "beta" in n) else WEIGHT_DECAY for n, _ in shapes]


def adamw_reference(init, wds, bias_correction: bool, step: int = STEP, float32_hyper: bool = True):
    """One window end in float64. float32_hyper: from float32-rounded hyper-parameters (our
    kernels' contract; 1 - beta2 then differs by 1.3e-5 relative from the double value); False:
    from the double values (PyTorch's fused kernel computes with double hyper-parameters)."""
    f = (lambda x: float(np.float32(x))) if float32_hyper else float  # noqa: E731
    lr, b1, b2, eps, gs = f(LR), f(BETA1), f(BETA2), f(EPS), f(GRAD_SCALE)
    bc1 = f(1.0 - BETA1**step) if bias_correction else 1.0
    bc2 = f(1.0 - BETA2**step) if bias_correction else 1.0
    out = {"param": [], "exp_avg": [], "exp_avg_sq": []}
    for p, m, v, a, g, wd in zip(init["param"], init["exp_avg"], init["exp_avg_sq"], init["acc"], init["grad"], wds):
        p, m, v, a, g = (x.astype(np.float64) for x in (p, m, v, a, g))
        gg = (a + g) * gs
        m = b1 * m + (1 - b1) * gg
        v = b2 * v + (1 - b2) * gg * gg
        u = (m / bc1) / (np.sqrt(v) / np.sqrt(bc2) + eps)
        out["param"].append(p - lr * f(wd) * p - lr * u)
        out["exp_avg"].append(m)
        out["exp_avg_sq"].append(v)
    return out


def max_rel_err(got, want) -> float:
    """max |got - want| / max(|want|, 1e-3) over all elements (as bench_kernels.max_rel_err)."""
    worst = 0.0
    for x, y in zip(got, want):
        if x.size == 0:
            continue
        denom = np.maximum(np.abs(y), 1e-3)
        worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - y) / denom)))
    return worst
