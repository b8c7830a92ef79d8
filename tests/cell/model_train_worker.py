"""Model.train of a GradAccumCell with FlushAtEpochEnd (run by test_model_train_checkpoint.py):

    python model_train_worker.py MODE run DIR       # 2 epochs, ModelCheckpoint per epoch into DIR
    python model_train_worker.py MODE resume DIR    # a new process: load DIR/accum-1_6.ckpt, train
                                                    # epoch 2 (initial_epoch=1)

Epochs of 6 micro-batches of 8 (48 samples), accumulation_steps 4: windows of 4 and 2 per epoch,
the 2 applied by FlushAtEpochEnd. Each writes the final weights and optimizer state to DIR/<what>.npz.
"""

import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn  # noqa: E402
from mindspore.train import CheckpointConfig, Model, ModelCheckpoint  # noqa: E402

from mindspore_accum import FlushAtEpochEnd, GradAccumCell  # noqa: E402

SAMPLES, MICRO, STEPS = 48, 8, 4
EPOCH_STEPS = SAMPLES // MICRO


def data():
    rng = np.random.default_rng(11)
    return rng.standard_normal((SAMPLES, 6)).astype(np.float32), rng.standard_normal((SAMPLES, 3)).astype(np.float32)


def dataset():
    x, y = data()
    return ds.NumpySlicesDataset({"x": x, "y": y}, shuffle=False).batch(MICRO)


def make_cell(seed):
    rng = np.random.default_rng(seed)
    net = nn.Dense(6, 3)
    for p in net.trainable_params():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    loss = nn.WithLossCell(net, nn.MSELoss())
    return GradAccumCell(loss, nn.Momentum(loss.trainable_params(), 0.1, 0.9), STEPS), net


def state(cell):
    return {p.name: p.asnumpy() for p in cell.get_parameters()}


def main(mode, what, directory):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "GRAPH" else ms.PYNATIVE_MODE)
    if what == "run":
        cell, _ = make_cell(0)
        ckpt = ModelCheckpoint(
            prefix="accum",
            directory=directory,
            config=CheckpointConfig(save_checkpoint_steps=EPOCH_STEPS, keep_checkpoint_max=10),
        )
        Model(cell).train(2, dataset(), callbacks=[FlushAtEpochEnd(cell), ckpt], dataset_sink_mode=False)
    else:
        cell, _ = make_cell(99)  # other weights: everything comes from the checkpoint
        not_loaded, _ = ms.load_param_into_net(cell, ms.load_checkpoint(os.path.join(directory, "accum-1_6.ckpt")))
        assert not not_loaded, not_loaded
        Model(cell).train(2, dataset(), callbacks=[FlushAtEpochEnd(cell)], dataset_sink_mode=False, initial_epoch=1)
    np.savez(os.path.join(directory, f"{what}.npz"), **state(cell))
    print("done", what)


if __name__ == "__main__":
    main(*sys.argv[1:4])
