"""mindspore_accum._compat against the installed MindSpore's real behaviour: one test (or a few)
per function, and each fallback (the code path taken when a release lacks the private name) run
against the same facts, by hiding that name.

A failure here on a new MindSpore release names the private API that moved or changed.
"""

import binascii
import importlib
import re

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Parameter, Tensor, nn, ops  # noqa: E402

from mindspore_accum import _compat, kernels  # noqa: E402
from mindspore_accum.backends import kernel  # noqa: E402


@pytest.fixture(params=["private", "fallback"])
def hide(request, monkeypatch):
    """Runs a test twice: with MindSpore's private name, and with it hidden (``hide(module, name)``
    deletes it for the test's duration), which makes _compat take its fallback."""

    def hide_name(module, name):
        if request.param == "fallback":
            try:
                monkeypatch.delattr(importlib.import_module(module), name)
            except ImportError:  # no such module in this release: the fallback is taken anyway
                pass
        return request.param

    return hide_name


@pytest.fixture
def pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.fixture
def graph():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


# ---- version ----


def test_mindspore_version_is_the_imported_release():
    expected = tuple(int(x) for x in re.match(r"\d+(\.\d+)*", ms.__version__).group(0).split("."))
    assert _compat.mindspore_version() == expected
    assert len(expected) >= 2


# ---- parallel mode and device count ----


# ---- the optimizer decorator ----


class _Probe(nn.Optimizer):
    @_compat.opt_init_args_register
    def __init__(self, params, learning_rate, momentum, weight_decay=0.0, use_nesterov=False, loss_scale=1.0):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.seen = (momentum, use_nesterov)

    def construct(self, gradients):
        return gradients


class _ProbeLate(nn.Optimizer):
    """Decorated at test time (after the private name was hidden)."""

    def __init__(self, params, learning_rate, momentum, weight_decay=0.0, use_nesterov=False, loss_scale=1.0):
        super().__init__(learning_rate, params, weight_decay, loss_scale)
        self.seen = (momentum, use_nesterov)

    def construct(self, gradients):
        return gradients


@pytest.mark.parametrize("lr_kind", ["float", "tensor", "schedule"])
def test_opt_init_args_register_records_as_mindspore_does(hide, lr_kind):
    """Our decorator records what nn.Momentum (decorated by MindSpore itself) records."""
    path = hide("mindspore.nn.optim.optimizer", "opt_init_args_register")
    probe_class = type("ProbeNow", (_ProbeLate,), {"__init__": _compat.opt_init_args_register(_ProbeLate.__init__)})
    lr = {
        "float": 0.1,
        "tensor": Tensor(np.array([0.1, 0.05], np.float32)),
        "schedule": nn.ExponentialDecayLR(0.1, 0.9, 4),
    }[lr_kind]
    params = [Parameter(Tensor(np.ones(3, np.float32)), name=f"w_{path}_{lr_kind}")]
    ours = probe_class(params, lr, 0.9, weight_decay=1e-4)
    theirs = nn.Momentum(params, lr, 0.9, weight_decay=1e-4)
    assert ours.seen == (0.9, False)
    assert ours.init_params["params"] is params and theirs.init_params["params"] is params
    assert ours.init_learning_rate == theirs.init_learning_rate
    if lr_kind == "schedule":
        assert ours.init_learning_rate is None
    assert (
        ours.init_args
        == theirs.init_args
        == {"momentum": 0.9, "weight_decay": 1e-4, "use_nesterov": False, "loss_scale": 1.0}
    )
    if path == "private":  # the class decorated at import used MindSpore's own function
        assert _Probe(params, lr, 0.9).init_args["momentum"] == 0.9


