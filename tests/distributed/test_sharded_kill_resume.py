"""A sharded run killed mid-window and restarted from every rank's last checkpoint ends
bit-identical to the uninterrupted run (weights, the ranks' optimizer state, window counters).

Three msrun launches per shard mode (tests/distributed/shard_kill_worker.py): uninterrupted; one
rank SIGKILLs itself right after checkpointing micro-step 3 (the first micro-step of window 2:
mid-window), which takes the job down; the same command again, which resumes every rank from its
checkpoint of the last step all ranks saved (a rank's peer may be a step ahead) and finishes.
"""

import numpy as np
import pytest

from tests.distributed import msrun
from tests.distributed import shard_kill_worker as kw

WORLD = 2


@pytest.mark.parametrize("shard, kill_rank", [("optimizer", 1), ("gradients", 0)])
def test_killed_mid_window_and_resumed_is_bit_identical(tmp_path, shard, kill_rank):
    worker = kw.__file__
    whole = msrun.launch(worker, tmp_path, WORLD, ["--dir", str(tmp_path / "ck_whole"), "--shard", shard], "whole")
    ck = ["--dir", str(tmp_path / "ck"), "--shard", shard]
    rc, _, _ = msrun.run(worker, tmp_path, WORLD, ck + ["--kill-rank", str(kill_rank), "--kill-at", "3"], "killed")
    assert rc != 0, "the job with a killed worker exited 0"
    assert not (tmp_path / "killed" / f"rank{kill_rank}.json").exists()
    assert kw.last_common_step(tmp_path / "ck", WORLD) == 3
    resumed = msrun.launch(worker, tmp_path, WORLD, ck, "resumed")
    for r in range(WORLD):
        assert resumed[r][1]["resumed_from"] == 3 and whole[r][1]["resumed_from"] == 0
        a, b = whole[r][0], resumed[r][0]
        assert sorted(a) == sorted(b)
        assert any(k.startswith("adam_m.") for k in a)
        for name in a:
            assert np.array_equal(a[name], b[name]), f"rank {r}: {name} differs after the resume"
