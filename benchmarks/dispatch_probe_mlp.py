"""Paired, interleaved in one process: what each micro-step graph costs, MLP 6 x Dense(W).
Usage: python benchmarks/dispatch_probe_mlp.py [WIDTH=2048] [REPEATS=15]; prints | graph | median ms | min ms |."""
import os, sys, time, statistics
os.environ.setdefault("ONEDNN_MAX_CPU_ISA","AVX2"); os.environ.setdefault("GLOG_v","3")
import numpy as np, mindspore as ms
from mindspore import nn, ops, Tensor
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from mindspore_accum import GradAccumCell, FusedMomentum
W = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
def mk():
    ms.set_seed(0)
    layers = []
    for i in range(6):
        layers.append(nn.Dense(W, W))
        if i < 5: layers.append(nn.ReLU())
    net = nn.SequentialCell(layers)
    return net, nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
rs = np.random.RandomState(0)
x = Tensor(rs.randn(16, W).astype(np.float32)); y = Tensor(rs.randint(0, W, 16).astype(np.int32))
fns = {}
net, lc = mk(); cell = GradAccumCell(lc, FusedMomentum(net.trainable_params(), 0.01, 0.9), 4)
fns["ours _graph_micro_step"] = lambda: cell._graph_micro_step(x, y).asnumpy()
net2, lc2 = mk(); opt2 = FusedMomentum(net2.trainable_params(), 0.01, 0.9); tc = nn.TrainOneStepCell(lc2, opt2)
fns["TrainOneStepCell (GradOperation+sens, optimizer)"] = lambda: tc(x, y).asnumpy()
gf = ms.value_and_grad(lc2, None, opt2.parameters)
def f(*a): return gf(*a)
jf = ms.jit(f)
fns["jit value_and_grad returning grads"] = lambda: jf(x, y)[0].asnumpy()
go = ops.GradOperation(get_by_list=True)
w2 = opt2.parameters
def f2(a, b):
    return lc2(a, b), go(lc2, w2)(a, b)
jf2 = ms.jit(f2)
fns["jit GradOperation returning grads"] = lambda: jf2(x, y)[0].asnumpy()
def f3(a, b):
    l, g = gf(a, b)
    return ops.depend(l, opt2(g))
jf3 = ms.jit(f3)
fns["jit value_and_grad + optimizer in-graph"] = lambda: jf3(x, y).asnumpy()
class GradCell(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)
        self.net = lc2; self.w = opt2.parameters; self.opt = opt2
        self.gf = ms.value_and_grad(lc2, None, opt2.parameters)
    def construct(self, a, b):
        l, g = self.gf(a, b)
        return ops.depend(l, self.opt(g))
gc = GradCell()
fns["Cell: value_and_grad + optimizer (construct)"] = lambda: gc(x, y).asnumpy()
class AccCell(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)
        self.c = cell
    def construct(self, a, b):
        return self.c._micro_step(a, b)
ac = AccCell()
fns["Cell: ours _micro_step (construct)"] = lambda: ac(x, y).asnumpy()
for k, fn in fns.items():
    for _ in range(3): fn()
ts = {k: [] for k in fns}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 15):
    for k, fn in fns.items():
        t = time.perf_counter(); fn(); ts[k].append(time.perf_counter() - t)
for k, v in ts.items():
    print(f"| {k} | {statistics.median(v)*1e3:.1f} | {min(v)*1e3:.1f} |")
