"""Worker for tests/distributed/test_sharded_kill_resume.py: sharded runs that checkpoint every
micro-step on every rank, can kill themselves, and resume from the last step every rank saved.

    msrun --worker_num=2 ... tests/distributed/shard_kill_worker.py --out DIR --dir CKPT \
        --run optimizer:whole-optimizer --run optimizer:optimizer:1@3 ...

Each ``--run SHARD:NAME[:R@K]`` (in order, in one process: one msrun launch serves several runs)
is a GradAccumCell + FusedAdamW (clip) with shard=SHARD, GRAPH mode, the uneven micro-batches of
shard_worker (3 windows of 2 micro-steps), checkpointing into ``CKPT/NAME``: after micro-step k
(1-based) rank r writes ``CKPT/NAME/r<r>-s<k>.ckpt`` (save_checkpoint_atomic). At its start every
rank loads its own checkpoint of the last step for which every rank has one (a killed rank may
lag its peer by a step), and continues from there. ``R@K``: rank R kills itself (SIGKILL) right
after writing step K -- mid-window when K is odd -- which takes the whole job down. After each
completed run, ``DIR/rank<r>.npz`` (final weights and optimizer state of every completed run,
as ``NAME/<parameter>``) and ``DIR/rank<r>.json`` (``runs``: NAME -> resumed_from) are rewritten.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before mindspore is imported

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from tests.distributed import msrun  # noqa: E402
from tests.distributed import shard_worker as sw  # noqa: E402


def last_common_step(directory, world):
    """The last micro-step for which every rank wrote a checkpoint (0: none)."""
    steps = [set() for _ in range(world)]
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        m = re.fullmatch(r"r(\d+)-s(\d+)\.ckpt", name)
        if m and int(m.group(1)) < world:
            steps[int(m.group(1))].add(int(m.group(2)))
    common = set.intersection(*steps) if steps else set()
    return max(common, default=0)


def _run(shard, directory, rank, world, kill_rank=-1, kill_at=-1):
    """One run (resumed from ``directory`` if it holds checkpoints): (final state, resumed_from)."""
    import mindspore_accum as ma

    cell = sw._adamw_cell(shard)
    start = last_common_step(directory, world)
    if start:
        ms.load_checkpoint(os.path.join(directory, f"r{rank}-s{start}.ckpt"), net=cell)
    x, y = sw.dw.make_data()
    os.makedirs(directory, exist_ok=True)
    steps = sw.schedule(rank)
    for k in range(start, len(steps)):
        first, size = steps[k]
        cell(Tensor(x[first : first + size]), Tensor(y[first : first + size]))
        ma.save_checkpoint_atomic(cell, os.path.join(directory, f"r{rank}-s{k + 1}.ckpt"))
        if rank == kill_rank and k + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return {p.name: p.asnumpy() for p in cell.get_parameters()}, start


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--run", action="append", required=True, help="SHARD:NAME[:KILL_RANK@KILL_AT]")
    args = ap.parse_args(argv)

    rank, world = msrun.init_data_parallel()
    ms.set_context(mode=ms.GRAPH_MODE)
    os.makedirs(args.out, exist_ok=True)
    arrays, runs = {}, {}
    for spec in args.run:
        shard, name, *kill = spec.split(":")
        kill_rank, kill_at = (int(v) for v in kill[0].split("@")) if kill else (-1, -1)
        state, runs[name] = _run(shard, os.path.join(args.dir, name), rank, world, kill_rank, kill_at)
        arrays.update({f"{name}/{k}": v for k, v in state.items()})
        msrun.write_results(args.out, arrays, {"rank": rank, "world": world, "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
