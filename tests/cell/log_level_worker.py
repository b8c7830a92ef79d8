"""Trains a few windows at MindSpore's default log level (run by test_default_log_level.py, in a
process without GLOG_v): ``python log_level_worker.py accum|onestep``. GRAPH then PYNATIVE, with
FusedAdamW and nn.Momentum; GradAccumCell on our kernels (with clipping, so the window end runs the
sum of squares), or nn.TrainOneStepCell on the same data for the baseline."""

import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

from mindspore_accum import FusedAdamW, GradAccumCell  # noqa: E402


def main(which: str) -> None:
    rng = np.random.default_rng(0)
    batches = [
        (Tensor(rng.standard_normal((4, 6)).astype(np.float32)), Tensor(rng.standard_normal((4, 3)).astype(np.float32)))
        for _ in range(4)
    ]
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        ms.set_context(mode=mode)
        for make_opt in (lambda p: FusedAdamW(p, 0.01), lambda p: nn.Momentum(p, 0.1, 0.9)):
            net = nn.WithLossCell(nn.Dense(6, 3), nn.MSELoss())
            opt = make_opt(net.trainable_params())
            if which == "accum":
                cell = GradAccumCell(net, opt, 2, backend="kernels", clip_global_norm=1.0)
            else:
                cell = nn.TrainOneStepCell(net, opt)
            cell.set_train()
            for x, y in batches:  # two windows of two micro-batches
                cell(x, y)
    print("trained", which)


if __name__ == "__main__":
    main(sys.argv[1])
