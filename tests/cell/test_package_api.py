"""The package's NumPy-level surface: the *_update kernels and their deprecated *_flush aliases
(a warning naming the new name, the same result), and the names that raise ImportError on a
broken build (the compiled extension cannot be imported; simulated in a subprocess)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore_accum
from mindspore_accum import kernels

BROKEN_BUILD_NAMES = (
    "_C",
    "accumulate",
    "momentum_update",
    "adamw_update",
    "sum_of_squares",
    "build_info",
    "momentum_flush",
    "adamw_flush",
)


def momentum_reference(param, moment, acc, grad, *, lr, momentum, grad_scale, weight_decay, nesterov):
    """One tensor of momentum_update in float32 NumPy (accum_math.h momentum_value)."""
    g = ((acc + grad) * np.float32(grad_scale) + np.float32(weight_decay) * param).astype(np.float32)
    v = (np.float32(momentum) * moment + g).astype(np.float32)
    step = g + np.float32(momentum) * v if nesterov else v
    return (param - np.float32(lr) * step).astype(np.float32), v, np.zeros_like(acc)


def adamw_reference(param, m, v, acc, grad, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    """One tensor of adamw_update with bias correction, float64 NumPy."""
    g = (acc.astype(np.float64) + grad) * grad_scale
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    u = (m / (1 - beta1**step)) / (np.sqrt(v) / np.sqrt(1 - beta2**step) + eps)
    return param - lr * weight_decay * param - lr * u, m, v, np.zeros_like(acc)


def state(seed, n=3):
    rng = np.random.default_rng(seed)
    shapes = [(17,), (4, 5), (2, 3, 4)][:n]
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(5)]


MOMENTUM_KW = dict(lr=0.1, momentum=0.9, grad_scale=0.25, weight_decay=1e-2, nesterov=True)
ADAMW_KW = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.01, step=3, grad_scale=0.5)


def run_momentum(function):
    param, moment, acc, grad, _ = state(0)
    function(param, moment, acc, grad, **MOMENTUM_KW)
    return param + moment + acc


def run_adamw(function):
    param, m, v, acc, grad = state(1)
    v = [np.abs(x) for x in v]
    function(param, m, v, acc, grad, bias_correction=True, **ADAMW_KW)
    return param + m + v + acc


def test_momentum_update_matches_numpy():
    param, moment, acc, grad, _ = state(0)
    expected = [momentum_reference(*t, **MOMENTUM_KW) for t in zip(param, moment, acc, grad)]
    kernels.momentum_update(param, moment, acc, grad, **MOMENTUM_KW)
    for got, want in zip(zip(param, moment, acc), expected):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_adamw_update_matches_numpy():
    param, m, v, acc, grad = state(1)
    v = [np.abs(x) for x in v]
    expected = [adamw_reference(*t, **ADAMW_KW) for t in zip(param, m, v, acc, grad)]
    kernels.adamw_update(param, m, v, acc, grad, bias_correction=True, **ADAMW_KW)
    for got, want in zip(zip(param, m, v, acc), expected):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "old, new, run", [("momentum_flush", "momentum_update", run_momentum), ("adamw_flush", "adamw_update", run_adamw)]
)
def test_deprecated_flush_alias_warns_and_matches_update(old, new, run):
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*use {new}"):
        got = run(getattr(kernels, old))
    want = run(getattr(kernels, new))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # the same kernel: bit-identical
    # the package-level names are the kernels module's
    assert getattr(mindspore_accum, old) is getattr(kernels, old)
    assert getattr(mindspore_accum, new) is getattr(kernels, new)
    assert old in mindspore_accum.__all__ and new in mindspore_accum.__all__
    # the extension keeps the old names one release too, as the same functions
    assert getattr(mindspore_accum._C, old) is getattr(mindspore_accum._C, new)


def test_new_names_do_not_warn(recwarn):
    run_momentum(kernels.momentum_update)
    run_adamw(kernels.adamw_update)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_broken_build_every_kernel_name_raises_import_error():
    """With the extension unimportable the package imports, and each kernel name (the deprecated
    aliases too) raises the extension's ImportError, not AttributeError."""
    code = (
        "import sys\n"
        "sys.modules['mindspore_accum._C'] = None  # import of _C raises ImportError\n"
        "import mindspore_accum\n"
        f"for name in {BROKEN_BUILD_NAMES!r}:\n"
        "    try:\n"
        "        getattr(mindspore_accum, name)\n"
        "    except ImportError:\n"
        "        print('ImportError', name)\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, name)\n"
        "    else:\n"
        "        print('no error', name)\n"
        "print('version', mindspore_accum.__version__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSACCUM_")}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:-1] == [f"ImportError {name}" for name in BROKEN_BUILD_NAMES]
    assert lines[-1].startswith("version ") and lines[-1] != "version unknown"


def test_fused_optimizer_specs_match_both_backends_tables():
    """Each fused optimizer's declared layout is the one its AOT entry reads and its native
    function unpacks; a layout in another order is refused before any operator is made."""
    from mindspore_accum.backends import kernel, native
    from mindspore_accum.optim import FusedAdamW, FusedMomentum

    for cls in (FusedMomentum, FusedAdamW):
        spec = cls.spec
        found = kernel.entry(spec.update, ("lr",) + spec.hyper, tensors=len(spec.states) + 2)
        assert found.per_tensor == ("weight_decay",) and found.outputs == "placeholder"
        assert native.update(spec.update, spec.hyper, len(spec.states)) is native.UPDATES[spec.update].fn
    with pytest.raises(ValueError, match="hyper-parameters"):
        kernel.entry("momentum_update", ("lr", "momentum", "nesterov", "grad_scale"))
    with pytest.raises(ValueError, match="tensor lists"):
        kernel.entry("adamw_update", kernel.ENTRIES["adamw_update"].hyper, tensors=3)
    with pytest.raises(ValueError, match="unpacks"):
        native.update(
            "adamw_update", ("beta2", "beta1", "eps", "grad_scale", "bias_correction1", "bias_correction2"), 2
        )


def test_the_0_2_1_backend_module_still_imports_with_a_warning():
    # 0.2.1's public module name stays one release, as the same functions as mindspore_accum.backends
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from mindspore_accum import backend, backends\n"
        "assert backend.choose_backend is backends.choose_backend, 'not the same function'\n"
        "assert backend.BACKENDS == ('auto', 'kernels', 'native')\n"
        "assert any(issubclass(w.category, DeprecationWarning) and 'mindspore_accum.backends' in str(w.message)\n"
        "           for w in caught), [str(w.message) for w in caught]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
