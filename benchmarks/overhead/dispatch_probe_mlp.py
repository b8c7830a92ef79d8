"""Paired, interleaved in one process: what a GradAccumCell micro-step costs against MindSpore's
gradients-only graph, MLP 6 x Dense(W, W), batch 16, GRAPH mode.

    python -m benchmarks.overhead.dispatch_probe_mlp [WIDTH=2048] [CALLS=40]

Rows (median / min ms): ours' micro-step graph (kernels and native backends), a top-level Cell
that only returns loss and gradients (the time floor's graph), and that graph plus our accumulate
op alone -- what a micro-step must cost at least."""

import os
import statistics
import sys
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
from benchmarks.common.mlp_graphs import GradsOnly, make_mlp  # noqa: E402
from mindspore_accum import FusedMomentum, GradAccumCell  # noqa: E402
from mindspore_accum._state import zeros_like_params  # noqa: E402

W = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 40

rs = np.random.RandomState(0)
x = Tensor(rs.randn(16, W).astype(np.float32))
y = Tensor(rs.randint(0, W, 16).astype(np.int32))
fns = {}
for backend in ("kernels", "native"):
    net, loss_cell = make_mlp(W)
    cell = GradAccumCell(
        loss_cell, FusedMomentum(net.trainable_params(), 0.01, 0.9, backend=backend), 4, backend=backend
    )
    cell.set_train()
    fns[f"ours: micro-step graph ({backend} backend)"] = (lambda c: lambda: c._micro_step_graph(x, y).asnumpy())(cell)
net, loss_cell = make_mlp(W)
weights = net.trainable_params()
grads_only = GradsOnly(loss_cell, weights).set_train()
fns["MindSpore: gradients-only graph (top-level Cell)"] = lambda: grads_only(x, y)[0].asnumpy()
with_accumulate = GradsOnly(loss_cell, weights, zeros_like_params(weights, "probe_acc")).set_train()
fns["gradients-only graph + our accumulate op"] = lambda: with_accumulate(x, y)[0].asnumpy()
for fn in fns.values():
    for _ in range(15):
        fn()
times = {k: [] for k in fns}
for _ in range(CALLS):
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
print(f"| graph (MLP 6 x {W}, batch 16) | median ms | min ms |\n|---|--:|--:|")
for k, v in times.items():
    print(f"| {k} | {statistics.median(v) * 1e3:.1f} | {min(v) * 1e3:.1f} |")