@pytest.mark.parametrize("grouped", [False, True])
def test_optimizer_parameters_align_with_the_per_parameter_tuples(grouped):
    net = nn.SequentialCell(nn.Dense(3, 4), nn.BatchNorm1d(4), nn.Dense(4, 2))
    params = net.trainable_params()
    if grouped:
        groups = [{"params": params[:2], "weight_decay": 0.1, "lr": 0.2}, {"params": params[2:]}]
        opt = nn.Momentum(groups, learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    else:
        opt = nn.Momentum(params, learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    ours = _compat.optimizer_parameters(opt)
    assert [p.name for p in ours] == [p.name for p in params]
    assert len(opt.decay_flags) == len(ours)
    # ungrouped, nn.Optimizer exempts BatchNorm's gamma/beta from decay: the flags follow our order
    if not grouped:
        assert [flag for flag in opt.decay_flags] == [("gamma" not in p.name and "beta" not in p.name) for p in ours]
    else:
        assert len(opt.learning_rate) == len(ours)
    # the fallback (the public attribute) holds the same parameters here
    assert [p.name for p in opt.parameters] == [p.name for p in ours]


# ---- the checkpoint CRC trailer ----


def _small_cell(name):
    net = nn.Dense(3, 2)
    for i, p in enumerate(net.get_parameters()):
        p.name = f"{name}.{i}"
    return net


def test_checkpoint_crc_trailer_is_mindspores(tmp_path):
    net = _small_cell("crc")
    with_crc, without = str(tmp_path / "with.ckpt"), str(tmp_path / "without.ckpt")
    ms.save_checkpoint(net, with_crc, crc_check=True)
    ms.save_checkpoint(net, without)
    data = open(with_crc, "rb").read()

    size, stored = _compat.checkpoint_crc_trailer(with_crc)
    assert size == len(data) and stored is not None
    # the layout: marker + 10-byte big-endian CRC-32 of every byte before the marker
    trailer = len(_compat.CKPT_CRC_MARKER) + _compat.CKPT_CRC_BYTES
    assert data[-trailer : -_compat.CKPT_CRC_BYTES] == _compat.CKPT_CRC_MARKER
    assert stored == binascii.crc32(data[:-trailer]) == _compat.checkpoint_payload_crc(with_crc)
    assert _compat.checkpoint_crc_trailer(without) == (len(open(without, "rb").read()), None)
    assert _compat.checkpoint_payload_crc(without) == binascii.crc32(open(without, "rb").read())

    # MindSpore checks exactly those bytes: it loads the file, and rejects it when the stored CRC
    # no longer matches (one payload byte changed, or the CRC itself changed).
    assert sorted(ms.load_checkpoint(with_crc, crc_check=True)) == sorted(p.name for p in net.get_parameters())
    for where in (len(data) // 2, len(data) - 1):
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        bad = tmp_path / f"damaged{where}.ckpt"
        bad.write_bytes(bytes(damaged))
        assert _compat.checkpoint_crc_trailer(str(bad))[1] is not None
        with pytest.raises(ValueError, match="crc"):
            ms.load_checkpoint(str(bad), crc_check=True)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[:-5])
    assert _compat.checkpoint_crc_trailer(str(truncated)) == (len(data) - 5, None)
    tiny = tmp_path / "tiny.ckpt"
    tiny.write_bytes(b"crc")
    assert _compat.checkpoint_crc_trailer(str(tiny)) == (3, None)


# ---- host views of CPU tensors ----


# ---- waiting for PyNative's queue ----


def _slow(a):
    b = a
    for _ in range(3):
        b = ops.matmul(b, a)
    return b


@pytest.mark.parametrize("repeat", range(3))
def test_pynative_sync_waits_for_queued_ops(hide, pynative, repeat):
    """A view of a Parameter taken before an in-place AOT op shows the op's result after
    pynative_sync() (the op is queued behind a slow matmul chain)."""
    path = hide("mindspore.common.api", "_pynative_executor")
    acc = Parameter(Tensor(np.zeros(4, np.float32)), name=f"sync_{path}_{repeat}")
    view = acc.asnumpy()
    big = Tensor(np.full((384, 384), 1e-3, np.float32))
    grad = ops.reshape(_slow(big)[0, :4], (4,)) * 0.0 + 1.0
    op = kernel.custom_op("MsAccumAccumulate")
    op(Tensor(np.ones(1, np.float32)), acc, grad)
    _compat.pynative_sync()
    np.testing.assert_array_equal(view, np.ones(4, np.float32))


# ---- the JIT executor ----


def test_jit_executor_class_compiles_and_exposes_the_graph(request, hide, pynative, monkeypatch):
    """What tests/distributed/dist_worker.py relies on: every ms.jit call goes through this class's compile
    (returning the phase) and __call__, and the compiled graph can be read back."""
    if _compat.mindspore_version() >= (2, 9) and request.node.callspec.params["hide"] == "fallback":
        pytest.skip(
            "from 2.9 mindspore.common.api forwards to mindspore.graph.api, so the fallback cannot be "
            "separated; it is the only path on 2.7-2.8, where the matrix runs it"
        )
    path = hide("mindspore.graph.api", "_JitExecutor")
    executor_class = _compat.jit_executor_class()
    compiled, calls = [], []
    original_compile, original_call = executor_class.compile, executor_class.__call__

    def compile_(executor, *args, **kwargs):
        phase = original_compile(executor, *args, **kwargs)
        compiled.append((executor, phase))
        return phase

    def call_(executor, *args, **kwargs):
        calls.append(executor)
        return original_call(executor, *args, **kwargs)

    monkeypatch.setattr(executor_class, "compile", compile_)
    monkeypatch.setattr(executor_class, "__call__", call_)

    @ms.jit
    def twice_squared(x):
        return ops.mul(ops.add(x, x), ops.add(x, x))

    x = Tensor(np.arange(3, dtype=np.float32))
    for _ in range(2):
        np.testing.assert_array_equal(twice_squared(x).asnumpy(), (2 * np.arange(3)) ** 2)
    assert len(calls) == 2 and compiled, (path, calls, compiled)
    executor, phase = compiled[0]
    from mindspore.train import anf_ir_pb2

    model = anf_ir_pb2.ModelProto()
    model.ParseFromString(executor._graph_executor.get_func_graph_proto(phase, "anf_ir"))
    op_types = [node.op_type for node in model.graph.node]
    assert "Mul" in op_types and "Add" in op_types, op_types


# ---- side effects of in-place Custom ops in graphs ----


class _ReadAfterWrite(nn.Cell):
    """Runs the in-place accumulate, ignores its output, returns the Parameter read afterwards."""

    def __init__(self, acc, mark):
        super().__init__()
        self.acc = acc
        self.op = ops.Custom(
            f"{kernels.aot_library_path()}:MsAccumAccumulate", out_shape=[1], out_dtype=ms.float32, func_type="aot"
        )
        if mark:
            _compat.mark_side_effect_mem(self.op)
        self.one = Tensor(np.ones(1, np.float32))

    def construct(self, grad):
        self.op(self.one, self.acc, grad)
        return self.acc * 1.0


def test_mark_side_effect_mem_keeps_and_orders_the_op(graph):
    acc = Parameter(Tensor(np.zeros(3, np.float32)), name="side_effect_acc")
    cell = _ReadAfterWrite(acc, mark=True)
    grad = Tensor(np.ones(3, np.float32))
    for step in (1, 2, 3):
        # the op is not pruned although its output is unused, and the read sees its write
        np.testing.assert_array_equal(cell(grad).asnumpy(), np.full(3, step, np.float32))
    np.testing.assert_array_equal(acc.asnumpy(), np.full(3, 3.0, np.float32))


def test_unmarked_op_is_pruned_control(graph):
    """The control: without the declaration the compiler drops the op whose output is unused, so
    the declaration is what keeps it."""
    acc = Parameter(Tensor(np.zeros(3, np.float32)), name="side_effect_control")
    _ReadAfterWrite(acc, mark=False)(Tensor(np.ones(3, np.float32))).asnumpy()
    np.testing.assert_array_equal(acc.asnumpy(), np.zeros(3, np.float32))
