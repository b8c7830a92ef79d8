"""A checkpoint written by 0.2.1 loads into today's package and resumes bit-identically.

The fixture (tests/fixtures/ckpt_0_2_1/, written by 0.2.1's own code) holds two mid-window
checkpoints and every Parameter after 0.2.1 continued training from them; the reference here is
0.2.1's run, not today's code."""

from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor  # noqa: E402

from mindspore_accum import load_checkpoint_verified  # noqa: E402
from tests.fixtures.ckpt_0_2_1 import make_fixture  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_0_2_1"
# the state Parameters 0.3.0 added (window loss, skip reporting); a 0.2.1 file has none of them
ADDED_IN_0_3 = {
    "accumulation.loss_sum",
    "accumulation.window_loss",
    "accumulation.skips_by_reason",
    "accumulation.reported_skips",
}


@pytest.mark.parametrize("case", make_fixture.CASES)
def test_checkpoint_of_0_2_1_resumes_bit_identically(case):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cell = make_fixture.build(case)
    stored = ms.load_checkpoint(str(FIXTURE / f"{case}.ckpt"))
    # the same Parameters, by name, shape and dtype, besides those added since: the format is unchanged
    assert set(stored) == {p.name for p in cell.get_parameters()} - ADDED_IN_0_3
    for p in cell.get_parameters():
        if p.name in ADDED_IN_0_3:
            continue
        assert stored[p.name].shape == p.shape and stored[p.name].dtype == p.dtype, p.name
    load_checkpoint_verified(str(FIXTURE / f"{case}.ckpt"), net=cell)
    assert cell.pending == make_fixture.SAVE_AFTER % 3
    data = np.load(FIXTURE / "data.npz")
    for i in range(make_fixture.SAVE_AFTER, len(make_fixture.SIZES)):
        cell(Tensor(data[f"x{i}"]), Tensor(data[f"y{i}"]))
    cell.flush()
    expected = np.load(FIXTURE / f"{case}_after.npz")
    for p in cell.get_parameters():
        if p.name not in ADDED_IN_0_3:
            np.testing.assert_array_equal(p.asnumpy(), expected[p.name], err_msg=p.name)
