"""The kernels on any array library through DLPack (csrc/frontends/python_bindings.cpp, place()).

PyTorch CPU tensors and NumPy arrays run in place on their own storage; every malformed input
is refused before anything is written, naming the tensor. Inputs that PyTorch cannot produce
(a CUDA tensor on a machine without a GPU, DLPack's read-only and is-copied flags, a misaligned
byte_offset, another DLPack major version, a legacy capsule) come from `FakeDLPack`, a DLPack
exporter written here with ctypes over a NumPy array, which also counts deleter calls: every
exported capsule must be released exactly once, whether the call succeeds or is refused.

PyTorch is a test requirement: with MSACCUM_REQUIRE_TORCH set (CI) a missing torch fails the
module instead of skipping it.
"""

import ctypes
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mindspore_accum import _C, kernels

if os.environ.get("MSACCUM_REQUIRE_TORCH"):
    import torch
else:
    torch = pytest.importorskip("torch")

KDLCPU, KDLCUDA, KDLROCM = 1, 2, 10
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RTOL = 1e-6  # normwise, as the other kernel tests: max|out - ref| <= RTOL * max(max|ref|, 1)


# ---------------------------------------------------------------- a DLPack exporter in ctypes


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", DELETER),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


PyCapsule_New = ctypes.pythonapi.PyCapsule_New
PyCapsule_New.restype = ctypes.py_object
PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
VERSIONED_NAME, LEGACY_NAME = b"dltensor_versioned", b"dltensor"
READ_ONLY, IS_COPIED = 1, 2
DTYPE_CODES = {"float32": (2, 32), "float16": (2, 16), "bfloat16": (4, 16), "float64": (2, 64), "int32": (0, 32)}


class FakeDLPack:
    """Exports `array`'s memory through DLPack as whatever the test says: a device, flags, a
    byte_offset (added to the data pointer's distance from the array start), strides, a version,
    a legacy capsule (and then no max_version keyword, as NumPy 1.x), and `tamper(DLTensor)` to
    break it further. Records every `stream` it
    is given and counts deleter calls. The memory stays the NumPy array's, so the test can check
    that nothing was written."""

    def __init__(
        self,
        array,
        *,
        device=(KDLCPU, 0),
        flags=0,
        byte_offset=0,
        strides=None,
        version=(1, 0),
        legacy=False,
        dtype=None,
        shape=None,
        tamper=None,
    ):
        self.array = array
        self.device, self.flags, self.byte_offset, self.strides = device, flags, byte_offset, strides
        self.version, self.legacy, self.tamper = version, legacy, tamper
        self.dtype = dtype or str(array.dtype)
        self.shape = tuple(array.shape) if shape is None else tuple(shape)
        self.streams, self.deleted, self.exported = [], 0, 0
        self._keep = []
        self._deleter = DELETER(self._delete)

    def _delete(self, _ptr):
        self.deleted += 1

    def __dlpack_device__(self):
        return self.device

    def _export(self, stream):
        self.streams.append(stream)
        self.exported += 1
        shape = (ctypes.c_int64 * max(len(self.shape), 1))(*self.shape)
        strides = None if self.strides is None else (ctypes.c_int64 * len(self.strides))(*self.strides)
        code, bits = DTYPE_CODES[self.dtype]
        base = self.array.ctypes.data
        tensor = DLTensor(
            ctypes.c_void_p(base - self.byte_offset if self.byte_offset else base),
            DLDevice(*self.device),
            len(self.shape),
            DLDataType(code, bits, 1),
            shape,
            strides,
            self.byte_offset,
        )
        if self.tamper:
            self.tamper(tensor)
        if self.legacy:
            managed = DLManagedTensor(tensor, None, self._deleter)
        else:
            managed = DLManagedTensorVersioned(
                self.version[0], self.version[1], None, self._deleter, self.flags, tensor
            )
        self._keep += [shape, strides, managed]
        return PyCapsule_New(ctypes.addressof(managed), LEGACY_NAME if self.legacy else VERSIONED_NAME, None)

    def __dlpack__(self, *, stream=None, max_version=None, copy=None):
        if self.legacy and (max_version is not None or copy is not None):
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        return self._export(stream)


