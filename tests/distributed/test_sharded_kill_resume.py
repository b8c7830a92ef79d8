"""A sharded run killed mid-window and restarted from every rank's last checkpoint ends
bit-identical to the uninterrupted run (weights, the ranks' optimizer state, window counters).

Three msrun launches for both shard modes (tests/distributed/shard_kill_worker.py; a launch's
start-up costs 10-40 s on the shared CI machine, so each launch runs several runs in turn):

1. the uninterrupted runs of "optimizer" and "gradients", then the "optimizer" run in which
   rank 1 SIGKILLs itself right after checkpointing micro-step 3 (the first micro-step of window
   2: mid-window), which takes the job down;
2. the "gradients" run in which rank 0 kills itself the same way;
3. both runs again, each resuming every rank from its checkpoint of the last step all ranks
   saved (a rank's peer may be a step ahead), to the end.
"""

import json
import os

import numpy as np
import pytest

from tests.distributed import msrun
from tests.distributed import shard_kill_worker as kw

WORLD = 2
SHARDS = ("optimizer", "gradients")
KILL_RANK = {"optimizer": 1, "gradients": 0}
KILL_AT = 3  # odd: mid-window (2 micro-steps a window)


def _records(out):
    """{rank: record} of the ranks that wrote DIR/rank<r>.json (a killed launch leaves the runs
    that completed before the kill)."""
    records = {}
    for r in range(WORLD):
        path = os.path.join(out, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                records[r] = json.load(f)
    return records


# The scheduler declares a silent worker dead after MS_NODE_TIMEOUT seconds (about 30 by
# default, most of a killed launch's time); the live worker saves step KILL_AT well within 10.
NODE_TIMEOUT_S = "10"


def _killed_launch(tmp, out, runs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MS_NODE_TIMEOUT", NODE_TIMEOUT_S)
        rc, console, elapsed = msrun.run(kw.__file__, tmp, WORLD, ["--dir", str(tmp / "ck"), *runs], out)
    print(f"\nmsrun job ({out}, killed): {elapsed:.1f} s")
    assert rc != 0, f"the job with a killed worker exited 0:\n{console[-3000:]}"
    return _records(tmp / out)


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shard_kill")
    kill = {s: f"{s}:{s}:{KILL_RANK[s]}@{KILL_AT}" for s in SHARDS}
    first = _killed_launch(
        tmp, "first", [a for s in SHARDS for a in ("--run", f"{s}:whole-{s}")] + ["--run", kill["optimizer"]]
    )
    second = _killed_launch(tmp, "second", ["--run", kill["gradients"]])
    saved = {s: kw.last_common_step(tmp / "ck" / s, WORLD) for s in SHARDS}  # before the resume adds steps
    # the uninterrupted runs' results, written before the kill of launch 1
    assert sorted(first) == list(range(WORLD)), f"launch 1 left the results of ranks {sorted(first)} only"
    whole = {}
    for r in range(WORLD):
        with np.load(tmp / "first" / f"rank{r}.npz") as f:
            whole[r] = ({k: f[k] for k in f.files}, first[r])
    resumed = msrun.launch(
        kw.__file__,
        tmp,
        WORLD,
        ["--dir", str(tmp / "ck")] + [a for s in SHARDS for a in ("--run", f"{s}:{s}")],
        "resumed",
    )
    return {"optimizer": first, "gradients": second}, saved, whole, resumed


def _run_state(arrays, name):
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(name + "/")}


@pytest.mark.parametrize("shard", SHARDS)
def test_killed_mid_window_and_resumed_is_bit_identical(launches, shard):
    killed, saved, whole, resumed = launches
    for r, record in killed[shard].items():  # rank KILL_RANK died, its peer waited for it
        assert shard not in record["runs"], (
            f"rank {r} completed the {shard} run in which rank {KILL_RANK[shard]} was killed"
        )
    assert saved[shard] == KILL_AT
    for r in range(WORLD):
        assert resumed[r][1]["runs"][shard] == KILL_AT and whole[r][1]["runs"][f"whole-{shard}"] == 0
        a, b = _run_state(whole[r][0], f"whole-{shard}"), _run_state(resumed[r][0], shard)
        assert sorted(a) == sorted(b)
        assert any(k.startswith("adam_m.") for k in a)
        for name in a:
            assert np.array_equal(a[name], b[name]), f"rank {r}: {name} differs after the resume"
