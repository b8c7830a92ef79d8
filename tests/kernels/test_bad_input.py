"""Malformed calls to `_C`: the right exception type, a message naming the offending argument
(and index), and no array written, not even the valid ones before the bad tensor."""

import re

import numpy as np
import pytest

from mindspore_accum import _C
from tests.conftest import np_dtype

N = 64


def f32(value=1.0, shape=(N,)):
    return np.full(shape, value, np.float32)


def misaligned_f32(n=N):
    """A writable float32 array whose data starts at an odd address (np.frombuffer at offset 1)."""
    buf = bytearray(4 * n + 1)
    arr = np.frombuffer(buf, dtype=np.float32, offset=1, count=n)
    assert not arr.flags.aligned and arr.flags.writeable
    arr[...] = 1.0
    return arr


def readonly_f32(value=1.0, shape=(N,)):
    arr = f32(value, shape)
    arr.flags.writeable = False
    return arr


def strided_f32(value=1.0):
    base = np.full(2 * N, value, np.float32)
    return base[::2]


def fortran_f32(value=1.0):
    arr = np.asfortranarray(np.full((8, 8), value, np.float32))
    assert not arr.flags.c_contiguous
    return arr


def acc_args(acc, grad, scale=1.0):
    return _C.accumulate, (acc, grad, scale), {}


def flush_args(param, moment, acc, grad, **overrides):
    kwargs = dict(lr=0.1, momentum=0.9, grad_scale=0.5, weight_decay=0.01, nesterov=True)
    kwargs.update(overrides)
    return _C.momentum_update, (param, moment, acc, grad), kwargs


def adamw_args(param, exp_avg, exp_avg_sq, acc, grad, **overrides):
    kwargs = dict(
        lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, step=3, grad_scale=0.5, bias_correction=True
    )
    kwargs.update(overrides)
    return _C.adamw_update, (param, exp_avg, exp_avg_sq, acc, grad), kwargs


def adamw_ok(**overrides):
    """A valid adamw_flush call of three tensors but for `overrides` (non-zero gradients)."""
    return adamw_args(
        three(), three(f32, value=0.0), three(f32, value=0.0), three(f32, value=3.0), three(f32, value=2.0), **overrides
    )


def squares_args(tensors):
    return _C.sum_of_squares, (tensors,), {}


def three(make=f32, **kw):
    return [make(**kw) for _ in range(3)]


