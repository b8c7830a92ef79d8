"""Worker for tests/distributed/test_sharded_kill_resume.py: a sharded run that checkpoints every
micro-step on every rank, can kill itself, and resumes from the last step every rank saved.

    msrun --worker_num=2 ... tests/distributed/shard_kill_worker.py --out DIR --dir CKPT \
        --shard optimizer [--kill-rank R --kill-at K]

GradAccumCell + FusedAdamW (clip) with shard=..., GRAPH mode, the uneven micro-batches of
shard_worker (3 windows of 2 micro-steps). After micro-step k (1-based) rank r writes
``CKPT/r<r>-s<k>.ckpt`` (save_checkpoint_atomic). At start every rank loads its own checkpoint
of the last step for which every rank has one (a killed rank may lag its peer by a step), and
continues from there. ``--kill-rank R --kill-at K``: rank R kills itself (SIGKILL) right after
writing step K -- mid-window when K is odd. Writes ``DIR/rank<r>.npz`` (final weights and the
optimizer state) and ``DIR/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before mindspore is imported

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor  # noqa: E402

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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--shard", default="optimizer")
    ap.add_argument("--kill-rank", type=int, default=-1)
    ap.add_argument("--kill-at", type=int, default=-1)
    args = ap.parse_args(argv)

    from mindspore.communication import get_group_size, get_rank, init

    import mindspore_accum as ma

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = sw._adamw_cell(args.shard)
    start = last_common_step(args.dir, world)
    if start:
        ms.load_checkpoint(os.path.join(args.dir, f"r{rank}-s{start}.ckpt"), net=cell)
    x, y = sw.dw.make_data()
    os.makedirs(args.dir, exist_ok=True)
    steps = sw.schedule(rank)
    for k in range(start, len(steps)):
        first, size = steps[k]
        cell(Tensor(x[first : first + size]), Tensor(y[first : first + size]))
        ma.save_checkpoint_atomic(cell, os.path.join(args.dir, f"r{rank}-s{k + 1}.ckpt"))
        if rank == args.kill_rank and k + 1 == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    state = {p.name: p.asnumpy() for p in cell.get_parameters()}
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, f"rank{rank}.npz"), **state)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": world, "resumed_from": start}, f)


if __name__ == "__main__":
    sys.exit(main())
