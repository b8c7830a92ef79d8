"""Model.train + FlushAtEpochEnd + ModelCheckpoint: the checkpoint of each epoch holds the flushed
state, so resuming from it (in a new process, ``initial_epoch=1``) equals the uninterrupted run;
FlushAtEpochEnd after ModelCheckpoint in the callback list is refused."""

import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.train import CheckpointConfig, Model, ModelCheckpoint

from mindspore_accum import FlushAtEpochEnd
from tests.cell import model_train_worker as worker

WORKER = Path(worker.__file__).resolve()


def run_worker(mode, what, directory):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3")
    env.pop("MS_CUSTOM_AOT_WHITE_LIST", None)
    # cwd outside the source tree: the worker imports the installed package
    done = subprocess.run(
        [sys.executable, str(WORKER), mode, what, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(directory),
        timeout=600,
    )
    assert done.returncode == 0 and f"done {what}" in done.stdout, done.stdout + done.stderr
    return dict(np.load(os.path.join(directory, f"{what}.npz")))


def big_batch_weights():
    """The reference, independent of mindspore_accum: nn.Momentum stepped by a plain train step on
    each window's batch -- per epoch samples 0-31 (the window of 4) and 32-47 (the flushed 2)."""
    x, y = worker.data()
    _, net = worker.make_cell(0)  # the same initial weights
    loss = nn.WithLossCell(net, nn.MSELoss())
    opt = nn.Momentum(loss.trainable_params(), 0.1, 0.9)
    grad_fn = ms.value_and_grad(loss, None, opt.parameters)

    @ms.jit
    def step(xb, yb):
        value, grads = grad_fn(xb, yb)
        return ops.depend(value, opt(grads))

    for _ in range(2):
        for lo, hi in ((0, 32), (32, 48)):
            step(Tensor(x[lo:hi]), Tensor(y[lo:hi]))
    return {p.name: p.asnumpy() for p in net.trainable_params()}


@pytest.mark.parametrize("mode", ["GRAPH", "PYNATIVE"])
def test_resume_from_the_epoch_checkpoint_equals_the_uninterrupted_run(mode, tmp_path):
    full = run_worker(mode, "run", tmp_path)
    epoch1 = ms.load_checkpoint(str(tmp_path / "accum-1_6.ckpt"))
    # the checkpoint of epoch 1 holds the flushed state: no pending micro-batch, both updates applied
    assert int(epoch1["accumulation.micro_step"].asnumpy()) == 0
    assert int(epoch1["global_step"].asnumpy().reshape(-1)[0]) == 2
    assert int(full["global_step"].reshape(-1)[0]) == 4

    reference = big_batch_weights()
    scale = max(float(np.abs(w).max()) for w in reference.values())
    for name, w in reference.items():
        assert float(np.abs(full[name] - w).max()) <= 1e-5 * scale, f"{name}: Model.train vs big batch"

    resumed = run_worker(mode, "resume", tmp_path)  # a new process
    scale = max(float(np.abs(full[name]).max()) for name in reference)
    for name in full:
        err = float(np.abs(resumed[name].astype(np.float64) - full[name]).max())
        assert err <= 1e-6 * max(scale, 1.0), f"{name}: resumed run off the uninterrupted one by {err:.3g}"


def test_flush_after_model_checkpoint_is_refused(tmp_path):
    cell, _ = worker.make_cell(0)
    ckpt = ModelCheckpoint(prefix="accum", directory=str(tmp_path), config=CheckpointConfig(save_checkpoint_steps=6))
    with pytest.raises(ValueError, match=r"Put FlushAtEpochEnd first"):
        Model(cell).train(1, worker.dataset(), callbacks=[ckpt, FlushAtEpochEnd(cell)], dataset_sink_mode=False)
    assert cell.pending == 0 and not list(tmp_path.glob("*.ckpt")), "refused before training"


def test_flush_at_epoch_end_needs_an_accumulation_cell():
    with pytest.raises(TypeError, match="FlushAtEpochEnd takes the accumulation cell"):
        FlushAtEpochEnd(nn.Dense(2, 2))
