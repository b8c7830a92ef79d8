"""Property-based tests (hypothesis) of `_C.accumulate` (with and without overwrite),
`_C.momentum_update` and `_C.adamw_update`.

Every example builds a random call -- list length (0 included), shapes (0-d, empty, tails, big
enough for two threads), gradient dtypes (float32/float16/bfloat16) and wrong dtypes, layouts
(C order, offset by one element, strided, Fortran, byte-misaligned, read-only), aliasing (one
array passed twice, overlapping and disjoint views of one buffer), `None` acc/grad, and scalars
(inf, nan, subnormal, huge, zero, ints, NumPy scalars, wrong types) -- and checks:

* the call is valid exactly when the contract says so (float32 acc/param/moment, a supported
  gradient dtype, C-contiguous, aligned, writable where written, matching lengths and shapes, no
  written array overlapping any other argument, real-number scalars);
* an invalid call raises TypeError or ValueError and leaves every byte of every buffer as it was;
* adamw_flush scalars are valid only as the contract says (finite lr >= 0, 0 <= beta < 1, eps > 0
  also in float32, finite grad_scale and weight decays, an int step >= 1, a bool bias_correction);
* a valid call leaves the gradients byte-identical, zeroes the accumulators (flush), and writes
  values equal to the float64 reference of conftest.py: within the float32 error bound where the
  reference is finite, and with the same non-finite pattern (nan / +inf / -inf) where it is not.
  Elements whose finite intermediates come near float32 overflow (>= 2**125) are only checked
  for agreement when the kernel's result is finite: there FMA contraction legitimately decides
  whether an intermediate overflows.

Each (operation, vector ISA, thread count) combination is its own test with a fixed example
budget and `derandomize=True`, so CI runs the same >= 2,000 examples every time.
"""

import numpy as np
import pytest

from mindspore_accum import _C
from tests.conftest import BFLOAT16, ref_accumulate, ref_adamw_flush, ref_momentum_flush, supported_isas, to_f32

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ISAS = ["avx512", "avx2", "baseline"]
THREADS = [1, 2]


SUPPORTED_ISAS = [isa for isa in ISAS if isa in supported_isas()]
OPERATIONS = 3  # accumulate (overwrite drawn per example), momentum_flush, adamw_flush
MIN_TOTAL_EXAMPLES = 3000
# 3,240 examples in all, spread over the tests that run here: 180 per test with 3 ISAs x 2 thread
# counts x 3 operations; fewer ISAs on this CPU -> more examples for each of the others.
EXAMPLES_PER_TEST = -(-3240 // (OPERATIONS * len(THREADS) * len(SUPPORTED_ISAS)))
SETTINGS = settings(
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

U32 = 2.0**-24  # float32 unit roundoff
ETA = 2.0**-149  # smallest float32 subnormal: absolute rounding error of subnormal results
NEAR_OVERFLOW = 2.0**125
# Two threads are used only from 2 * 32768 elements per call (cpu_kernels.cpp).
BIG = 2 * 32768

# examples run, and how they ended (printed at the end of the module; run pytest with -s to see it)
_examples_run = {
    "count": 0,
    "tests": 0,
    "rejected": 0,
    "checked": 0,
    "two_threads": 0,
    "nonfinite_out": 0,
    "aliased_valid": 0,
    "reduced_grad": 0,
}


# ============================================================== configuration fixture


# Only the ISAs this CPU runs (conftest.supported_isas): the others are not collected, not skipped.
@pytest.fixture(params=[(isa, t) for isa in SUPPORTED_ISAS for t in THREADS], ids=lambda p: f"{p[0]}-{p[1]}thr")
def kernel_config(request):
    isa, threads = request.param
    before_isa = _C.build_info()["vector_isa"]
    _C.set_vector_isa(isa)
    _C.set_num_threads(threads)
    yield isa, threads
    _C.set_num_threads(0)
    _C.set_vector_isa(before_isa)


@pytest.fixture(scope="module", autouse=True)
def enough_examples(request):
    """After the module: when every test of it ran, at least MIN_TOTAL_EXAMPLES examples ran."""
    yield
    selected = [item for item in request.session.items if item.module is request.module]
    print("\nproperty examples:", _examples_run)
    if _examples_run["tests"] == OPERATIONS * len(SUPPORTED_ISAS) * len(THREADS) and len(selected) == OPERATIONS * len(
        SUPPORTED_ISAS
    ) * len(THREADS):
        assert _examples_run["count"] >= MIN_TOTAL_EXAMPLES, _examples_run


# ============================================================== building arrays

GOOD_GRAD = ["float32", "float16"] + (["bfloat16"] if BFLOAT16 is not None else [])
WRONG_DTYPES = ["float64", "int32", "uint16", "int8", ">f4", ">f2", "complex64", "bool"]


def dtype_of(name):
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


special_floats = st.sampled_from(
    [
        np.inf,
        -np.inf,
        np.nan,
        -np.nan,
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        1e-40,
        1.1754942e-38,
        3.4028235e38,
        -3.4028235e38,
        1e30,
        -1e30,
        65504.0,
        1e5,
        6e-8,
        1e-7,
    ]
)

values_plan = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "exp": st.sampled_from([0, 0, 0, 0, -3, 3, -20, 20, -40, -44, 30, 37, 38]),
        "specials": st.lists(st.tuples(st.floats(0, 1, exclude_max=True), special_floats), max_size=4),
        "random_specials": st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.floats(width=32, allow_nan=True, allow_infinity=True)),
            max_size=2,
        ),
    }
)