def fake_bf16(values):
    """bfloat16 bits (uint16, round to nearest even) of float32 values, for FakeDLPack(dtype='bfloat16')."""
    u = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


# ---------------------------------------------------------------- references (float64)


def widen(t):
    return t.detach().to(torch.float64).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float64)


def f32(x):
    return float(np.float32(x))


def ref_momentum(p, m, summed, *, lr, momentum, grad_scale, wd, nesterov):
    lr, momentum, grad_scale, wd = f32(lr), f32(momentum), f32(grad_scale), f32(wd)
    g = summed * grad_scale + wd * p
    v = momentum * m + g
    return (p - lr * (g + momentum * v) if nesterov else p - lr * v), v


def ref_adamw(p, m, v, summed, *, lr, beta1, beta2, eps, wd, step, grad_scale):
    bc1, bc2 = f32(1.0 - beta1**step), f32(1.0 - beta2**step)
    lr, b1, b2, eps, wd, gs = (f32(x) for x in (lr, beta1, beta2, eps, wd, grad_scale))
    g = summed * gs
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    return p - lr * wd * p - lr * (m / bc1) / (np.sqrt(v) / np.sqrt(bc2) + eps), m, v


def assert_close(actual, expected, what):
    actual = widen(actual)
    if actual.size == 0:
        return
    scale = max(float(np.max(np.abs(expected))), 1.0)
    err = float(np.max(np.abs(actual - expected)))
    assert err <= RTOL * scale, f"{what}: max abs error {err:.3g} > {RTOL:g} * {scale:.3g}"


def randn(gen, shape, dtype="float32", scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(TORCH_DTYPES[dtype])


# ---------------------------------------------------------------- in place, all dtypes


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_cpu_in_place_all_ops(dtype):
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 5), (1,), (0,), (1001,), (2, 3, 4)]
    acc = [randn(gen, s) for s in shapes]
    grad = [randn(gen, s, dtype) for s in shapes]
    ptrs = [t.data_ptr() for t in acc]
    acc0, grad0 = [widen(t) for t in acc], [t.clone() for t in grad]
    kernels.accumulate(acc, grad, 0.5)
    assert [t.data_ptr() for t in acc] == ptrs
    for i, (a, a0, g) in enumerate(zip(acc, acc0, grad)):
        assert_close(a, a0 + f32(0.5) * widen(g), f"acc[{i}]")
        assert torch.equal(g, grad0[i]), "a gradient was written"

    kernels.accumulate(acc, grad, 2.0, overwrite=True)
    for i, (a, g) in enumerate(zip(acc, grad)):
        assert_close(a, 2.0 * widen(g), f"overwrite acc[{i}]")

    param, moment = [randn(gen, s) for s in shapes], [randn(gen, s, scale=0.1) for s in shapes]
    ptrs = [t.data_ptr() for t in param + moment + acc]
    before = [widen(t) for t in param + moment + acc]
    kernels.momentum_update(
        param, moment, acc, grad, lr=0.1, momentum=0.9, grad_scale=0.5, weight_decay=1e-2, nesterov=True
    )
    assert [t.data_ptr() for t in param + moment + acc] == ptrs
    n = len(shapes)
    for i in range(n):
        p_ref, v_ref = ref_momentum(
            before[i],
            before[n + i],
            before[2 * n + i] + widen(grad[i]),
            lr=0.1,
            momentum=0.9,
            grad_scale=0.5,
            wd=1e-2,
            nesterov=True,
        )
        assert_close(param[i], p_ref, f"param[{i}]")
        assert_close(moment[i], v_ref, f"moment[{i}]")
        assert not torch.any(acc[i]), "acc was not zeroed"

    exp_avg = [randn(gen, s, scale=0.1) for s in shapes]
    exp_avg_sq = [randn(gen, s, scale=0.1) ** 2 + 0.01 for s in shapes]
    kernels.accumulate(acc, grad, 1.0)
    before = [widen(t) for t in param + exp_avg + exp_avg_sq + acc]
    kernels.adamw_update(
        param,
        exp_avg,
        exp_avg_sq,
        acc,
        grad,
        lr=1e-2,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=[0.01 * i for i in range(n)],
        step=3,
        grad_scale=0.5,
        bias_correction=True,
    )
    for i in range(n):
        p_ref, m_ref, v_ref = ref_adamw(
            before[i],
            before[n + i],
            before[2 * n + i],
            before[3 * n + i] + widen(grad[i]),
            lr=1e-2,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            wd=0.01 * i,
            step=3,
            grad_scale=0.5,
        )
        assert_close(param[i], p_ref, f"adamw param[{i}]")
        assert_close(exp_avg[i], m_ref, f"exp_avg[{i}]")
        assert_close(exp_avg_sq[i], v_ref, f"exp_avg_sq[{i}]")

    exact = sum(float(np.sum(widen(g) ** 2)) for g in grad)
    assert abs(kernels.sum_of_squares(grad) - exact) <= 1e-6 * exact


