"""GradAccumCell with accumulation_steps as a schedule (issue 27): the windows follow it, change
only at window boundaries, match the formula (LAMB, NumPy float64) on the growing batches, and a
mid-window checkpoint resumes bit-identically."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindspore_accum import FusedLAMB, GradAccumCell
from tests.cell.test_lamb_lars_cell import TOL, Linear2, assert_close, init, lamb_reference

# the `mode` and `backend` fixtures (both modes, both backends): tests/cell/conftest.py


def micro_batches(count, seed=3):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32))
        for _ in range(count)
    ]


def make(backend, schedule):
    net = Linear2(init())
    opt = FusedLAMB(net.trainable_params(), 0.02, weight_decay=0.01, backend=backend)
    return net, GradAccumCell(net, opt, schedule, backend=backend)


def windows(micro, sizes):
    """The concatenated batches of consecutive windows of `sizes` micro-batches."""
    xs, ys, at = [], [], 0
    for n in sizes:
        xs.append(np.concatenate([x for x, _ in micro[at : at + n]]))
        ys.append(np.concatenate([y for _, y in micro[at : at + n]]))
        at += n
    return xs, ys


@pytest.mark.parametrize(
    "schedule, sizes",
    [
        ([(0, 2), (2, 4)], [2, 2, 4, 4]),
        (lambda update: update + 1, [1, 2, 3]),
    ],
    ids=["pairs", "callable"],
)
def test_windows_follow_the_schedule_and_match_the_formula(mode, backend, schedule, sizes):
    micro = micro_batches(sum(sizes))
    net, cell = make(backend, schedule)
    seen = []
    for x, y in micro:
        cell(Tensor(x), Tensor(y))
        seen.append((cell.accumulation_steps, cell.pending))
    assert int(cell.optimizer.global_step.asnumpy().item()) == len(sizes)
    expected_seen = [(n, k + 1 if k + 1 < n else 0) for n in sizes for k in range(n)]
    assert seen == expected_seen, "the windows do not follow the schedule"
    xs, ys = windows(micro, sizes)
    expected = lamb_reference([(["w1", "w2"], lambda t: 0.02, 0.01), (["out.bias"], lambda t: 0.02, 0.0)], xs, ys)
    assert_close({p.name: p.asnumpy() for p in net.trainable_params()}, expected, "scheduled windows")
    assert TOL == 1e-5


def test_mid_window_checkpoint_resumes_the_schedule_bit_identically(mode, backend, tmp_path):
    schedule = [(0, 2), (2, 4)]
    micro = [(Tensor(x), Tensor(y)) for x, y in micro_batches(12, seed=4)]
    _, full = make(backend, schedule)
    for xb, yb in micro:
        full(xb, yb)
    expected = {p.name: p.asnumpy().copy() for p in full.get_parameters()}
    _, first = make(backend, schedule)
    for xb, yb in micro[:7]:  # windows of 2 and 2, then 3 of a window of 4
        first(xb, yb)
    assert first.pending == 3 and int(first.window_steps.asnumpy()) == 4
    path = str(tmp_path / "scheduled.ckpt")
    ms.save_checkpoint(first, path)
    _, resumed = make(backend, schedule)
    ms.load_param_into_net(resumed, ms.load_checkpoint(path))
    for xb, yb in micro[7:]:
        resumed(xb, yb)
    assert resumed.pending == 0 and resumed.accumulation_steps == 4
    for p in resumed.get_parameters():
        assert np.array_equal(p.asnumpy(), expected[p.name]), f"{p.name} differs after resume"


@pytest.mark.parametrize(
    "schedule, match",
    [
        ([], "non-empty"),
        ([(1, 2)], "the first 0"),
        ([(0, 2), (0, 4)], "strictly increasing"),
        ([(0, 0)], "int >= 1"),
        ([(0, 2.5)], "int >= 1"),
        ([(0, 2, 3)], "pairs"),
    ],
)
def test_bad_schedules_are_refused_by_name(schedule, match):
    with pytest.raises(ValueError, match=f"accumulation_steps.*{match}|{match}.*accumulation_steps"):
        make("native", schedule)


def test_a_callable_giving_a_bad_value_is_named():
    with pytest.raises(ValueError, match="accumulation_steps: the schedule gave 0 for update 0"):
        make("native", lambda update: 0)


def test_a_schedule_inside_a_compiled_graph_is_refused():
    # A user's @ms.jit (or dataset sink mode) runs the cell's construct, compiled once: it could
    # not follow a schedule, so it refuses rather than keep the first window's steps silently.
    _, cell = make("native", [(0, 2), (2, 4)])
    x, y = (Tensor(a) for a in micro_batches(1)[0])

    @ms.jit
    def step(x, y):
        return cell(x, y)

    with pytest.raises(RuntimeError, match="schedule changes between windows"):
        step(x, y)
