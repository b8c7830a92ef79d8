"""Paired, interleaved in one process: ResNet50-CIFAR micro-step, batch 32: ours via @ms.jit method,
ours via nn.Cell construct, TrainOneStepCell."""
import os, sys, time, statistics
os.environ.setdefault("ONEDNN_MAX_CPU_ISA","AVX2"); os.environ.setdefault("GLOG_v","3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import numpy as np, mindspore as ms
from mindspore import nn, ops, Tensor
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from mindspore_accum import GradAccumCell, FusedMomentum
from resnet50 import ResNet50
def mk():
    ms.set_seed(0); net = ResNet50(num_classes=10)
    return net, nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
rs = np.random.RandomState(0)
x = Tensor(rs.randn(32, 3, 32, 32).astype(np.float32)); y = Tensor(rs.randint(0, 10, 32).astype(np.int32))
net, lc = mk(); cell = GradAccumCell(lc, FusedMomentum(net.trainable_params(), 0.01, 0.9, weight_decay=5e-4), 4)
cell.set_train()
class AccCell(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False); self.c = cell
    def construct(self, a, b):
        return self.c._micro_step(a, b)
ac = AccCell(); ac.set_train()
net2, lc2 = mk(); tc = nn.TrainOneStepCell(lc2, FusedMomentum(net2.trainable_params(), 0.01, 0.9, weight_decay=5e-4)); tc.set_train()
fns = {"ours micro-step via @ms.jit (_graph_micro_step)": lambda: cell._graph_micro_step(x, y).asnumpy(),
       "ours micro-step via nn.Cell construct": lambda: ac(x, y).asnumpy(),
       "TrainOneStepCell (FusedMomentum)": lambda: tc(x, y).asnumpy()}
for k, fn in fns.items():
    t = time.perf_counter(); fn(); print(f"first call {k}: {time.perf_counter()-t:.2f} s", flush=True)
ts = {k: [] for k in fns}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for k, fn in fns.items():
        t = time.perf_counter(); fn(); ts[k].append(time.perf_counter() - t)
for k, v in ts.items():
    print(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {', '.join(f'{t:.2f}' for t in v)} |", flush=True)