def test_dlpack_and_numpy_paths_are_bit_identical():
    """The same kernels whichever way the memory arrives: torch tensors, NumPy arrays, a mix."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(7,), (33, 3), (4097,)]
    p_t, m_t = [randn(gen, s) for s in shapes], [randn(gen, s) for s in shapes]
    g_t = [randn(gen, s, "float16") for s in shapes]
    p_n, m_n = [t.numpy().copy() for t in p_t], [t.numpy().copy() for t in m_t]
    g_n = [t.numpy().copy() for t in g_t]
    kernels.momentum_update(p_t, m_t, None, g_t, lr=0.1, momentum=0.9, grad_scale=1.0)
    kernels.momentum_update(p_n, m_n, None, g_n, lr=0.1, momentum=0.9, grad_scale=1.0)
    for a, b in zip(p_t + m_t, p_n + m_n):
        assert np.array_equal(a.numpy(), b)
    mixed_acc = [np.zeros(s, np.float32) for s in shapes]
    kernels.accumulate(mixed_acc, g_t, 1.0)  # NumPy accumulators, torch gradients: one CPU call
    for a, g in zip(mixed_acc, g_n):
        assert np.array_equal(a, g.astype(np.float32))


def test_numpy_through_dlpack_wrapper_and_legacy_capsule():
    """NumPy 1.x exports legacy capsules and takes no max_version: the fallback path."""
    acc = np.zeros(10, np.float32)
    grad = np.arange(10, dtype=np.float32)
    wrapped = FakeDLPack(acc, legacy=True)
    kernels.accumulate([wrapped], [FakeDLPack(grad, legacy=True)], 3.0)
    assert np.array_equal(acc, 3.0 * grad) and wrapped.deleted == wrapped.exported == 1

    # NumPy's own __dlpack__, through an object that is not an ndarray
    class Exporter:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    kernels.accumulate([Exporter(acc)], [Exporter(grad)], 1.0)
    assert np.array_equal(acc, 4.0 * grad)


def test_bfloat16_and_float16_from_fake_exporter():
    acc = np.zeros(9, np.float32)
    vals = np.linspace(-3, 3, 9).astype(np.float32)
    kernels.accumulate([FakeDLPack(acc)], [FakeDLPack(fake_bf16(vals), dtype="bfloat16")], 1.0)
    assert np.array_equal(acc, (fake_bf16(vals).astype(np.uint32) << 16).view(np.float32))
    kernels.accumulate([FakeDLPack(acc)], [FakeDLPack(vals.astype(np.float16))], 1.0, overwrite=True)
    assert np.array_equal(acc, vals.astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------- refused before any write


def snapshot(*lists):
    return [
        t.clone() if isinstance(t, torch.Tensor) else np.array(getattr(t, "array", t), copy=True)
        for lst in lists
        for t in lst
    ]


def assert_unchanged(before, *lists):
    after = [t for lst in lists for t in lst]
    for b, a in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), "a tensor was written before the refusal"
        else:
            assert np.array_equal(getattr(a, "array", a), b), "an array was written before the refusal"


def torch_lists(n=3, grad_dtype=torch.float32):
    acc = [torch.randn(5 + i) for i in range(n)]
    grad = [torch.randn(5 + i).to(grad_dtype) for i in range(n)]
    return acc, grad


def refused(exc, match, call, *lists):
    before = snapshot(*lists)
    with pytest.raises(exc, match=match):
        call()
    assert_unchanged(before, *lists)


def test_refuses_non_contiguous():
    acc, grad = torch_lists()
    grad[1] = torch.randn(2 * 6)[::2]  # strides (2,)
    refused(ValueError, r"grad\[1\] must be C-contiguous", lambda: kernels.accumulate(acc, grad, 1.0), acc, grad)
    acc[2] = torch.randn(7, 1).t()  # shape (1, 7), strides (1, 1): compact where it matters
    grad[1] = torch.randn(6)
    grad[2] = torch.randn(1, 7)
    kernels.accumulate(acc, grad, 1.0)  # accepted: a dimension of 1 has no stride to check
    acc[0] = torch.randn(5, 5).t()
    grad[0] = torch.randn(5, 5)
    refused(
        ValueError,
        r"acc\[0\] must be C-contiguous.*strides \(1, 5\)",
        lambda: kernels.accumulate(acc, grad, 1.0),
        acc,
        grad,
    )


def test_refuses_requires_grad_with_a_clear_message():
    param = [torch.randn(4), torch.randn(4, requires_grad=True)]
    moment, grad = [torch.zeros(4), torch.zeros(4)], [torch.ones(4), torch.ones(4)]
    refused(
        ValueError,
        r"param\[1\] could not be exported through DLPack.*gradient.*detach\(\)",
        lambda: kernels.momentum_update(param, moment, None, grad, lr=0.1, momentum=0.9, grad_scale=1.0),
        moment,
        grad,
        [param[0]],
    )
    with torch.no_grad():
        before = param[1].clone()
        kernels.momentum_update([p.detach() for p in param], moment, None, grad, lr=0.1, momentum=0.9, grad_scale=1.0)
    assert not torch.equal(param[1], before), "detach() shares the storage: updated in place"


@pytest.mark.parametrize(
    "where,dtype,match",
    [
        ("grad", torch.float64, r"grad\[2\] has dtype float64; gradients must be float32, float16 or bfloat16"),
        ("grad", torch.int32, r"grad\[2\] has dtype int32"),
        ("acc", torch.float16, r"acc\[2\] has dtype float16; it must be float32"),
        ("acc", torch.bfloat16, r"acc\[2\] has dtype bfloat16; it must be float32"),
    ],
)
def test_refuses_dtypes(where, dtype, match):
    acc, grad = torch_lists()
    target = acc if where == "acc" else grad
    target[2] = target[2].to(dtype)
    refused(TypeError, match, lambda: kernels.accumulate(acc, grad, 1.0), acc, grad)


def test_refuses_overlap_and_shape_mismatch():
    storage = torch.zeros(20)
    acc = [storage[0:8], storage[6:14]]
    grad = [torch.ones(8), torch.ones(8)]
    refused(
        ValueError, r"acc\[\d\] shares memory with acc\[\d\]", lambda: kernels.accumulate(acc, grad, 1.0), [storage]
    )
    acc = [storage[0:8]]
    refused(
        ValueError,
        r"grad\[0\] shares memory with acc\[0\]",
        lambda: kernels.accumulate(acc, [storage[4:12]], 1.0),
        [storage],
    )
    refused(
        ValueError,
        r"grad\[0\] has shape \(2, 4\) but acc\[0\] has shape \(8,\)",
        lambda: kernels.accumulate(acc, [torch.ones(2, 4)], 1.0),
        [storage],
    )


def test_refuses_mixed_devices_before_any_export_or_write():
    acc, grad = torch_lists()
    fake = FakeDLPack(np.zeros(7, np.float32), device=(KDLCUDA, 0))
    grad[2] = fake
    refused(
        ValueError,
        r"grad\[2\] is on cuda:0 but acc\[0\] is on cpu; all tensors of one call must be on one",
        lambda: kernels.accumulate(acc, grad, 1.0),
        acc,
        grad[:2],
    )
    assert fake.exported == 0
    acc2 = [
        FakeDLPack(np.zeros(4, np.float32), device=(KDLCUDA, 0)),
        FakeDLPack(np.zeros(4, np.float32), device=(KDLCUDA, 1)),
    ]
    grad2 = [FakeDLPack(np.ones(4, np.float32), device=(KDLCUDA, 0)) for _ in range(2)]
    refused(
        ValueError,
        r"acc\[1\] is on cuda:1 but acc\[0\] is on cuda:0",
        lambda: kernels.accumulate(acc2, grad2, 1.0),
        acc2,
    )
    rocm = [FakeDLPack(np.zeros(4, np.float32), device=(KDLROCM, 0))]
    refused(
        ValueError,
        r"acc\[0\] is on rocm:0; mindspore_accum runs on CPU \(kDLCPU\) and CUDA",
        lambda: kernels.accumulate(rocm, [np.ones(4, np.float32)], 1.0),
        rocm,
    )
    mixed = [np.zeros(4, np.float32)]
    refused(
        ValueError,
        r"grad\[0\] is on cuda:0 but acc\[0\] is on cpu",
        lambda: kernels.accumulate(mixed, [FakeDLPack(np.ones(4, np.float32), device=(KDLCUDA, 0))], 1.0),
        mixed,
    )


@pytest.mark.parametrize(
    "case,match",
    [
        ("read_only", r"acc\[1\] is read-only \(its DLPack export is flagged read-only\)"),
        ("copied", r"acc\[1\] was copied by its exporter"),
        ("misaligned", r"acc\[1\] is not aligned to its element size \(DLPack data \+ byte_offset 2"),
        ("version", r"acc\[1\] was exported as DLPack 2\.0"),
        ("strides", r"acc\[1\] must be C-contiguous"),
        ("null", r"acc\[1\] has a null DLPack data pointer"),
        ("offset_overflow", r"acc\[1\] has a DLPack byte_offset .* overflows"),
    ],
)
def test_refuses_malformed_exports_and_releases_them(case, match):
    acc = [FakeDLPack(np.zeros(6, np.float32)) for _ in range(3)]
    grad = [FakeDLPack(np.ones(6, np.float32)) for _ in range(3)]
    kwargs = {
        "read_only": dict(flags=READ_ONLY),
        "copied": dict(flags=IS_COPIED),
        "misaligned": dict(tamper=lambda t: setattr(t, "byte_offset", 2)),
        "version": dict(version=(2, 0)),
        "strides": dict(strides=(2,), shape=(3,)),
        "null": dict(tamper=lambda t: setattr(t, "data", None)),
        "offset_overflow": dict(tamper=lambda t: setattr(t, "byte_offset", 2**64 - 4)),
    }[case]
    acc[1] = FakeDLPack(np.zeros(6, np.float32), **kwargs)
    if case == "strides":  # every other element of 6: shape (3,), strides (2,)
        grad[1] = FakeDLPack(np.ones(3, np.float32))
    before = snapshot([f.array for f in acc + grad])
    with pytest.raises(ValueError, match=match):
        kernels.accumulate(acc, grad, 1.0)
    assert_unchanged(before, [f.array for f in acc + grad])
    for f in acc + grad:
        assert f.deleted == f.exported, "an exported capsule was not released exactly once"


def test_byte_offset_is_honoured():
    store = np.zeros(10, np.float32)
    acc = FakeDLPack(store[2:], byte_offset=8)  # data = store, byte_offset 8: the tensor starts at store[2]
    kernels.accumulate([acc], [np.ones(8, np.float32)], 1.0)
    assert np.array_equal(store, [0, 0] + [1] * 8)


def test_read_only_and_copied_gradients_are_accepted():
    """Only written tensors must be writable and the exporter's own storage."""
    acc = [np.zeros(5, np.float32)]
    grad = FakeDLPack(np.arange(5, dtype=np.float32), flags=READ_ONLY | IS_COPIED)
    kernels.accumulate(acc, [grad], 2.0)
    assert np.array_equal(acc[0], 2.0 * np.arange(5, dtype=np.float32)) and grad.deleted == 1