def fill_values(n, dtype, plan):
    rng = np.random.default_rng(plan["seed"])
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        v = rng.standard_normal(n) * (10.0 ** plan["exp"])
        for frac, value in plan["specials"] + plan["random_specials"]:
            if n:
                v[int(frac * n)] = value
        if dtype.kind in "iub":
            return np.nan_to_num(v, nan=0, posinf=7, neginf=-7).clip(-100, 100).astype(dtype)
        return v.astype(np.float32).astype(dtype)


class Pool:
    """Backing buffers of one example: every array is a view of one of them, so aliasing is just
    two views of the same buffer, and 'all arrays unchanged' is 'all buffers byte-identical'."""

    def __init__(self):
        self.buffers = []
        self.owner = {}  # id(array) -> its buffer
        self.arrays = []  # every array made (keeps them alive, so ids stay unique)

    def new(self, nbytes):
        """A zeroed buffer with room for `nbytes` of data at its front, then as many spare bytes
        (+128) behind it (for views next to or overlapping the array); 64-byte aligned."""
        raw = np.zeros(2 * nbytes + 192, np.uint8)
        start = (-raw.ctypes.data) % 64
        buf = raw[start : start + 2 * nbytes + 128]
        self.buffers.append(buf)
        return buf

    def snapshot(self):
        return [b.tobytes() for b in self.buffers]


def make_array(pool, shape, dtype, layout, plan):
    """A new array of `shape`/`dtype` in its own pool buffer, laid out as `layout`."""
    n = int(np.prod(shape, dtype=np.int64))
    item = dtype.itemsize
    values = fill_values(n, dtype, plan).reshape(shape)
    if layout == "strided" and n > 1:
        buf = pool.new(2 * n * item)
        strides = tuple(2 * item * int(np.prod(shape[d + 1 :], dtype=np.int64)) for d in range(len(shape)))
        a = np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)
    elif layout == "fortran" and len(shape) >= 2:
        buf = pool.new(n * item)
        a = np.ndarray(shape, dtype=dtype, buffer=buf, order="F")
    else:
        offset = {"offset1": item, "offset3": 3 * item, "misaligned": 1 if item > 1 else 0}.get(layout, 0)
        buf = pool.new(n * item + offset)
        a = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)
    a[...] = values
    if layout == "readonly":
        a.flags.writeable = False
    pool.owner[id(a)] = buf
    pool.arrays.append(a)
    return a


def adjacent_view(pool, target, shape, dtype, after):
    """A view of the buffer holding `target` that ends where it starts or starts where it ends
    (buffers have room for a copy of their array on each side)."""
    buf = pool.owner[id(target)]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    start = target.__array_interface__["data"][0] - buf.__array_interface__["data"][0]
    base = buf.__array_interface__["data"][0]
    for begin in (start + target.nbytes, start - nbytes) if after else (start - nbytes, start + target.nbytes):
        if 0 <= begin <= buf.nbytes - nbytes and not any(
            pool.owner[id(a)] is buf
            and a.nbytes
            and nbytes
            and byte_range(a)[0] < base + begin + nbytes
            and base + begin < byte_range(a)[1]
            for a in pool.arrays
        ):
            break
    else:
        return None  # no free room next to the target: the caller makes a new array
    view = np.ndarray(shape, dtype=dtype, buffer=buf, offset=begin)
    pool.owner[id(view)] = buf
    pool.arrays.append(view)
    return view


def overlapping_view(pool, target, shape, dtype, shift):
    """A C-contiguous view of the buffer holding `target`, starting `shift` elements away from it
    (clipped into the buffer): overlaps `target` unless the shift is large or the arrays empty."""
    buf = pool.owner[id(target)]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    start = target.__array_interface__["data"][0] - buf.__array_interface__["data"][0]
    start = max(0, min(start + shift * dtype.itemsize, buf.nbytes - nbytes))
    view = np.ndarray(shape, dtype=dtype, buffer=buf, offset=start)
    pool.owner[id(view)] = buf
    pool.arrays.append(view)
    return view


# ============================================================== strategies

small_shape = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
tail_shape = st.sampled_from(
    [(1,), (3,), (15,), (16,), (17,), (31,), (63,), (65,), (1023,), (1025,), (4097,), (2, 2049)]
)
big_shape = st.sampled_from([(BIG,), (BIG + 17,), (3, 25001), (BIG + 1031,)])
shape_st = st.one_of(small_shape, small_shape, tail_shape)

VALID_LAYOUTS = ["c"] * 6 + ["offset1", "offset3"]  # offset: aligned to the element, not to the vector
BAD_LAYOUTS = ["strided", "fortran", "misaligned", "readonly"]
LIST_KINDS = ["list"] * 8 + ["tuple", "tuple"]
BAD_LIST_KINDS = ["drop_last", "extra", "not_array", "not_a_list"]


