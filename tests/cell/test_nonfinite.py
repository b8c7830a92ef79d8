"""Non-finite gradients WITHOUT loss scaling (issue 5): GradAccumCell(nonfinite="skip"|"raise").

A window with a non-finite gradient anywhere (here: a nan input in a middle micro-batch, or an
inf input in the last one, which the fused path checks separately) is skipped as a whole:
weights, momenta and the optimizer step stay bit-identical, the micro-step and item counters are
reset, `skipped_updates` counts it. "skip" warns (RuntimeWarning) once per skipped window; "raise"
raises FloatingPointError at the end of that window and training continues correctly after it.
The end state equals, bit for bit, a cell trained on the finite windows only. In GRAPH_MODE and
PYNATIVE_MODE, with FusedMomentum (fused last add) and nn.Momentum (optimizer path).
"""

import warnings

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import FusedMomentum, GradAccumCell
from tests.cell.accum_models import Mlp

STEPS = 3
WINDOWS = 5
POISON = {1: (1, np.nan), 3: (2, np.inf)}  # window: (micro-batch, value)


def make_cell(opt_name, nonfinite):
    net = Mlp()
    rng = np.random.default_rng(0)
    for p in net.trainable_params():
        p.set_data(Tensor((rng.standard_normal(p.shape) * 0.4).astype(np.float32)))
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    params = net.trainable_params()
    opt = (
        FusedMomentum(params, 0.1, 0.9, weight_decay=1e-3)
        if opt_name == "FusedMomentum"
        else nn.Momentum(params, 0.1, 0.9, weight_decay=1e-3)
    )
    cell = GradAccumCell(loss, opt, STEPS, nonfinite=nonfinite)
    cell.set_train()
    return cell, net


def micro(window, j, poisoned=True):
    rng = np.random.default_rng(100 * window + j)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    if poisoned and POISON.get(window, (None,))[0] == j:
        x[1, 2] = POISON[window][1]
    return Tensor(x), Tensor(rng.integers(0, 3, (4,)).astype(np.int32))


def state(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def finite_windows_reference(opt_name):
    cell, _ = make_cell(opt_name, "skip")
    for w in range(WINDOWS):
        if w not in POISON:
            for j in range(STEPS):
                cell(*micro(w, j))
    return state(cell)


def check_skipped_window(before, after, skipped):
    assert int(after["accumulation.skipped_updates"]) == skipped
    assert int(after["accumulation.micro_step"]) == 0 and int(after["accumulation.items"]) == 0
    for name, value in after.items():
        # (the accumulators keep the skipped window's values: the next window's first micro-batch
        # overwrites them, so they are never read again)
        if not name.startswith(("accumulation.", "accumulators.")):  # weights, moments, step, lr
            assert value.tobytes() == before[name].tobytes(), f"{name} changed in a skipped window"


# the counters of skipped windows (the finite-windows run skipped none)
SKIP_COUNTERS = ("accumulation.skipped_updates", "accumulation.skips_by_reason", "accumulation.reported_skips")


def check_end_state(got, reference, skipped):
    assert int(got["accumulation.skipped_updates"]) == skipped
    # every skip was non-finite, and every one was reported (warned or raised) by the host
    assert got["accumulation.skips_by_reason"].tolist() == [skipped, 0]
    assert got["accumulation.reported_skips"].tolist() == [skipped, 0]
    for name, value in got.items():
        if value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), f"{name} is not finite"
        if name not in SKIP_COUNTERS:
            assert value.tobytes() == reference[name].tobytes(), f"{name} differs from the finite-windows run"


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_skip_warns_counts_and_continues(mode, opt_name):
    reference = finite_windows_reference(opt_name)
    cell, _ = make_cell(opt_name, "skip")
    skipped = 0
    for w in range(WINDOWS):
        before = state(cell)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for j in range(STEPS):
                cell(*micro(w, j))
        ours = [c for c in caught if issubclass(c.category, RuntimeWarning) and "non-finite" in str(c.message)]
        if w in POISON:
            skipped += 1
            assert len(ours) == 1, [str(c.message) for c in caught]
            assert f"{skipped} window(s) skipped" in str(ours[0].message)
            assert ours[0].filename == __file__  # the warning points at the caller's line
            check_skipped_window(before, state(cell), skipped)
        else:
            assert not ours, [str(c.message) for c in ours]
            assert int(cell.skipped_updates.asnumpy()) == skipped
    check_end_state(state(cell), reference, skipped=2)


@pytest.mark.parametrize("opt_name", ["FusedMomentum", "Momentum"])
def test_raise_raises_at_window_end_resets_and_continues(mode, opt_name):
    reference = finite_windows_reference(opt_name)
    cell, _ = make_cell(opt_name, "raise")
    skipped = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "raise" never (also) warns
        for w in range(WINDOWS):
            before = state(cell)
            for j in range(STEPS - 1):
                cell(*micro(w, j))
            if w in POISON:
                skipped += 1
                with pytest.raises(FloatingPointError, match="non-finite"):
                    cell(*micro(w, STEPS - 1))
                check_skipped_window(before, state(cell), skipped)
            else:
                cell(*micro(w, STEPS - 1))
    check_end_state(state(cell), reference, skipped=2)


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_flush_of_a_non_finite_partial_window(mode, nonfinite):
    cell, _ = make_cell("FusedMomentum", nonfinite)
    for j in range(STEPS):  # one finite window
        cell(*micro(0, j))
    cell(*micro(1, 0))
    cell(*micro(1, 1))  # nan: the partial window of 2 is non-finite
    before = state(cell)
    assert cell.pending == 2
    if nonfinite == "skip":
        with pytest.warns(RuntimeWarning, match="non-finite"):
            assert cell.flush() is False
    else:
        with pytest.raises(FloatingPointError):
            cell.flush()
    check_skipped_window(before, state(cell), 1)
    assert cell.flush() is False  # nothing pending any more
    cell(*micro(2, 0))
    assert cell.flush() is True  # a finite partial window is applied
    assert all(np.all(np.isfinite(p.asnumpy())) for p in cell.get_parameters() if p.dtype == ms.float32)


def test_invalid_policy_is_rejected():
    net = Mlp()
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    with pytest.raises(ValueError, match="nonfinite"):
        GradAccumCell(loss, FusedMomentum(net.trainable_params(), 0.1, 0.9), 2, nonfinite="ignore")