def test_refuses_non_dlpack_objects_and_bad_capsules():
    with pytest.raises(TypeError, match=r"grad\[0\] must be a numpy.ndarray or an array with __dlpack__"):
        kernels.accumulate([np.zeros(3, np.float32)], [[1.0, 2.0, 3.0]], 1.0)

    class NotACapsule(FakeDLPack):
        def __dlpack__(self, **kw):
            return object()

    acc = [np.zeros(3, np.float32)]
    refused(
        TypeError,
        r"grad\[0\].__dlpack__\(\) returned object, not an unused DLPack capsule",
        lambda: kernels.accumulate(acc, [NotACapsule(np.ones(3, np.float32))], 1.0),
        acc,
    )


# ---------------------------------------------------------------- CUDA tensors and streams


def test_cuda_streams_reach_the_exporter_and_the_checks_come_first():
    """A (fake) CUDA call: the stream given to __dlpack__ is the one resolved from `stream`;
    malformed CUDA tensors are refused before any CUDA call, so this runs without a GPU."""

    def cuda(a, **kw):
        return FakeDLPack(a, device=(KDLCUDA, 0), **kw)

    store = np.zeros(8, np.float32)
    acc, grad = [cuda(store[:4])], [cuda(store[2:6])]  # overlapping: refused after export
    for stream, sent in [(None, 1), (2, 2), (12345, 12345)]:
        with pytest.raises(ValueError, match=r"grad\[0\] shares memory with acc\[0\]"):
            kernels.accumulate(acc, grad, 1.0, stream=stream)
        assert acc[0].streams[-1] == sent and grad[0].streams[-1] == sent

    class TorchLikeStream:
        cuda_stream = 777

    with pytest.raises(ValueError, match="shares memory"):
        kernels.accumulate(acc, grad, 1.0, stream=TorchLikeStream())
    assert acc[0].streams[-1] == 777
    with pytest.raises(ValueError, match="stream=0 is ambiguous"):
        kernels.accumulate(acc, grad, 1.0, stream=0)
    with pytest.raises(ValueError, match="stream must be >= 1"):
        kernels.accumulate(acc, grad, 1.0, stream=-1)
    with pytest.raises(TypeError, match="stream must be None, an int"):
        kernels.accumulate(acc, grad, 1.0, stream="default")
    assert not store.any()
    with pytest.raises(ValueError, match="stream is for CUDA tensors only"):
        kernels.accumulate([np.zeros(2, np.float32)], [torch.ones(2)], 1.0, stream=1)
    assert acc[0].deleted == acc[0].exported and grad[0].deleted == grad[0].exported