@st.composite
def tensor_specs(draw, roles, n_tensors, clean):
    """For each tensor: a shape and for each role (acc, grad, ...) dtype, layout, values and alias.

    clean: every choice valid except at most one injected fault (so most calls run the kernel);
    otherwise every choice is drawn from valid and invalid options alike."""
    specs = []
    big_at = draw(st.sampled_from([None, None, 0, n_tensors - 1, n_tensors // 2])) if n_tensors else None
    for t in range(n_tensors):
        shape = draw(big_shape) if t == big_at else draw(shape_st)
        spec = {"shape": shape, "roles": {}}
        for role in roles:
            if role == "grad":
                dt = draw(st.sampled_from(GOOD_GRAD if clean else GOOD_GRAD * 6 + WRONG_DTYPES))
            else:
                dt = "float32" if clean else draw(st.sampled_from(["float32"] * 24 + WRONG_DTYPES + ["float16"]))
            # clean calls share memory only where that is valid: gradients among themselves, or
            # touching (adjacent) buffers
            alias_kinds = (
                (["same", "adjacent"] if role == "grad" else ["adjacent"]) if clean else ["same", "view", "adjacent"]
            )
            spec["roles"][role] = {
                "dtype": dt,
                "layout": draw(st.sampled_from(VALID_LAYOUTS if clean else VALID_LAYOUTS * 2 + BAD_LAYOUTS)),
                "values": draw(values_plan),
                # alias: None (own buffer), or (kind, shift): share memory with an earlier array
                "alias": draw(st.one_of(*[st.none()] * 5, st.tuples(st.sampled_from(alias_kinds), st.integers(-5, 5)))),
                "shape_mismatch": False if clean else draw(st.integers(0, 40)) == 0,
            }
        specs.append(spec)
    if clean and n_tensors and draw(st.integers(0, 3)) == 0:  # inject one fault
        r = specs[draw(st.integers(0, n_tensors - 1))]["roles"][draw(st.sampled_from(roles))]
        fault = draw(st.sampled_from(["dtype", "layout", "view", "shape"]))
        if fault == "dtype":
            r["dtype"] = draw(st.sampled_from(WRONG_DTYPES))
        elif fault == "layout":
            r["layout"] = draw(st.sampled_from(BAD_LAYOUTS))
        elif fault == "view":
            r["alias"] = ("view", draw(st.integers(-5, 5)))
        else:
            r["shape_mismatch"] = True
    return specs


def scalar_st(valid_only=False):
    reals = [
        st.floats(-2.0, 2.0, allow_nan=False),
        st.floats(-2.0, 2.0, allow_nan=False),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.floats(allow_nan=True, allow_infinity=True),  # may exceed float32: rounds to +-inf
        special_floats,
        st.integers(-3, 3),
        st.sampled_from([True, np.float32(0.5), np.float64(-0.25), np.float16(2.0), np.int64(2), np.array(0.75)]),
    ]
    if valid_only:
        return st.one_of(*reals)
    return st.one_of(*reals, st.sampled_from([10**400, None, "1.0", b"1", [1.0], object()]))


def build_lists(pool, specs, roles, list_kinds):
    """The argument lists, honouring dtype/layout/alias/shape-mismatch of every spec."""
    lists = {role: [] for role in roles}
    made = []  # every array made so far, for aliasing
    for spec in specs:
        for role in roles:
            r = spec["roles"][role]
            dtype = dtype_of(r["dtype"])
            shape = spec["shape"]
            if r["shape_mismatch"]:
                shape = shape + (1,) if len(shape) < 3 else shape[:-1]
            alias = r["alias"]
            candidates = [a for a, rl in made if a.dtype == dtype and a.shape == tuple(shape)]
            if alias is not None and alias[0] != "view" and role == "grad":
                # sharing among read-only gradients is valid: prefer those
                candidates = [
                    a for a, rl in made if rl == "grad" and a.dtype == dtype and a.shape == tuple(shape)
                ] or candidates
            if alias is not None and candidates:
                kind, shift = alias
                target = candidates[abs(shift) % len(candidates)]
                if kind == "same":
                    arr = target
                elif kind == "adjacent":  # right after (or before) the target: touching, not overlapping
                    arr = adjacent_view(pool, target, tuple(shape), dtype, after=shift >= 0)
                    if arr is None:
                        arr = make_array(pool, tuple(shape), dtype, r["layout"], r["values"])
                    else:
                        arr[...] = fill_values(arr.size, dtype, r["values"]).reshape(arr.shape)
                else:
                    arr = overlapping_view(pool, target, tuple(shape), dtype, shift)
            else:
                arr = make_array(pool, tuple(shape), dtype, r["layout"], r["values"])
            lists[role].append(arr)
            made.append((arr, role))
    for role in roles:
        kind = list_kinds.get(role, "list")
        if kind == "tuple":
            lists[role] = tuple(lists[role])
        elif kind == "drop_last" and lists[role]:
            lists[role] = lists[role][:-1]
        elif kind == "extra":
            lists[role] = lists[role] + [
                make_array(
                    pool, (2,), np.dtype(np.float32), "c", {"seed": 1, "exp": 0, "specials": [], "random_specials": []}
                )
            ]
        elif kind == "not_array" and lists[role]:
            lists[role] = lists[role][:-1] + [list(map(float, np.zeros(3)))]
        elif kind == "not_a_list":
            lists[role] = lists[role][0] if lists[role] else 3.0
    return lists


# ============================================================== the contract, predicted


def is_grad_dtype(dt):
    return (dt == np.float32 or dt == np.float16) and dt.isnative or (BFLOAT16 is not None and dt == BFLOAT16)


def well_formed_array(a, written, grad):
    ok_dtype = is_grad_dtype(a.dtype) if grad else (a.dtype == np.float32 and a.dtype.isnative)
    return ok_dtype and a.flags.c_contiguous and a.flags.aligned and (a.flags.writeable or not written)


def byte_range(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def overlap_free(arrays_written):
    ranges = [(byte_range(a), w) for a, w in arrays_written if a.nbytes > 0]
    for i in range(len(ranges)):
        for j in range(i + 1, len(ranges)):
            (b0, e0), w0 = ranges[i]
            (b1, e1), w1 = ranges[j]
            if (w0 or w1) and b0 < e1 and b1 < e0:
                return False
    return True


def real_scalar(x):
    """What the binding accepts as a real number, and its float32 value."""
    if x is None or isinstance(x, (str, bytes)):
        return False, None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return False, None
    with np.errstate(over="ignore"):
        return True, float(np.float32(v))


def is_bool(x):
    return isinstance(x, (bool, np.bool_))


def lists_valid(lists, roles, optional=()):
    """Lengths and shapes match, every element is a numpy array; returns (ok, n)."""
    first = None
    for role in roles:
        value = lists[role]
        if value is None:
            if role in optional:
                continue
            return False
        if not isinstance(value, (list, tuple)) or not all(isinstance(a, np.ndarray) for a in value):
            return False
        if first is None:
            first = value
        elif len(value) != len(first) or any(a.shape != b.shape for a, b in zip(value, first)):
            return False
    return True


# ============================================================== checking the result


def classify(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isnan(x), 3, np.where(np.isposinf(x), 1, np.where(np.isneginf(x), 2, 0)))


def check_values(out, ref64, ref32, bound, near, what):
    """out (float32) against the float64 reference with an element-wise error bound; non-finite
    pattern against the float32 replay of the formula; `near` elements: see the module doc."""
    shape = out.shape
    out64 = out.astype(np.float64).ravel()
    ref64, ref32 = np.asarray(ref64).ravel(), np.asarray(ref32).astype(np.float64).ravel()
    bound, near = np.broadcast_to(bound, shape).ravel(), np.broadcast_to(near, shape).ravel()
    c_out, c_ref = classify(out64), classify(ref32)
    # 1. away from overflow: identical classes (finite / +inf / -inf / nan)
    bad = ~near & (c_out != c_ref)
    # 2. finite results: within the bound of the float64 reference
    both = (c_out == 0) & (c_ref == 0) | near & (c_out == 0)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(out64 - ref64)
        bad |= both & ~(err <= bound)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} wrong element(s); first at {i}: kernel {out64[i]!r}, "
            f"float64 reference {ref64[i]!r}, float32 replay {ref32[i]!r}, bound {bound[i]:.3g}, "
            f"near overflow {bool(near[i])}"
        )


def f32(x):
    return np.asarray(x).astype(np.float32)


def finite0(x):
    """float64 with non-finite values replaced by 0 (to find finite terms near overflow)."""
    x = np.asarray(x).astype(np.float64)
    return np.where(np.isfinite(x), x, 0.0)


def check_accumulate_result(acc_before, grad, acc_after, scale32, what):
    with np.errstate(all="ignore"):
        ref64 = ref_accumulate(acc_before, grad, scale32)
        ref32 = f32(acc_before) + np.float32(scale32) * f32(grad)
        mag = np.abs(finite0(acc_before)) + np.abs(finite0(grad) * finite0(scale32))
        near = (np.abs(finite0(grad) * finite0(scale32)) >= NEAR_OVERFLOW) | (mag >= NEAR_OVERFLOW)
        bound = 4 * U32 * mag + 4 * ETA * (1 + abs(finite0(scale32)))
    check_values(acc_after, ref64, ref32, bound, near, what)


def check_flush_result(before, after, s, what):
    """before/after: dicts param, moment, acc, grad (acc/grad may be None); s: float32 scalars."""
    p, m, acc, grad = before["param"], before["moment"], before["acc"], before["grad"]
    lr, mom, gs, wd, nesterov = s["lr"], s["momentum"], s["grad_scale"], s["weight_decay"], s["nesterov"]
    with np.errstate(all="ignore"):
        ref_p, ref_v, _ = ref_momentum_flush(
            p, m, acc, grad, lr=lr, momentum=mom, grad_scale=gs, weight_decay=wd, nesterov=nesterov
        )
        # float32 replay of the formula (no FMA), for the non-finite pattern
        L, M, G, W = (np.float32(x) for x in (lr, mom, gs, wd))
        if acc is not None and grad is not None:
            summed = f32(acc) + f32(grad)
        elif acc is not None:
            summed = f32(acc)
        elif grad is not None:
            summed = f32(grad)
        else:
            summed = np.zeros(p.shape, np.float32)
        g32 = summed * G + W * f32(p)
        v32 = M * f32(m) + g32
        p32 = f32(p) - L * (g32 + M * v32) if nesterov else f32(p) - L * v32
        # magnitudes of the terms (finite parts), for the error bound and the overflow zone
        a_s = np.abs(finite0(acc) if acc is not None else 0.0) + np.abs(finite0(grad) if grad is not None else 0.0)
        lr_, mom_, gs_, wd_ = (abs(finite0(x)) for x in (lr, mom, gs, wd))
        pf, mf = np.abs(finite0(p)), np.abs(finite0(m))
        mag_g = a_s * gs_ + wd_ * pf
        mag_v = mom_ * mf + mag_g
        mag_p = pf + lr_ * ((mag_g + mom_ * mag_v) if nesterov else mag_v)
        terms = [
            a_s,
            a_s * gs_,
            wd_ * pf,
            mom_ * mf,
            mag_g,
            mag_v,
            lr_ * mag_v,
            mom_ * mag_v,
            lr_ * (mag_g + mom_ * mag_v),
        ]
        near = np.zeros(p.shape, bool)
        for t in terms:
            near = near | (np.broadcast_to(t, p.shape) >= NEAR_OVERFLOW)
        amp = (1 + lr_) * (1 + mom_) ** 2 * (1 + gs_) * (1 + wd_)
        bound_v = 16 * U32 * mag_v + 16 * ETA * amp
        bound_p = 16 * U32 * mag_p + 16 * ETA * amp
    check_values(after["moment"], ref_v, v32, bound_v, near, what + " moment")
    check_values(after["param"], ref_p, p32, bound_p, near, what + " param")
    if acc is not None:
        assert not np.any(after["acc"]), f"{what}: accumulator not zeroed"


# ============================================================== the tests


def copies(arrays):
    return None if arrays is None else [np.array(a, copy=True) for a in arrays]


def count_example():
    _examples_run["count"] += 1


def note_valid_call(pool, arrays, threads, outputs):
    """Statistics of a valid call (what the examples covered)."""
    arrays = [a for a in arrays if a is not None]
    if threads == 2 and sum(a.size for a in outputs) >= BIG:
        _examples_run["two_threads"] += 1
    if len({id(pool.owner[id(a)]) for a in arrays if a.size}) < len([a for a in arrays if a.size]):
        _examples_run["aliased_valid"] += 1
    if any(a.dtype != np.float32 for a in arrays):
        _examples_run["reduced_grad"] += 1
    if any(not np.all(np.isfinite(a)) for a in outputs):
        _examples_run["nonfinite_out"] += 1


def list_kinds(draw, roles, clean):
    kinds = {r: draw(st.sampled_from(LIST_KINDS if clean else LIST_KINDS * 3 + BAD_LIST_KINDS)) for r in roles}
    if clean and draw(st.integers(0, 15)) == 0:
        kinds[draw(st.sampled_from(roles))] = draw(st.sampled_from(BAD_LIST_KINDS))
    return kinds


N_TENSORS = st.sampled_from([0, 1, 1, 2, 3, 5, 12, 40])


@st.composite
def accumulate_case(draw):
    clean = draw(st.integers(0, 4)) > 0
    n = draw(N_TENSORS)
    specs = draw(tensor_specs(["acc", "grad"], n, clean))
    kinds = list_kinds(draw, ["acc", "grad"], clean)
    scale = draw(scalar_st(valid_only=clean))
    valid_flags = [False, False, True, True, np.bool_(True), np.bool_(False)]
    overwrite = draw(st.sampled_from(valid_flags if clean else valid_flags * 2 + [1, 0, None, "yes", 1.0]))
    return specs, kinds, scale, overwrite


@st.composite
def flush_case(draw):
    clean = draw(st.integers(0, 4)) > 0
    n = draw(N_TENSORS)
    roles = ["param", "moment", "acc", "grad"]
    specs = draw(tensor_specs(roles, n, clean))
    kinds = list_kinds(draw, roles, clean)
    absent = draw(st.sampled_from([(), (), (), ("acc",), ("grad",), ("acc", "grad")]))
    scalars = {
        k: draw(st.one_of(st.floats(0, 1), st.floats(0, 1), scalar_st(valid_only=clean)))
        for k in ("lr", "momentum", "grad_scale")
    }
    wd_kind = draw(
        st.sampled_from(
            ["scalar", "scalar", "list", "array1d", "array0d"] + ([] if clean else ["short_list", "array2d"])
        )
    )
    wd_values = [
        draw(st.one_of(st.floats(0, 0.1), st.floats(0, 0.1), scalar_st(valid_only=clean))) for _ in range(max(n, 1))
    ]
    nesterov = draw(st.booleans())
    return specs, kinds, absent, scalars, (wd_kind, wd_values), nesterov


def run_and_check(call, pool, predicted_ok, check):
    before = pool.snapshot()
    try:
        call()
    except (TypeError, ValueError) as e:
        assert not predicted_ok, f"valid call rejected: {type(e).__name__}: {e}"
        assert pool.snapshot() == before, f"rejected call ({type(e).__name__}: {e}) wrote into an array"
        _examples_run["rejected"] += 1
        return
    assert predicted_ok, "invalid call accepted"
    check()
    _examples_run["checked"] += 1


@pytest.mark.parametrize("_", [0])
def test_accumulate_property(kernel_config, _):
    isa, threads = kernel_config
    _examples_run["tests"] += 1

    @SETTINGS
    @given(accumulate_case())
    def prop(case):
        count_example()
        specs, kinds, scale, overwrite = case
        pool = Pool()
        lists = build_lists(pool, specs, ["acc", "grad"], kinds)
        acc, grad = lists["acc"], lists["grad"]
        ok_scale, scale32 = real_scalar(scale)
        ok = lists_valid(lists, ["acc", "grad"]) and ok_scale and is_bool(overwrite)
        if ok:
            ok = (
                all(well_formed_array(a, True, False) for a in acc)
                and all(well_formed_array(g, False, True) for g in grad)
                and overlap_free([(a, True) for a in acc] + [(g, False) for g in grad])
            )
        acc0, grad0 = (copies(acc), copies(grad)) if ok else (None, None)

        def check():
            note_valid_call(pool, list(acc) + list(grad), threads, acc)
            for i, (a0, g0, a, g) in enumerate(zip(acc0, grad0, acc, grad)):
                assert g.tobytes() == g0.tobytes(), f"grad[{i}] was written"
                # overwrite: the result is 0 + scale * grad whatever acc held (NaN, inf, ...)
                before = np.zeros(a0.shape, np.float32) if overwrite else a0
                check_accumulate_result(
                    before, g0, a, scale32, f"[{isa}, {threads} thr] acc[{i}] {a.shape} {g.dtype} overwrite {overwrite}"
                )

        run_and_check(lambda: _C.accumulate(acc, grad, scale, overwrite=overwrite), pool, ok, check)

    prop()


def make_weight_decay(kind, values, n):
    if kind == "scalar":
        return values[0]
    if kind == "list":
        return list(values[:n])
    if kind == "short_list":
        return list(values[: max(n - 1, 0)]) if n else [0.1]
    if kind == "array1d":
        return np.array([float(v) if real_scalar(v)[0] else 0.0 for v in values[:n]], np.float64)
    if kind == "array0d":
        return np.array(float(values[0]) if real_scalar(values[0])[0] else 0.5)
    return np.zeros((n, 1))  # array2d


@pytest.mark.parametrize("_", [0])
def test_momentum_flush_property(kernel_config, _):
    isa, threads = kernel_config
    _examples_run["tests"] += 1

    @SETTINGS
    @given(flush_case())
    def prop(case):
        count_example()
        specs, kinds, absent, scalars, (wd_kind, wd_values), nesterov = case
        roles = ["param", "moment", "acc", "grad"]
        pool = Pool()
        lists = build_lists(pool, specs, roles, kinds)
        for role in absent:
            lists[role] = None
        n = len(specs)
        wd = make_weight_decay(wd_kind, wd_values, n)
        param, moment, acc, grad = (lists[r] for r in roles)

        # the contract
        s32, ok = {}, True
        for k, v in scalars.items():
            good, s32[k] = real_scalar(v)
            ok &= good
        ok &= lists_valid(lists, roles, optional=("acc", "grad"))
        if ok:
            n = len(param)
            if wd_kind in ("scalar", "array0d"):
                good, w = real_scalar(wd if wd_kind == "scalar" else wd.item())
                wd_list = [w] * n
                ok &= good
            elif wd_kind == "array2d":
                ok = False
            else:
                conv = [real_scalar(v) for v in wd]
                ok &= len(wd) == n and all(c[0] for c in conv)
                wd_list = [c[1] for c in conv]
        if ok:
            present = [(param, True, False), (moment, True, False)]
            if acc is not None:
                present.append((acc, True, False))
            if grad is not None:
                present.append((grad, False, True))
            ok = all(well_formed_array(a, w, g) for lst, w, g in present for a in lst) and overlap_free(
                [(a, w) for lst, w, _ in present for a in lst]
            )
        before = {r: copies(lists[r]) if ok else None for r in roles}

        def check():
            note_valid_call(pool, [a for r in roles if lists[r] is not None for a in lists[r]], threads, param)
            for i in range(len(param)):
                b = {r: None if before[r] is None else before[r][i] for r in roles}
                a = {r: None if lists[r] is None else lists[r][i] for r in roles}
                if grad is not None:
                    assert a["grad"].tobytes() == b["grad"].tobytes(), f"grad[{i}] was written"
                s = dict(s32, weight_decay=wd_list[i], nesterov=bool(nesterov))
                what = (
                    f"[{isa}, {threads} thr] tensor {i} {param[i].shape} acc {acc is not None} grad "
                    f"{None if grad is None else grad[i].dtype} nesterov {bool(nesterov)}"
                )
                check_flush_result(b, a, s, what)

        run_and_check(
            lambda: _C.momentum_update(param, moment, acc, grad, weight_decay=wd, nesterov=nesterov, **scalars),
            pool,
            ok,
            check,
        )

    prop()


# ============================================================== adamw_flush

ADAMW_ROLES = ["param", "exp_avg", "exp_avg_sq", "acc", "grad"]


def adamw_scalar_ok(name, x):
    """(valid, float value) of one adamw_flush hyper-parameter, from the contract."""
    good, v32 = real_scalar(x)
    if not good:
        return False, None
    v = float(x)
    if not np.isfinite(v) or not np.isfinite(v32):
        return False, None
    if name == "lr":
        return v >= 0, v
    if name in ("beta1", "beta2"):
        return 0 <= v < 1, v
    if name == "eps":
        return v > 0 and v32 > 0, v
    return True, v  # grad_scale


def step_ok(x):
    return not isinstance(x, (bool, np.bool_)) and isinstance(x, (int, np.integer)) and x >= 1


@st.composite
def adamw_case(draw):
    clean = draw(st.integers(0, 4)) > 0
    n = draw(N_TENSORS)
    specs = draw(tensor_specs(ADAMW_ROLES, n, clean))
    kinds = list_kinds(draw, ADAMW_ROLES, clean)
    absent = draw(st.sampled_from([(), (), (), ("acc",), ("grad",), ("acc", "grad")]))
    anything = scalar_st(valid_only=False)
    scalars = {
        "lr": draw(st.one_of(st.floats(0, 1), st.floats(0, 1e-2), *([] if clean else [anything]))),
        "beta1": draw(
            st.one_of(
                st.floats(0, 1, exclude_max=True), st.sampled_from([0.0, 0.9, 0.5]), *([] if clean else [anything])
            )
        ),
        "beta2": draw(
            st.one_of(
                st.floats(0, 1, exclude_max=True), st.sampled_from([0.0, 0.999, 0.99]), *([] if clean else [anything])
            )
        ),
        "eps": draw(st.one_of(st.floats(1e-8, 1.0), st.sampled_from([1e-8, 1e-6]), *([] if clean else [anything]))),
        "grad_scale": draw(st.one_of(st.floats(-2, 2), st.sampled_from([1.0, 0.25]), *([] if clean else [anything]))),
    }
    step = draw(
        st.sampled_from([1, 1, 2, 10, 1000, np.int64(3), 10**30] + ([] if clean else [0, -1, 1.5, True, None, "1"]))
    )
    bias_correction = draw(st.sampled_from([True, False, np.bool_(True)] + ([] if clean else [1, None])))
    wd_kind = draw(
        st.sampled_from(
            ["scalar", "scalar", "list", "array1d", "array0d"] + ([] if clean else ["short_list", "array2d"])
        )
    )
    wd_values = [
        draw(st.one_of(st.floats(0, 0.1), st.floats(0, 0.1), scalar_st(valid_only=clean))) for _ in range(max(n, 1))
    ]
    return specs, kinds, absent, scalars, step, bias_correction, (wd_kind, wd_values)


def check_adamw_result(before, after, s, what):
    """before/after: dicts of the roles (acc/grad may be None); s: the call's scalars (valid).

    Elements whose finite intermediates leave float32's comfortable range (>= 2**100, or non-zero
    below 2**-100: overflow decided by FMA contraction, subnormal rounding amplified by the
    division) are not compared; every other element must have the non-finite class of the float32
    replay of the formula and, when finite, lie within the error bound of the float64 reference."""
    p, m0, v0, acc, grad = (before[r] for r in ADAMW_ROLES)
    with np.errstate(all="ignore"):
        ref_p, ref_m, ref_v, _ = ref_adamw_flush(p, m0, v0, acc, grad, **s)
        lr, b1, b2, eps, wd, gs = (to_f32(s[k]) for k in ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_scale"))
        if s["bias_correction"]:
            bc1, bc2 = to_f32(1.0 - float(s["beta1"]) ** s["step"]), to_f32(1.0 - float(s["beta2"]) ** s["step"])
        else:
            bc1 = bc2 = 1.0
        F = np.float32
        summed = np.zeros(p.shape, np.float32)
        if acc is not None:
            summed = f32(acc)
        if grad is not None:
            summed = summed + f32(grad) if acc is not None else f32(grad)
        g32 = summed * F(gs)
        m32 = F(b1) * f32(m0) + (F(1) - F(b1)) * g32
        v32 = F(b2) * f32(v0) + (F(1) - F(b2)) * g32 * g32
        u32 = (m32 / F(bc1)) / (np.sqrt(v32) / np.sqrt(F(bc2)) + F(eps))
        p32 = f32(p) - F(lr) * F(wd) * f32(p) - F(lr) * u32
        # magnitudes (finite parts) of every intermediate, float64
        sm = (np.abs(finite0(acc)) if acc is not None else 0.0) + (np.abs(finite0(grad)) if grad is not None else 0.0)
        g_ = sm * abs(gs)
        terms_m = abs(b1) * np.abs(finite0(m0)) + (1 - b1) * g_
        terms_v = b2 * np.abs(finite0(v0)) + (1 - b2) * g_ * g_
        den = np.sqrt(np.abs(finite0(ref_v))) / np.sqrt(bc2) + eps
        u_mag = terms_m / bc1 / den
        inter = [
            sm,
            g_,
            terms_m,
            terms_v,
            np.abs(finite0(ref_m)),
            np.abs(finite0(ref_v)),
            den,
            u_mag,
            np.abs(finite0(p)),
            lr * abs(wd) * np.abs(finite0(p)),
            lr * u_mag,
            np.abs(finite0(ref_p)),
            (1 - b2) * g_ * g_,
            (1 - b1) * g_,
        ]
        fuzzy = np.zeros(p.shape, bool)
        for t in inter:
            t = np.broadcast_to(t, p.shape)
            fuzzy |= (t >= 2.0**100) | ((t > 0) & (t < 2.0**-100))
        bound_m = 8 * U32 * terms_m
        bound_v = 8 * U32 * terms_v
        bound_p = 32 * U32 * (np.abs(finite0(p)) * (1 + lr * abs(wd)) + lr * u_mag)
    for name, out, ref64, ref32, bound in (
        ("exp_avg", after["exp_avg"], ref_m, m32, bound_m),
        ("exp_avg_sq", after["exp_avg_sq"], ref_v, v32, bound_v),
        ("param", after["param"], ref_p, p32, bound_p),
    ):
        o = out.astype(np.float64).ravel()
        r64, r32 = np.asarray(ref64, np.float64).ravel(), np.asarray(ref32).astype(np.float64).ravel()
        b, fz = np.broadcast_to(bound, out.shape).ravel(), fuzzy.ravel()
        c_out, c_ref = classify(o), classify(r32)
        bad = ~fz & (c_out != c_ref)
        with np.errstate(invalid="ignore"):
            bad |= ~fz & (c_out == 0) & (c_ref == 0) & ~(np.abs(o - r64) <= b)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AssertionError(
                f"{what} {name}: {int(bad.sum())} wrong element(s); first at {i}: kernel {o[i]!r}, "
                f"float64 reference {r64[i]!r}, float32 replay {r32[i]!r}, bound {b[i]:.3g}"
            )
    if acc is not None:
        assert not np.any(after["acc"]), f"{what}: accumulator not zeroed"


@pytest.mark.parametrize("_", [0])
def test_adamw_flush_property(kernel_config, _):
    isa, threads = kernel_config
    _examples_run["tests"] += 1

    @SETTINGS
    @given(adamw_case())
    def prop(case):
        count_example()
        specs, kinds, absent, scalars, step, bias_correction, (wd_kind, wd_values) = case
        pool = Pool()
        lists = build_lists(pool, specs, ADAMW_ROLES, kinds)
        for role in absent:
            lists[role] = None
        # second moments are non-negative in any real run (sums of squares): keep them so, except
        # where a NaN/inf special was drawn
        if isinstance(lists["exp_avg_sq"], (list, tuple)):
            for a in lists["exp_avg_sq"]:
                if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.flags.writeable:
                    with np.errstate(invalid="ignore"):
                        np.abs(a, out=a)
        n = len(specs)
        wd = make_weight_decay(wd_kind, wd_values, n)
        param, exp_avg, exp_avg_sq, acc, grad = (lists[r] for r in ADAMW_ROLES)

        # the contract
        ok, s = True, {}
        for k, v in scalars.items():
            good, s[k] = adamw_scalar_ok(k, v)
            ok &= good
        ok &= step_ok(step) and is_bool(bias_correction)
        ok &= lists_valid(lists, ADAMW_ROLES, optional=("acc", "grad"))
        if ok:
            n = len(param)
            if wd_kind in ("scalar", "array0d"):
                good, w = real_scalar(wd if wd_kind == "scalar" else wd.item())
                wd_list = [w] * n
                ok &= good and bool(np.isfinite(w))  # checked even for no tensors
            elif wd_kind == "array2d":
                ok = False
            else:
                conv = [real_scalar(v) for v in wd]
                ok &= len(wd) == n and all(c[0] and np.isfinite(c[1]) for c in conv)
                wd_list = [c[1] for c in conv]
        if ok:
            present = [(param, True, False), (exp_avg, True, False), (exp_avg_sq, True, False)]
            if acc is not None:
                present.append((acc, True, False))
            if grad is not None:
                present.append((grad, False, True))
            ok = all(well_formed_array(a, w, g) for lst, w, g in present for a in lst) and overlap_free(
                [(a, w) for lst, w, _ in present for a in lst]
            )
        before = {r: copies(lists[r]) if ok else None for r in ADAMW_ROLES}

        def check():
            note_valid_call(pool, [a for r in ADAMW_ROLES if lists[r] is not None for a in lists[r]], threads, param)
            for i in range(len(param)):
                b = {r: None if before[r] is None else before[r][i] for r in ADAMW_ROLES}
                a = {r: None if lists[r] is None else lists[r][i] for r in ADAMW_ROLES}
                if grad is not None:
                    assert a["grad"].tobytes() == b["grad"].tobytes(), f"grad[{i}] was written"
                kw = dict(s, weight_decay=wd_list[i], step=int(step), bias_correction=bool(bias_correction))
                what = (
                    f"[{isa}, {threads} thr] tensor {i} {param[i].shape} acc {acc is not None} grad "
                    f"{None if grad is None else grad[i].dtype} {kw}"
                )
                check_adamw_result(b, a, kw, what)

        run_and_check(
            lambda: _C.adamw_update(
                param,
                exp_avg,
                exp_avg_sq,
                acc,
                grad,
                weight_decay=wd,
                step=step,
                bias_correction=bias_correction,
                **scalars,
            ),
            pool,
            ok,
            check,
        )

    prop()