# Each case builds fresh arrays: (id, builder returning (fn, args, kwargs), exception, words
# the message must contain). The valid tensors hold non-zero gradients and come first, so a
# kernel that ran on them before noticing the bad one would change them.
def _cases():
    def shared_acc():
        a = f32(1.0)
        return acc_args([f32(), f32(), a, a], [f32(2.0), f32(2.0), f32(2.0), f32(2.0)])

    def grad_view_of_acc():
        accs = three()
        return acc_args(accs, [f32(2.0), accs[1][...], f32(2.0)])  # grad[1] is a view of acc[1]

    def grad_view_of_other_acc():
        accs = three()
        return acc_args(accs, [f32(2.0), f32(2.0), accs[0][::1]])  # grad[2] is a view of acc[0]

    def partial_overlap():
        base = np.ones(2 * N, np.float32)
        return acc_args([f32(), base[:N], base[N - 8 : 2 * N - 8]], three(f32, value=2.0))  # 8 elements shared

    def partial_overlap_param_moment():
        base = np.ones(2 * N, np.float32)
        params = [f32(), base[:N]]
        moments = [f32(), base[N // 2 : N // 2 + N]]
        return flush_args(params, moments, None, [f32(2.0), f32(2.0)])

    def moment_is_param():
        params = three()
        return flush_args(params, [f32(), f32(), params[2]], three(f32, value=3.0), three(f32, value=2.0))

    def grad_view_of_moment():
        moments = three()
        return flush_args(three(), moments, None, [f32(2.0), f32(2.0), moments[2][:]])

    return [
        # --- accumulate: structure
        ("acc-length", lambda: acc_args(three(), [f32(2.0), f32(2.0)]), ValueError, ["grad", "2", "acc", "3"]),
        (
            "acc-shape-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), f32(2.0, (N + 1,))]),
            ValueError,
            ["grad[2]", "acc[2]", f"({N + 1},)"],
        ),
        (
            "acc-shape-0d-vs-1",
            lambda: acc_args([f32(), f32(1.0, ())], [f32(2.0), f32(2.0, (1,))]),
            ValueError,
            ["grad[1]", "(1,)", "()"],
        ),
        (
            "acc-shape-transposed",
            lambda: acc_args([f32(), f32(1.0, (4, 16))], [f32(2.0), f32(2.0, (16, 4))]),
            ValueError,
            ["grad[1]", "(16, 4)", "(4, 16)"],
        ),
        ("acc-not-a-list", lambda: acc_args(f32(), [f32(2.0)]), TypeError, ["acc", "list", "ndarray"]),
        ("grad-not-a-list", lambda: acc_args([f32()], f32(2.0)), TypeError, ["grad", "list", "ndarray"]),
        ("acc-none", lambda: acc_args(None, [f32(2.0)]), TypeError, ["acc", "None"]),
        ("grad-none-in-accumulate", lambda: acc_args([f32()], None), TypeError, ["grad", "None"]),
        (
            "grad-item-not-array",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), [2.0] * N]),
            TypeError,
            ["grad[2]", "list"],
        ),
        (
            "acc-item-numpy-scalar",
            lambda: acc_args([f32(), np.float32(1.0)], [f32(2.0), f32(2.0, ())]),
            TypeError,
            ["acc[1]"],
        ),
        ("scale-string", lambda: acc_args(three(), three(f32, value=2.0), "0.5"), TypeError, ["scale", "str"]),
        ("scale-none", lambda: acc_args(three(), three(f32, value=2.0), None), TypeError, ["scale", "None"]),
        ("scale-list", lambda: acc_args(three(), three(f32, value=2.0), [0.5]), TypeError, ["scale", "list"]),
        # --- accumulate: dtypes
        (
            "acc-float64-last",
            lambda: acc_args([f32(), f32(), np.ones(N)], three(f32, value=2.0)),
            TypeError,
            ["acc[2]", "float64"],
        ),
        (
            "acc-float16",
            lambda: acc_args([f32(), np.ones(N, np.float16)], [f32(2.0), f32(2.0)]),
            TypeError,
            ["acc[1]", "float16"],
        ),
        (
            "grad-int32",
            lambda: acc_args(three(), [f32(2.0), np.full(N, 2, np.int32), f32(2.0)]),
            TypeError,
            ["grad[1]", "int32"],
        ),
        (
            "grad-int16-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), np.full(N, 2, np.int16)]),
            TypeError,
            ["grad[2]", "int16"],
        ),
        (
            "grad-float64-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), np.full(N, 2.0)]),
            TypeError,
            ["grad[2]", "float64"],
        ),
        (
            "acc-big-endian-last",
            lambda: acc_args([f32(), f32(), np.ones(N, ">f4")], three(f32, value=2.0)),
            TypeError,
            ["acc[2]", ">f4"],
        ),
        (
            "grad-big-endian-f32-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), np.full(N, 2.0, ">f4")]),
            TypeError,
            ["grad[2]", ">f4"],
        ),
        (
            "grad-big-endian-f16-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), np.full(N, 2.0, ">f2")]),
            TypeError,
            ["grad[2]", ">f2"],
        ),
        (
            "grad-complex64",
            lambda: acc_args(three(), [f32(2.0), np.ones(N, np.complex64), f32(2.0)]),
            TypeError,
            ["grad[1]", "complex64"],
        ),
        # --- accumulate: layout
        (
            "grad-strided-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), strided_f32(2.0)]),
            ValueError,
            ["grad[2]", "contiguous"],
        ),
        (
            "acc-strided-last",
            lambda: acc_args([f32(), f32(), strided_f32()], three(f32, value=2.0)),
            ValueError,
            ["acc[2]", "contiguous"],
        ),
        (
            "acc-fortran-last",
            lambda: acc_args([f32(1.0, (8, 8)), fortran_f32()], [f32(2.0, (8, 8))] * 2),
            ValueError,
            ["acc[1]", "contiguous"],
        ),
        (
            "acc-readonly-last",
            lambda: acc_args([f32(), f32(), readonly_f32()], three(f32, value=2.0)),
            ValueError,
            ["acc[2]", "read-only"],
        ),
        (
            "acc-misaligned-last",
            lambda: acc_args([f32(), f32(), misaligned_f32()], three(f32, value=2.0)),
            ValueError,
            ["acc[2]", "aligned"],
        ),
        (
            "grad-misaligned-last",
            lambda: acc_args(three(), [f32(2.0), f32(2.0), misaligned_f32()]),
            ValueError,
            ["grad[2]", "aligned"],
        ),
        # --- accumulate: aliasing
        ("acc-same-array-twice", shared_acc, ValueError, ["acc[2]", "acc[3]", "shares memory"]),
        ("grad-view-of-its-acc", grad_view_of_acc, ValueError, ["grad[1]", "acc[1]", "shares memory"]),
        ("grad-view-of-other-acc", grad_view_of_other_acc, ValueError, ["grad[2]", "acc[0]", "shares memory"]),
        ("acc-partial-overlap", partial_overlap, ValueError, ["acc[1]", "acc[2]", "shares memory"]),
        # --- accumulate(overwrite=...)
        (
            "overwrite-int",
            lambda: (_C.accumulate, (three(), three(f32, value=2.0), 1.0), {"overwrite": 1}),
            TypeError,
            ["overwrite", "bool", "int"],
        ),
        (
            "overwrite-string",
            lambda: (_C.accumulate, (three(), three(f32, value=2.0), 1.0), {"overwrite": "yes"}),
            TypeError,
            ["overwrite", "bool", "str"],
        ),
        (
            "overwrite-none",
            lambda: (_C.accumulate, (three(), three(f32, value=2.0), 1.0), {"overwrite": None}),
            TypeError,
            ["overwrite", "bool"],
        ),
        (
            "overwrite-grad-int-last",
            lambda: (_C.accumulate, (three(), [f32(2.0), f32(2.0), np.ones(N, np.int32)], 1.0), {"overwrite": True}),
            TypeError,
            ["grad[2]", "int32"],
        ),
        (
            "overwrite-acc-readonly-last",
            lambda: (_C.accumulate, ([f32(), f32(), readonly_f32()], three(f32, value=2.0), 1.0), {"overwrite": True}),
            ValueError,
            ["acc[2]", "read-only"],
        ),
        # --- momentum_flush
        (
            "flush-moment-length",
            lambda: flush_args(three(), [f32(), f32()], None, three(f32, value=2.0)),
            ValueError,
            ["moment", "2", "param", "3"],
        ),
        (
            "flush-moment-shape-last",
            lambda: flush_args(three(), [f32(), f32(), f32(0.0, (N - 1,))], None, three(f32, value=2.0)),
            ValueError,
            ["moment[2]", "param[2]"],
        ),
        (
            "flush-acc-length",
            lambda: flush_args(three(), three(), [f32(3.0)], three(f32, value=2.0)),
            ValueError,
            ["acc", "1", "param", "3"],
        ),
        (
            "flush-grad-shape-last",
            lambda: flush_args(three(), three(), three(f32, value=3.0), [f32(2.0), f32(2.0), f32(2.0, (2, N // 2))]),
            ValueError,
            ["grad[2]", "param[2]"],
        ),
        (
            "flush-weight-decay-short",
            lambda: flush_args(three(), three(), three(f32, value=3.0), three(f32, value=2.0), weight_decay=[0.1, 0.2]),
            ValueError,
            ["weight_decay", "2", "3"],
        ),
        (
            "flush-weight-decay-array-long",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), weight_decay=np.zeros(4)),
            ValueError,
            ["weight_decay", "4", "3"],
        ),
        (
            "flush-weight-decay-2d",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), weight_decay=np.zeros((3, 1))),
            ValueError,
            ["weight_decay"],
        ),
        (
            "flush-weight-decay-item-string",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), weight_decay=[0.1, 0.1, "x"]),
            TypeError,
            ["weight_decay[2]"],
        ),
        (
            "flush-weight-decay-string",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), weight_decay="0.1"),
            TypeError,
            ["weight_decay"],
        ),
        (
            "flush-lr-string",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), lr="0.1"),
            TypeError,
            ["lr"],
        ),
        (
            "flush-momentum-none",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), momentum=None),
            TypeError,
            ["momentum"],
        ),
        (
            "flush-grad-scale-object",
            lambda: flush_args(three(), three(), None, three(f32, value=2.0), grad_scale=object()),
            TypeError,
            ["grad_scale"],
        ),
        (
            "flush-param-not-a-list",
            lambda: flush_args(f32(), [f32()], None, [f32(2.0)]),
            TypeError,
            ["param", "ndarray"],
        ),
        (
            "flush-moment-none",
            lambda: flush_args(three(), None, None, three(f32, value=2.0)),
            TypeError,
            ["moment", "None"],
        ),
        (
            "flush-param-float64-last",
            lambda: flush_args([f32(), f32(), np.ones(N)], three(), None, three(f32, value=2.0)),
            TypeError,
            ["param[2]", "float64"],
        ),
        (
            "flush-moment-float16-last",
            lambda: flush_args(three(), [f32(), f32(), np.ones(N, np.float16)], None, three(f32, value=2.0)),
            TypeError,
            ["moment[2]", "float16"],
        ),
        (
            "flush-acc-bfloat16-last",
            lambda: flush_args(
                three(), three(), [f32(3.0), f32(3.0), np.ones(N, np_dtype("bfloat16"))], three(f32, value=2.0)
            ),
            TypeError,
            ["acc[2]", "bfloat16"],
        ),
        (
            "flush-grad-int-last",
            lambda: flush_args(three(), three(), None, [f32(2.0), f32(2.0), np.ones(N, np.int64)]),
            TypeError,
            ["grad[2]", "int64"],
        ),
        (
            "flush-moment-readonly-last",
            lambda: flush_args(three(), [f32(), f32(), readonly_f32()], None, three(f32, value=2.0)),
            ValueError,
            ["moment[2]", "read-only"],
        ),
        (
            "flush-acc-readonly-last",
            lambda: flush_args(three(), three(), [f32(3.0), f32(3.0), readonly_f32(3.0)], None),
            ValueError,
            ["acc[2]", "read-only"],
        ),
        (
            "flush-param-fortran-last",
            lambda: flush_args(
                [f32(1.0, (8, 8)), fortran_f32()],
                [f32(0.0, (8, 8)), f32(0.0, (8, 8))],
                None,
                [f32(2.0, (8, 8)), f32(2.0, (8, 8))],
            ),
            ValueError,
            ["param[1]", "contiguous"],
        ),
        (
            "flush-param-misaligned-last",
            lambda: flush_args([f32(), f32(), misaligned_f32()], three(), None, three(f32, value=2.0)),
            ValueError,
            ["param[2]", "aligned"],
        ),
        ("flush-moment-is-param", moment_is_param, ValueError, ["param[2]", "moment[2]", "shares memory"]),
        ("flush-grad-view-of-moment", grad_view_of_moment, ValueError, ["grad[2]", "moment[2]", "shares memory"]),
        (
            "flush-param-moment-partial-overlap",
            partial_overlap_param_moment,
            ValueError,
            ["param[1]", "moment[1]", "shares memory"],
        ),
        # --- adamw_flush: lists
        (
            "adamw-exp-avg-length",
            lambda: adamw_args(three(), [f32(), f32()], three(), None, three(f32, value=2.0)),
            ValueError,
            ["exp_avg", "2", "param", "3"],
        ),
        (
            "adamw-exp-avg-sq-shape-last",
            lambda: adamw_args(three(), three(), [f32(), f32(), f32(0.0, (N + 1,))], None, three(f32, value=2.0)),
            ValueError,
            ["exp_avg_sq[2]", "param[2]", f"({N + 1},)"],
        ),
        (
            "adamw-acc-length",
            lambda: adamw_args(three(), three(), three(), [f32(3.0)], three(f32, value=2.0)),
            ValueError,
            ["acc", "1", "param", "3"],
        ),
        (
            "adamw-grad-shape-last",
            lambda: adamw_args(three(), three(), three(), None, [f32(2.0), f32(2.0), f32(2.0, (2, N // 2))]),
            ValueError,
            ["grad[2]", "param[2]"],
        ),
        (
            "adamw-exp-avg-sq-none",
            lambda: adamw_args(three(), three(), None, None, three(f32, value=2.0)),
            TypeError,
            ["exp_avg_sq", "None"],
        ),
        (
            "adamw-param-not-a-list",
            lambda: adamw_args(f32(), [f32()], [f32()], None, [f32(2.0)]),
            TypeError,
            ["param", "ndarray"],
        ),
        (
            "adamw-exp-avg-float16-last",
            lambda: adamw_args(three(), [f32(), f32(), np.ones(N, np.float16)], three(), None, three(f32, value=2.0)),
            TypeError,
            ["exp_avg[2]", "float16"],
        ),
        (
            "adamw-exp-avg-sq-float64-last",
            lambda: adamw_args(three(), three(), [f32(), f32(), np.ones(N)], None, three(f32, value=2.0)),
            TypeError,
            ["exp_avg_sq[2]", "float64"],
        ),
        (
            "adamw-grad-int-last",
            lambda: adamw_args(
                three(), three(), three(), three(f32, value=3.0), [f32(2.0), f32(2.0), np.ones(N, np.int64)]
            ),
            TypeError,
            ["grad[2]", "int64"],
        ),
        (
            "adamw-exp-avg-sq-readonly-last",
            lambda: adamw_args(three(), three(), [f32(), f32(), readonly_f32()], None, three(f32, value=2.0)),
            ValueError,
            ["exp_avg_sq[2]", "read-only"],
        ),
        (
            "adamw-param-misaligned-last",
            lambda: adamw_args([f32(), f32(), misaligned_f32()], three(), three(), None, three(f32, value=2.0)),
            ValueError,
            ["param[2]", "aligned"],
        ),
        (
            "adamw-exp-avg-strided-last",
            lambda: adamw_args(three(), [f32(), f32(), strided_f32()], three(), None, three(f32, value=2.0)),
            ValueError,
            ["exp_avg[2]", "contiguous"],
        ),
        (
            "adamw-exp-avg-sq-is-exp-avg",
            lambda: (lambda m: adamw_args(three(), m, [f32(), f32(), m[1]], None, three(f32, value=2.0)))(three()),
            ValueError,
            ["exp_avg_sq[2]", "exp_avg[1]", "shares memory"],
        ),
        (
            "adamw-grad-view-of-exp-avg-sq",
            lambda: (lambda v: adamw_args(three(), three(), v, None, [f32(2.0), v[0][:], f32(2.0)]))(three()),
            ValueError,
            ["grad[1]", "exp_avg_sq[0]", "shares memory"],
        ),
        # --- adamw_flush: scalars
        ("adamw-lr-negative", lambda: adamw_ok(lr=-1e-3), ValueError, ["lr", "-0.001"]),
        ("adamw-lr-nan", lambda: adamw_ok(lr=float("nan")), ValueError, ["lr", "finite"]),
        ("adamw-lr-string", lambda: adamw_ok(lr="0.1"), TypeError, ["lr", "str"]),
        ("adamw-lr-beyond-float32", lambda: adamw_ok(lr=1e39), ValueError, ["lr", "float32"]),
        ("adamw-beta1-one", lambda: adamw_ok(beta1=1.0), ValueError, ["beta1", "[0.0, 1.0)", "1.0"]),
        ("adamw-beta1-negative", lambda: adamw_ok(beta1=-0.1), ValueError, ["beta1", "-0.1"]),
        ("adamw-beta2-inf", lambda: adamw_ok(beta2=float("inf")), ValueError, ["beta2", "finite"]),
        ("adamw-beta2-none", lambda: adamw_ok(beta2=None), TypeError, ["beta2", "None"]),
        ("adamw-eps-zero", lambda: adamw_ok(eps=0.0), ValueError, ["eps", "(0.0, inf)"]),
        ("adamw-eps-negative", lambda: adamw_ok(eps=-1e-8), ValueError, ["eps"]),
        ("adamw-eps-underflows-float32", lambda: adamw_ok(eps=1e-50), ValueError, ["eps", "float32"]),
        ("adamw-grad-scale-inf", lambda: adamw_ok(grad_scale=float("-inf")), ValueError, ["grad_scale", "finite"]),
        ("adamw-grad-scale-object", lambda: adamw_ok(grad_scale=object()), TypeError, ["grad_scale", "object"]),
        ("adamw-step-zero", lambda: adamw_ok(step=0), ValueError, ["step", ">= 1", "0"]),
        ("adamw-step-negative-numpy", lambda: adamw_ok(step=np.int64(-3)), ValueError, ["step", "-3"]),
        ("adamw-step-float", lambda: adamw_ok(step=2.0), TypeError, ["step", "int", "float"]),
        ("adamw-step-bool", lambda: adamw_ok(step=True), TypeError, ["step", "bool"]),
        ("adamw-step-none", lambda: adamw_ok(step=None), TypeError, ["step", "NoneType"]),
        ("adamw-bias-correction-int", lambda: adamw_ok(bias_correction=1), TypeError, ["bias_correction", "bool"]),
        ("adamw-weight-decay-short", lambda: adamw_ok(weight_decay=[0.1, 0.2]), ValueError, ["weight_decay", "2", "3"]),
        (
            "adamw-weight-decay-item-nan",
            lambda: adamw_ok(weight_decay=[0.1, 0.1, float("nan")]),
            ValueError,
            ["weight_decay[2]", "finite"],
        ),
        ("adamw-weight-decay-inf", lambda: adamw_ok(weight_decay=float("inf")), ValueError, ["weight_decay", "finite"]),
        (
            "adamw-weight-decay-item-string",
            lambda: adamw_ok(weight_decay=[0.1, "x", 0.1]),
            TypeError,
            ["weight_decay[1]"],
        ),
        ("adamw-weight-decay-2d", lambda: adamw_ok(weight_decay=np.zeros((3, 1))), ValueError, ["weight_decay"]),
        # --- sum_of_squares (read-only: nothing to write, but the same checks before it runs)
        ("squares-not-a-list", lambda: squares_args(f32()), TypeError, ["tensors", "list", "ndarray"]),
        ("squares-none", lambda: squares_args(None), TypeError, ["tensors", "None"]),
        ("squares-item-not-array", lambda: squares_args([f32(), [1.0] * N]), TypeError, ["tensors[1]", "list"]),
        (
            "squares-int32-last",
            lambda: squares_args([f32(), f32(), np.ones(N, np.int32)]),
            TypeError,
            ["tensors[2]", "int32"],
        ),
        ("squares-float64", lambda: squares_args([np.ones(N), f32()]), TypeError, ["tensors[0]", "float64"]),
        ("squares-big-endian", lambda: squares_args([f32(), np.ones(N, ">f4")]), TypeError, ["tensors[1]", ">f4"]),
        (
            "squares-strided-last",
            lambda: squares_args([f32(), strided_f32()]),
            ValueError,
            ["tensors[1]", "contiguous"],
        ),
        ("squares-misaligned", lambda: squares_args([misaligned_f32(), f32()]), ValueError, ["tensors[0]", "aligned"]),
        (
            "squares-workspace-negative",
            lambda: (_C.sum_of_squares_workspace, ([3, -1], "CPU"), {}),
            ValueError,
            ["numel[1]", "negative"],
        ),
        (
            "squares-workspace-device",
            lambda: (_C.sum_of_squares_workspace, ([3], "Ascend"), {}),
            ValueError,
            ["device", "Ascend"],
        ),
    ]


CASES = _cases()


def _arrays_in(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _arrays_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _arrays_in(item)


@pytest.mark.parametrize("build,exc,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_call_raises_and_writes_nothing(build, exc, words):
    fn, args, kwargs = build()
    arrays = list(_arrays_in(args)) + list(_arrays_in(kwargs))
    # Snapshot the raw bytes (exact for every dtype, including NaN payloads and -0).
    before = [bytes(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) for a in arrays]
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f"expected exactly {exc.__name__}, got {type(info.value).__name__}"
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in message {message!r}"
    for i, (a, b) in enumerate(zip(arrays, before)):
        assert bytes(np.ascontiguousarray(a).view(np.uint8).reshape(-1)) == b, f"array {i} was written: {message}"


def test_enough_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 12


def test_message_index_is_the_offending_one():
    """The index in the message is the bad tensor's, not the first or the last."""
    for bad in range(4):
        grads = [f32(2.0) for _ in range(4)]
        grads[bad] = np.ones(N, np.int8)
        with pytest.raises(TypeError, match=re.escape(f"grad[{bad}]")):
            _C.accumulate([f32() for _ in range(4)], grads, 1.0)


def test_numpy_and_int_scalars_are_accepted_for_scale():
    acc = f32(1.0)
    _C.accumulate([acc], [f32(2.0)], np.float64(0.5))
    _C.accumulate([acc], [f32(2.0)], 1)
    np.testing.assert_array_equal(acc, f32(4.0))


def test_zero_size_arrays_may_share_memory():
    """Empty arrays cover no bytes, so views of the same buffer do not overlap."""
    base = np.zeros(4, np.float32)
    _C.accumulate([base[:0], base[1:1]], [base[2:2], base[:0]], 1.0)


def test_adjacent_views_do_not_overlap():
    """Views that touch but do not overlap are fine (half-open byte ranges)."""
    base = np.zeros(2 * N, np.float32)
    acc, grad = base[:N], base[N:]
    grad[...] = 2.0
    _C.accumulate([acc], [grad], 1.0)
    np.testing.assert_array_equal(acc, f32(2.0))


def test_build_info():
    info = _C.build_info()
    expected_types = {
        "version": str,
        "cuda": bool,
        "cuda_architectures": str,
        "vector_isa": str,
        "num_threads": int,
        "compiler": str,
    }
    for key, typ in expected_types.items():
        assert key in info, key
        assert isinstance(info[key], typ), (key, type(info[key]))
    assert "cuda_runtime" in info
    assert info["cuda_runtime"] is None if not info["cuda"] else isinstance(info["cuda_runtime"], (int, str))
    assert info["cuda"] or info["cuda_architectures"] == ""
    assert info["vector_isa"] in {"avx512", "avx2", "baseline"}
    assert info["num_threads"] == _C.num_threads() >= 1
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])
    import mindspore_accum

    assert mindspore_accum.__version__ == info["version"]
    assert mindspore_accum.build_info() == info