def test_cuda_tensor_without_a_usable_gpu_is_refused_before_any_write():
    """Only where no GPU is present: the fake CUDA tensor's memory is host memory."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the fake CUDA tensors would hand host pointers to the GPU")
    acc = [FakeDLPack(np.zeros(6, np.float32), device=(KDLCUDA, 0))]
    grad = [FakeDLPack(np.ones(6, np.float32), device=(KDLCUDA, 0))]
    if _C.build_info()["cuda"]:
        exc, match = RuntimeError, r"CUDA error in accumulate"
    else:
        exc, match = ValueError, r"acc\[0\] is a CUDA tensor but mindspore_accum was built without CUDA"
    with pytest.raises(exc, match=match):
        kernels.accumulate(acc, grad, 1.0)
    assert not acc[0].array.any()
    assert acc[0].deleted == acc[0].exported
    # A call with no elements makes no CUDA call at all, GPU or not.
    empty = [FakeDLPack(np.zeros(0, np.float32), device=(KDLCUDA, 0))]
    if _C.build_info()["cuda"]:
        kernels.accumulate(empty, [FakeDLPack(np.zeros(0, np.float32), device=(KDLCUDA, 0))], 1.0)
        assert kernels.sum_of_squares(empty) == 0.0


# ---------------------------------------------------------------- hypothesis parity

GRADS = st.sampled_from(["float32", "float16", "bfloat16", None])


@st.composite
def tensor_lists(draw):
    n = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))
    kinds = draw(st.lists(GRADS, min_size=n, max_size=n))
    return sizes, kinds, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tensor_lists(),
    st.sampled_from(["accumulate", "momentum", "adamw"]),
    st.booleans(),
    st.floats(0.0, 1.0),
    st.floats(-2.0, 2.0),
)
def test_parity_over_lists_of_dlpack_tensors(lists, op, flag, hyper, scale):
    sizes, kinds, seed = lists
    gen = torch.Generator().manual_seed(seed)
    kinds = [k or "float32" for k in kinds] if op == "accumulate" else kinds
    grad = [None if k is None else randn(gen, (s,), k) for s, k in zip(sizes, kinds)]
    acc = [torch.randn(s, generator=gen) for s in sizes]
    summed = [widen(a) + (0.0 if g is None else widen(g)) for a, g in zip(acc, grad)]
    # a list of a None entry is not allowed: a gradient-less tensor gets a zero gradient of float32
    grad_list = [torch.zeros(s) if g is None else g for s, g in zip(sizes, grad)]
    if op == "accumulate":
        acc0 = [widen(a) for a in acc]
        kernels.accumulate(acc, grad_list, scale, overwrite=flag)
        for i, (a, a0, g) in enumerate(zip(acc, acc0, grad_list)):
            assert_close(a, (0.0 if flag else a0) + f32(scale) * widen(g), f"acc[{i}]")
        return
    param = [torch.randn(s, generator=gen) for s in sizes]
    p0 = [widen(p) for p in param]
    wd = [0.01 * (i % 3) for i in range(len(sizes))]
    if op == "momentum":
        moment = [torch.randn(s, generator=gen) * 0.1 for s in sizes]
        m0 = [widen(m) for m in moment]
        kernels.momentum_update(
            param, moment, acc, grad_list, lr=0.1, momentum=hyper, grad_scale=scale, weight_decay=wd, nesterov=flag
        )
        for i in range(len(sizes)):
            p_ref, v_ref = ref_momentum(
                p0[i], m0[i], summed[i], lr=0.1, momentum=hyper, grad_scale=scale, wd=wd[i], nesterov=flag
            )
            assert_close(param[i], p_ref, f"param[{i}]")
            assert_close(moment[i], v_ref, f"moment[{i}]")
            assert not torch.any(acc[i])
        return
    exp_avg = [torch.randn(s, generator=gen) * 0.1 for s in sizes]
    exp_avg_sq = [torch.randn(s, generator=gen) ** 2 * 0.01 + 0.01 for s in sizes]
    m0, v0 = [widen(m) for m in exp_avg], [widen(v) for v in exp_avg_sq]
    beta1 = min(hyper, 0.99)
    kernels.adamw_update(
        param,
        exp_avg,
        exp_avg_sq,
        acc,
        grad_list,
        lr=1e-2,
        beta1=beta1,
        beta2=0.999,
        eps=1e-8,
        weight_decay=wd,
        step=5,
        grad_scale=scale,
        bias_correction=True,
    )
    for i in range(len(sizes)):
        p_ref, m_ref, v_ref = ref_adamw(
            p0[i],
            m0[i],
            v0[i],
            summed[i],
            lr=1e-2,
            beta1=beta1,
            beta2=0.999,
            eps=1e-8,
            wd=wd[i],
            step=5,
            grad_scale=scale,
        )
        assert_close(param[i], p_ref, f"adamw param[{i}]")
        assert_close(exp_avg[i], m_ref, f"exp_avg[{i}]")
        assert_close(exp_avg_sq[i], v_ref, f"exp_avg_sq[{i}]")


def test_exporter_without_copy_keyword_gets_max_version():
    """DLPack 1.0 exporters that predate `copy`: the second attempt keeps max_version (a versioned
    capsule, so the read-only flag is still seen)."""
    calls = []

    class NoCopy(FakeDLPack):
        def __dlpack__(self, *, stream=None, max_version=None):
            calls.append(max_version)
            return self._export(stream)

    acc = NoCopy(np.zeros(4, np.float32), flags=READ_ONLY)
    with pytest.raises(ValueError, match=r"acc\[0\] is read-only"):
        kernels.accumulate([acc], [np.ones(4, np.float32)], 1.0)
    assert calls == [(1, 0)] and acc.deleted == acc.exported == 1
