"""One msrun launch of a benchmark's worker mode on this machine's CPU workers (benchmarks/dist/)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    module: str, tag: str, worker_args, tmp: str, workers: int, env: dict, *, port: int = 0, timeout: float = 1800
):
    """Runs ``msrun ... python -m <module> --run-as-worker --out <tmp> <worker_args>`` on ``workers``
    local workers (logs in ``tmp/logs_<tag>``, environment ``env`` with this interpreter's folder
    first on PATH: msrun starts the workers with ``python``). Returns (the records the ranks wrote
    to ``tmp/<tag>_rank<r>.json``, the logs folder); on a failure, exits with the logs' tails."""
    env = dict(env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    msrun = shutil.which("msrun", path=env["PATH"])
    if msrun is None:
        sys.exit("msrun not found next to the Python interpreter (it comes with MindSpore)")
    logs = os.path.join(tmp, f"logs_{tag}")
    cmd = [msrun, f"--worker_num={workers}", f"--local_worker_num={workers}", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port or free_port()}", "--join=True", f"--log_dir={logs}"]
    cmd += ["python", "-m", module, "--run-as-worker", "--out", tmp, *worker_args]
    proc = subprocess.run(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    records = []
    for r in range(workers):
        path = os.path.join(tmp, f"{tag}_rank{r}.json")
        if proc.returncode != 0 or not os.path.exists(path):
            for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
                with open(os.path.join(logs, name), errors="replace") as f:
                    lines = [ln for ln in f if not ln.startswith("[INFO]")]
                sys.stderr.write(f"---- {name} ----\n{''.join(lines[-40:])}")
            sys.stderr.write(proc.stdout.decode(errors="replace")[-3000:])
            sys.exit(f"msrun failed for {tag} (exit {proc.returncode})")
        with open(path) as f:
            records.append(json.load(f))
    return records, logs
