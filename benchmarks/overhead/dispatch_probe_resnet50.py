"""Paired, interleaved in one process: ResNet50-CIFAR micro-step at batch 32, GRAPH mode --
GradAccumCell's micro-step graph against nn.TrainOneStepCell (FusedMomentum).

    python -m benchmarks.overhead.dispatch_probe_resnet50 [CALLS=5]"""

import os
import statistics
import sys
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from examples.resnet50_cifar10.model import ResNet50  # noqa: E402
from mindspore_accum import FusedMomentum, GradAccumCell  # noqa: E402


def make():
    ms.set_seed(0)
    net = ResNet50(num_classes=10)
    return net, nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))


rs = np.random.RandomState(0)
x = Tensor(rs.randn(32, 3, 32, 32).astype(np.float32))
y = Tensor(rs.randint(0, 10, 32).astype(np.int32))
net, loss_cell = make()
cell = GradAccumCell(loss_cell, FusedMomentum(net.trainable_params(), 0.01, 0.9, weight_decay=5e-4), 4)
cell.set_train()
net2, loss_cell2 = make()
plain = nn.TrainOneStepCell(loss_cell2, FusedMomentum(net2.trainable_params(), 0.01, 0.9, weight_decay=5e-4))
plain.set_train()
fns = {
    "ours: micro-step graph": lambda: cell._micro_step_graph(x, y).asnumpy(),
    "nn.TrainOneStepCell (FusedMomentum)": lambda: plain(x, y).asnumpy(),
}
for k, fn in fns.items():
    t0 = time.perf_counter()
    fn()
    print(f"first call (compilation included), {k}: {time.perf_counter() - t0:.2f} s", flush=True)
times = {k: [] for k in fns}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
print("| graph | median s | calls |\n|---|--:|---|")
for k, v in times.items():
    print(f"| {k} | {statistics.median(v):.3f} | {', '.join(f'{t:.2f}' for t in v)} |")
