"""Worker of tests/cell/test_kill_resume.py: trains a tiny BatchNorm-free model with GradAccumCell +
FusedMomentum (accumulation 3) for a fixed sequence of micro-batches, checkpointing the whole
training state after EVERY micro-step with mindspore_accum.save_checkpoint_atomic. On start it
resumes from the checkpoint if there is one. At the end it flushes the partial window and writes
every Parameter of the cell to --out (.npz).

It can kill itself with SIGKILL at micro-step --kill-at, in one of these phases:
  before_save   after the step ran, before its checkpoint is written (the step is redone)
  mid_write     while the checkpoint's temporary file is half written
  before_rename after the temporary file is complete, before the rename
  after_save    right after the checkpoint is in place

Usage: python kill_resume_worker.py --mode GRAPH|PYNATIVE --dir D --out F [--kill-at K --kill-phase P]
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")  # before MindSpore is imported
os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("MSACCUM_NUM_THREADS", "1")  # the same kernel threading in every process

import warnings  # noqa: E402

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import mindspore_accum  # noqa: E402
from mindspore_accum import FusedMomentum, GradAccumCell, load_checkpoint_verified, save_checkpoint_atomic  # noqa: E402

MICRO_STEPS = 14  # 4 full windows of 3, then a partial window of 2 (flushed at the end)
POISONED = 7  # this micro-batch has an inf input: its window (6..8) is skipped
STEP_KEY = "kill_resume.micro_batches_done"


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.d1 = nn.Dense(8, 16, weight_init="normal", bias_init="zeros")
        self.d2 = nn.Dense(16, 4, weight_init="normal", bias_init="zeros")
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.d2(self.relu(self.d1(x)))


def micro_batch(i):
    rng = np.random.default_rng(1000 + i)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    if i == POISONED:
        x[0, 0] = np.inf
    return Tensor(x), Tensor(rng.integers(0, 4, (4,)).astype(np.int32))


def build():
    ms.set_seed(0)
    net = Net()
    rng = np.random.default_rng(0)  # explicit initial weights: identical in every process
    for p in net.trainable_params():
        p.set_data(Tensor((rng.standard_normal(p.shape) * 0.3).astype(np.float32)))
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    opt = FusedMomentum(net.trainable_params(), learning_rate=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    return GradAccumCell(loss, opt, 3)


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm_kill(phase):
    """Makes the next save die in `phase` (mid_write / before_rename)."""
    ckpt_module = sys.modules["mindspore_accum.checkpoint"]
    if phase == "mid_write":
        real_save = ms.save_checkpoint

        def half_save(obj, path, **kwargs):
            real_save(obj, path, **kwargs)
            with open(path, "rb") as f:
                data = f.read()
            os.chmod(path, 0o600)
            with open(path, "wb") as f:  # what the file holds while the writer is half way
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            die()

        ckpt_module.ms.save_checkpoint = half_save
    elif phase == "before_rename":

        def killed_replace(src, dst):
            die()

        ckpt_module.os.replace = killed_replace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["GRAPH", "PYNATIVE"], required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill-at", type=int, default=-1)
    ap.add_argument(
        "--kill-phase", choices=["before_save", "mid_write", "before_rename", "after_save"], default="after_save"
    )
    args = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "GRAPH" else ms.PYNATIVE_MODE, device_target="CPU")
    warnings.simplefilter("ignore", RuntimeWarning)  # the skipped window warns

    cell = build()
    cell.set_train()
    path = os.path.join(args.dir, "last.ckpt")
    start = 0
    if os.path.exists(path):
        state = load_checkpoint_verified(path)
        start = int(state.pop(STEP_KEY).asnumpy())
        not_loaded, unused = ms.load_param_into_net(cell, state, strict_load=True)
        assert not not_loaded and not unused, (not_loaded, unused)
        print(f"resumed at micro-step {start} (pending {cell.pending})", flush=True)

    for i in range(start, MICRO_STEPS):
        cell(*micro_batch(i))
        if i == args.kill_at:
            if args.kill_phase == "before_save":
                die()
            if args.kill_phase in ("mid_write", "before_rename"):
                arm_kill(args.kill_phase)
        save_checkpoint_atomic(cell, path, append_dict={STEP_KEY: i + 1})
        print(f"step {i} saved", flush=True)
        if i == args.kill_at:
            die()
    cell.flush()
    assert int(cell.skipped_updates.asnumpy()) == 1
    np.savez(args.out, **{p.name: p.asnumpy() for p in cell.get_parameters()})
    print("done", mindspore_accum.__version__, flush=True)


if __name__ == "__main__":
    main()
