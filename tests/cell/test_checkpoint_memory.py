"""Loading a .ckpt is not refused for "memory" the page cache holds.

MindSpore 2.10's ``load_checkpoint`` refuses a .ckpt larger than MemFree (``SC_AVPHYS_PAGES``),
which counts the page cache as used; ``load_checkpoint_verified`` retries with MemAvailable. The
tests make MemFree tiny by patching ``os.sysconf`` and check that plain MindSpore refuses (the
premise) while the package loads the values that were saved."""

import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn  # noqa: E402
from mindspore.train import serialization  # noqa: E402

from mindspore_accum import _compat, load_checkpoint_verified, save_checkpoint_atomic  # noqa: E402

# 2.10 has the check (and this class); 2.7 has neither, and loads whatever the file's size.
SIZE_ERROR = getattr(serialization, "_CheckpointProtobufSizeError", None)
_real_sysconf = os.sysconf


def _memfree_one_page(name):
    """``os.sysconf`` on a machine whose page cache holds all memory but one page."""
    return 1 if name == "SC_AVPHYS_PAGES" else _real_sysconf(name)


def _dense():
    return nn.Dense(128, 64)  # a 32 KiB weight: the file is bigger than one page


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a Dense layer with known weights: (path, {name: the values saved})."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(7)
    net = _dense()
    values = {}
    for p in net.get_parameters():
        values[p.name] = rng.standard_normal(p.shape).astype(np.float32)
        p.set_data(ms.Tensor(values[p.name]))
    path = save_checkpoint_atomic(net, str(tmp_path / "dense.ckpt"))
    assert os.path.getsize(path) > 2 * _real_sysconf("SC_PAGE_SIZE")
    return path, values


def _assert_holds(loaded, values):
    assert sorted(loaded) == sorted(values)
    for name, expected in values.items():
        got = loaded[name].asnumpy() if hasattr(loaded[name], "asnumpy") else loaded[name]
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_a_memfree_refusal_is_retried_with_memavailable(saved, monkeypatch):
    path, values = saved
    assert _compat.mem_available_bytes() > os.path.getsize(path), "this machine has no MemAvailable"
    monkeypatch.setattr(os, "sysconf", _memfree_one_page)
    if SIZE_ERROR is not None:
        with pytest.raises(SIZE_ERROR, match="exceeds current available memory"):
            ms.load_checkpoint(path)
    else:  # MindSpore 2.7: no check, nothing to retry; the plain load must work
        _assert_holds(ms.load_checkpoint(path), values)

    _assert_holds(load_checkpoint_verified(path), values)
    net = _dense()  # and into a network, with net=
    load_checkpoint_verified(path, net=net)
    _assert_holds({p.name: p.asnumpy() for p in net.get_parameters()}, values)

    if SIZE_ERROR is not None:  # MindSpore's estimate is back: the correction lasted one call
        assert serialization._get_available_memory() == _real_sysconf("SC_PAGE_SIZE")
        with pytest.raises(SIZE_ERROR):
            ms.load_checkpoint(path)


def test_a_file_larger_than_memavailable_says_what_to_do(saved, monkeypatch):
    path, values = saved
    monkeypatch.setattr(os, "sysconf", _memfree_one_page)
    monkeypatch.setattr(_compat, "mem_available_bytes", lambda: os.path.getsize(path) - 1)
    if SIZE_ERROR is None:  # MindSpore 2.7 checks nothing: the file loads
        _assert_holds(load_checkpoint_verified(path), values)
        return
    with pytest.raises(ValueError) as refusal:
        load_checkpoint_verified(path)
    message = str(refusal.value)
    assert repr(path) in message and "MemAvailable" in message
    assert "safetensors" in message and "more free memory" in message
    assert isinstance(refusal.value.__cause__, SIZE_ERROR)  # MindSpore's own refusal, kept


def test_an_unreadable_memavailable_keeps_mindspores_refusal(saved, monkeypatch):
    path, values = saved
    monkeypatch.setattr(os, "sysconf", _memfree_one_page)
    monkeypatch.setattr(_compat, "mem_available_bytes", lambda: None)
    if SIZE_ERROR is None:  # MindSpore 2.7 checks nothing: the file loads
        _assert_holds(load_checkpoint_verified(path), values)
        return
    with pytest.raises(SIZE_ERROR, match="exceeds current available memory"):
        load_checkpoint_verified(path)


def test_mem_available_bytes_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:          222000 kB\nMemAvailable:   20480000 kB\n")
    assert _compat.mem_available_bytes(str(meminfo)) == 20480000 * 1024
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:          222000 kB\n")  # Linux < 3.14
    assert _compat.mem_available_bytes(str(meminfo)) is None
    assert _compat.mem_available_bytes(str(tmp_path / "absent")) is None
