"""Tests of examples/resnet50_cifar10/train.py, run as a user would (subprocess), on generated
fixtures only. The real ResNet50 is trained for 2 updates (micro-batch 2 x 2) in GRAPH and
PYNATIVE mode; resume, --download (local HTTP server) and data errors are checked too.
"""

import functools
import glob
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from examples.resnet50_cifar10 import data as cd  # (NumPy only)
from tests.examples import cifar_fixture
from tests.repo import module_env, python_m

MODULE = "examples.resnet50_cifar10.train"

# 12 training images (two files of 6: not 10,000 per file), 10 test images.
# --limit-train 8 at micro-batch 2 x 2 = 4 micro-batches = 2 updates; eval batch 4 -> 4, 4, 2.
SMALL = [
    "--batch-size",
    "2",
    "--accum-steps",
    "2",
    "--epochs",
    "1",
    "--limit-train",
    "8",
    "--eval-batch-size",
    "4",
    "--no-progress",
]
RESNET50_PARAMS = 23_520_842
TIMEOUT = 600


def run(args, cwd, expect_rc=0):
    env = module_env()
    env.pop("ONEDNN_MAX_CPU_ISA", None)  # the script must set it itself
    env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.run(python_m(MODULE, *args), cwd=str(cwd), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode != expect_rc:
        raise AssertionError(
            f"exit {p.returncode} (wanted {expect_rc}) for {args}\n--- stdout\n{p.stdout[-4000:]}"
            f"\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def summary_of(p):
    last = p.stdout.strip().splitlines()[-1]
    s = json.loads(last)
    assert s["event"] == "summary"
    return s


def load_ckpt(path):
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    # (not ms.load_checkpoint: MindSpore 2.10 refuses this 282 MB file when the page cache fills
    # free memory; the example writes it with a CRC, which this also checks)
    from mindspore_accum import load_checkpoint_verified

    return {k: v.asnumpy() for k, v in load_checkpoint_verified(path).items() if not k.startswith("run.")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    cifar_fixture.write_cifar_dir(root, train_counts=(6, 6), n_test=10, seed=0)
    return root


@pytest.fixture(scope="module")
def http_archive(tmp_path_factory, data_root):
    """A local HTTP server on 127.0.0.1 serving a tar.gz of the fixture; yields (url, md5)."""
    serve = tmp_path_factory.mktemp("www")
    md5 = cifar_fixture.make_archive(data_root, os.path.join(serve, "cifar-10-binary.tar.gz"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz", md5
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pynative_run(tmp_path_factory, http_archive):
    """Uninterrupted PYNATIVE run whose data comes from --download off the local server."""
    url, md5 = http_archive
    work = tmp_path_factory.mktemp("pynative")
    p = run(
        [
            "--data-dir",
            "dl",
            "--download",
            "--download-url",
            url,
            "--download-md5",
            md5,
            "--mode",
            "pynative",
            "--ckpt-dir",
            "ck",
            *SMALL,
        ],
        work,
    )
    return work, p, summary_of(p)


def check_two_updates(s, p, work, mode):
    assert s["mode"] == mode
    assert s["data"] == "cifar10"
    assert s["params"] == RESNET50_PARAMS
    assert f"{RESNET50_PARAMS:,} trainable parameters" in p.stdout
    assert s["updates"] == 2 and s["optimizer_global_step"] == 2 and s["micro_batches"] == 4
    assert s["effective_batch"] == 4 and s["train_images"] == 8
    assert s["test_images"] == 10  # whole test split, remainder batch of 2 included
    assert 0.0 <= s["test_accuracy"] <= 1.0 and np.isfinite(s["test_loss"])
    assert np.isfinite(s["train_loss_last"])
    assert s["cpu_isa_fix"].startswith("set ONEDNN_MAX_CPU_ISA=AVX2")
    assert "[cpu-isa] set ONEDNN_MAX_CPU_ISA=AVX2" in p.stdout
    # checkpoint named from the real counters, and it is the one evaluated
    assert os.path.basename(s["checkpoint"]) == "resnet50_cifar10-u000002-mb0000004.ckpt"
    assert os.path.isfile(os.path.join(work, s["checkpoint"]))
    assert f"[eval] evaluating {s['checkpoint']}" in p.stdout


def test_graph_two_updates(tmp_path, data_root):
    p = run(["--data-dir", str(data_root), "--mode", "graph", "--ckpt-dir", "ck", *SMALL], tmp_path)
    check_two_updates(summary_of(p), p, tmp_path, "graph")
    assert "data_batch_1.bin, data_batch_2.bin" in p.stdout  # several files, 6 records each


def test_pynative_two_updates_via_download(pynative_run):
    work, p, s = pynative_run
    check_two_updates(s, p, work, "pynative")
    assert "MD5" in p.stdout and "ok" in p.stdout
    assert os.path.isfile(os.path.join(work, "dl", "cifar-10-batches-bin", "test_batch.bin"))


def test_resume_mid_epoch_and_mid_window(tmp_path, data_root, pynative_run):
    common = ["--data-dir", str(data_root), "--mode", "pynative", "--ckpt-dir", "ck", *SMALL]
    p1 = run([*common, "--stop-after", "3"], tmp_path)
    s1 = summary_of(p1)
    assert s1["stopped_early"] == "--stop-after 3"
    assert s1["micro_batches"] == 3 and s1["updates"] == 1 and s1["optimizer_global_step"] == 1
    assert os.path.basename(s1["checkpoint"]) == "resnet50_cifar10-u000001-mb0000003.ckpt"
    assert s1["test_accuracy"] is None

    p2 = run([*common, "--resume", "auto"], tmp_path)
    s2 = summary_of(p2)
    assert "1 micro-batch(es) pending in the window" in p2.stdout
    assert s2["resumed_from"] == s1["checkpoint"]
    assert s2["micro_batches_this_run"] == 1
    assert s2["micro_batches"] == 4 and s2["updates"] == 2 and s2["optimizer_global_step"] == 2
    assert os.path.basename(s2["checkpoint"]) == "resnet50_cifar10-u000002-mb0000004.ckpt"
    assert s2["test_images"] == 10

    # The resumed run must end where the uninterrupted one did (same data order, augmentation,
    # pending accumulated gradient, momentum and schedule position).
    work, _, s_full = pynative_run
    full = load_ckpt(os.path.join(work, s_full["checkpoint"]))
    resumed = load_ckpt(os.path.join(tmp_path, s2["checkpoint"]))
    mid = load_ckpt(os.path.join(tmp_path, s1["checkpoint"]))
    weights = [k for k in full if k.endswith(".weight") and not k.startswith(("moments", "accum"))]
    assert len(weights) == 54
    for k in weights:
        step = np.abs(full[k] - mid[k]).max()  # size of the last update
        err = np.abs(full[k] - resumed[k]).max()
        assert step > 0, k
        assert err <= 1e-3 * step + 1e-7, (k, err, step)


def test_resume_refuses_other_settings(tmp_path, data_root):
    common = ["--data-dir", str(data_root), "--mode", "pynative", "--ckpt-dir", "ck", *SMALL]
    run([*common, "--stop-after", "1", "--no-eval"], tmp_path)
    p = run([*common, "--accum-steps", "4", "--resume", "auto"], tmp_path, expect_rc=2)
    assert "belongs to a different run" in p.stderr and "accum_steps" in p.stderr


# ------------------------------------------------------------------ data errors (fail before MindSpore)


def test_missing_data_says_how_to_get_it(tmp_path):
    p = run(["--data-dir", str(tmp_path / "nothing")], tmp_path, expect_rc=2)
    assert "no CIFAR-10 binary data found" in p.stderr
    assert "--download" in p.stderr and "--data-dir" in p.stderr
    assert "Traceback" not in p.stderr


def test_malformed_size(tmp_path, data_root):
    d = cifar_fixture.write_cifar_dir(tmp_path, train_counts=(4,), n_test=4)
    with open(os.path.join(d, "data_batch_1.bin"), "ab") as f:
        f.write(b"\0" * 100)
    p = run(["--data-dir", str(tmp_path)], tmp_path, expect_rc=2)
    assert "data_batch_1.bin is malformed" in p.stderr
    assert "not a multiple of the 3073-byte CIFAR-10 record" in p.stderr
    assert "Traceback" not in p.stderr


def test_malformed_label(tmp_path):
    d = cifar_fixture.write_cifar_dir(tmp_path, train_counts=(4,), n_test=4)
    raw = bytearray(open(os.path.join(d, "test_batch.bin"), "rb").read())
    raw[2 * 3073] = 12
    open(os.path.join(d, "test_batch.bin"), "wb").write(bytes(raw))
    p = run(["--data-dir", str(tmp_path)], tmp_path, expect_rc=2)
    assert "test_batch.bin is malformed: record 2 has label 12, outside 0..9" in p.stderr


def test_download_md5_mismatch_extracts_nothing(tmp_path, http_archive):
    url, _ = http_archive
    p = run(
        ["--data-dir", "dl", "--download", "--download-url", url, "--download-md5", "0" * 32], tmp_path, expect_rc=2
    )
    assert "MD5 mismatch" in p.stderr
    assert not glob.glob(str(tmp_path / "dl" / "**" / "*.bin"), recursive=True)


def test_download_unreachable(tmp_path):
    p = run(
        ["--data-dir", "dl", "--download", "--download-url", "http://127.0.0.1:9/none.tar.gz"], tmp_path, expect_rc=2
    )
    assert "download of http://127.0.0.1:9/none.tar.gz failed" in p.stderr


# ------------------------------------------------------------------ in-process (NumPy only)


def test_reader_any_record_count_and_layout(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(cifar_fixture.cifar_records(7, seed=3))
    x, y = cd.read_cifar10_bin(str(path))
    assert x.shape == (7, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    raw = np.frombuffer(path.read_bytes(), np.uint8).reshape(7, 3073)
    assert (y == raw[:, 0]).all()
    assert x[5, 7, 9, 1] == raw[5, 1 + 1024 + 7 * 32 + 9]  # G plane, row 7, column 9


def test_unsafe_archive_is_refused(tmp_path):
    import tarfile

    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "f").write_bytes(b"x")
    with tarfile.open(evil, "w:gz") as t:
        t.add(tmp_path / "f", arcname="../escape.bin")
    with pytest.raises(cd.DataError, match="points outside"):
        cd._safe_extract(str(evil), str(tmp_path / "out"))


def test_augmentation_is_deterministic_and_normalised():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int32)
    order = cd.epoch_order(5, 1, 0)
    a = cd._Source(imgs, labels, order, 0, 5, augment=True, seed=1, epoch=0)
    b = cd._Source(imgs, labels, order, 2, 3, augment=True, seed=1, epoch=0)  # resumed at position 2
    for i in range(3):
        xa, ya = a[i + 2]
        xb, yb = b[i]
        assert xa.shape == (3, 32, 32) and xa.dtype == np.float32 and ya.dtype == np.int32
        np.testing.assert_array_equal(xa, xb)
        assert ya == yb
    plain = cd._Source(imgs, labels, np.arange(5), 0, 5, augment=False)[0][0]
    np.testing.assert_allclose(plain[:, 3, 4], (imgs[0, 3, 4] / 255.0 - cd.MEAN) / cd.STD, rtol=1e-5)


def test_lr_schedule_shape():
    import examples.resnet50_cifar10.train as t

    lrs = [t.lr_at(s, 0.05, 20, 156) for s in range(156)]
    assert lrs[0] == pytest.approx(0.05 / 20) and lrs[19] == pytest.approx(0.05)
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:]))
    assert lrs[-1] < 0.001


def test_distributed_two_workers_msrun(tmp_path):
    """--distributed under msrun, 2 CPU workers on 127.0.0.1 (PYNATIVE: ~1 minute, msrun start-up
    included): 32 synthetic images = 8 micro-batches of 2 per worker = 4 updates of effective batch
    2 x 2 x 2 = 8; both ranks finish with the same weights, only rank 0 writes the checkpoint and
    the summary."""
    import shutil
    import socket

    bindir = os.path.dirname(sys.executable)
    env = module_env()
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # msrun starts workers with `python`
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    env.setdefault("GLOG_v", "3")
    msrun = shutil.which("msrun", path=env["PATH"])
    if msrun is None:
        pytest.skip("msrun (installed with MindSpore) not found next to the Python interpreter")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "logs"
    cmd = [
        msrun,
        "--worker_num=2",
        "--local_worker_num=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "--join=True",
        f"--log_dir={logs}",
        "python",
        "-m",
        MODULE,
        "--distributed",
        "--synthetic",
        "--synthetic-size",
        "32",
        "--batch-size",
        "2",
        "--accum-steps",
        "2",
        "--epochs",
        "1",
        "--limit-test",
        "8",
        "--mode",
        "pynative",
        "--no-progress",
        "--ckpt-dir",
        "ck",
    ]
    p = subprocess.run(
        cmd, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )
    out = {
        r: (logs / f"worker_{r}.log").read_text(errors="replace") if (logs / f"worker_{r}.log").exists() else ""
        for r in (0, 1)
    }
    assert p.returncode == 0, (p.stdout[-3000:], out[0][-3000:], out[1][-3000:])
    sums = {}
    for r in (0, 1):
        line = [ln for ln in out[r].splitlines() if ln.startswith(f"[dist] rank {r}: ")]
        assert line and "4 updates, 8 micro-batches, optimizer global_step 4" in line[-1], out[r][-3000:]
        sums[r] = line[-1].split("sum|w| = ")[1]
    assert sums[0] == sums[1]  # the replicas agree
    summaries = [ln for ln in out[0].splitlines() if ln.startswith('{"event": "summary"')]
    assert len(summaries) == 1 and '{"event": "summary"' not in out[1]
    s = json.loads(summaries[0])
    assert s["world_size"] == 2 and s["effective_batch"] == 8 and s["peak_lr"] == pytest.approx(0.1 * 8 / 256)
    assert s["updates"] == 4 and s["optimizer_global_step"] == 4 and s["micro_batches"] == 8
    assert s["images_this_run"] == 32 and s["test_images"] == 8
    assert os.path.basename(s["checkpoint"]) == "resnet50_cifar10-u000004-mb0000008.ckpt"
    assert sorted(os.listdir(tmp_path / "ck")) == ["resnet50_cifar10-u000004-mb0000008.ckpt"]
