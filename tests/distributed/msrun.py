"""Launching a worker script on 2 CPU workers with msrun, for the distributed tests; and, for the
worker scripts, the data-parallel set-up and the result files :func:`launch` reads."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TIMEOUT_S = 900  # msrun start-up alone takes 10-40 s on a loaded 2-core machine


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=60):
    try:
        with open(path, errors="replace") as f:
            lines = [ln for ln in f if not ln.startswith("[INFO]")]
        return "".join(lines[-n:])
    except OSError as e:
        return f"<{e}>"


def launch(worker, tmp, world=2, args=(), out="out"):
    """Runs ``worker`` (a path) under msrun with ``world`` workers and ``--out tmp/<out>`` plus
    ``args``; fails the test with the logs' tails unless every rank wrote
    ``rank<r>.{json,npz}`` there. Returns {rank: (arrays, record)}."""
    rc, console, elapsed = run(worker, tmp, world, args, out)
    out = tmp / out
    logs = tmp / f"logs_{out.name}"
    missing = [r for r in range(world) if not (out / f"rank{r}.json").exists()]
    if rc != 0 or missing:
        report = [
            f"msrun exit {rc} after {elapsed:.0f} s; results missing for ranks {missing}",
            "---- msrun console (tail) ----",
            "\n".join(ln for ln in console.splitlines()[-40:] if not ln.startswith("[INFO]")),
        ]
        for name in sorted(os.listdir(logs)) if logs.exists() else []:
            report += [f"---- {name} (tail) ----", _tail(logs / name)]
        pytest.fail("\n".join(report), pytrace=False)
    print(f"\nmsrun job: {elapsed:.1f} s")
    results = {}
    for r in range(world):
        with np.load(out / f"rank{r}.npz") as f:
            arrays = {k: f[k] for k in f.files}
        with open(out / f"rank{r}.json") as f:
            record = json.load(f)
        assert record["rank"] == r and record["world"] == world
        results[r] = (arrays, record)
    return results


def run(worker, tmp, world=2, args=(), out="out"):
    """msrun of ``worker --out tmp/<out> args...`` (logs in tmp/logs_<out>): (exit code, console, seconds)."""
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # msrun starts workers with `python`
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")  # workers import tests.distributed
    env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    env.setdefault("GLOG_v", "3")
    env.pop("MS_CUSTOM_AOT_WHITE_LIST", None)
    msrun = shutil.which("msrun", path=env["PATH"])
    if msrun is None:
        pytest.fail("msrun (installed with MindSpore) not found next to the Python interpreter", pytrace=False)
    out, logs = tmp / out, tmp / f"logs_{out}"
    cmd = [msrun, f"--worker_num={world}", f"--local_worker_num={world}", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", "--join=True", f"--log_dir={logs}", worker, "--out", str(out), *args]
    t0 = time.time()
    try:
        proc = subprocess.run(
            cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT_S
        )
        rc, console = proc.returncode, proc.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        rc, console = "timeout", (e.stdout or b"").decode(errors="replace")
    return rc, console, time.time() - t0


# ---- in a worker script


def init_data_parallel():
    """``init()`` and MindSpore's data-parallel mode, as every worker script starts; (rank, world)."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def write_results(out, arrays, record):
    """Writes ``out/rank<r>.npz`` (``arrays``) and ``out/rank<r>.json`` (``record``, holding its
    "rank" and "world"): what :func:`launch` reads back."""
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, f"rank{record['rank']}.npz"), **arrays)
    with open(os.path.join(out, f"rank{record['rank']}.json"), "w") as f:
        json.dump(record, f, indent=1)
