"""The benchmarks' harness, written once: contenders alternate round by round, each in its own
process, and a comparison is the median of the per-round ratios.

Why: on a shared machine the speed drifts over minutes (a neighbour's memory traffic, MindSpore's
runtime threads spinning on 2 vCPUs). Running A B C, A B C, ... puts every contender through the
same stretch of noise once per round; a ratio taken inside a round cancels the drift, and the
median over rounds drops the rounds a burst of load hit. A fresh process per run keeps one run's
memory high-water mark, compiled graphs and allocator state out of the next one.

Workers are modules of this repository run as ``python -m benchmarks.<folder>.<file>`` (or
``examples.<name>.train``), with the repository root first on PYTHONPATH so that they start from
any working directory.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def module_command(module: str, *args, python: Optional[str] = None) -> list:
    """``python -m module args...`` (``python``: another interpreter, e.g. one with torch)."""
    return [python or sys.executable, "-m", module, *(str(a) for a in args)]


def worker_env(base: Optional[dict] = None, cpu_isa_fix: bool = True) -> dict:
    """A worker's environment: ``base`` (default: this process's) with the repository root first
    on PYTHONPATH; with ``cpu_isa_fix``, ONEDNN_MAX_CPU_ISA=AVX2 (set before MindSpore is imported:
    see docs/design.md, "CPU speed trap") and GLOG_v=3 unless already set."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    if cpu_isa_fix:
        env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
        env.setdefault("GLOG_v", "3")
    return env


def rounds(n: int, contenders: Sequence, rotate: bool = False) -> Iterator[tuple]:
    """Yields ``(round, order)``: every round runs every contender once, in ``order``. With
    ``rotate``, round r starts at contender r (mod their number), so none always runs first."""
    contenders = list(contenders)
    for r in range(n):
        k = r % len(contenders) if (rotate and contenders) else 0
        yield r, contenders[k:] + contenders[:k]


def last_json_line(text: str) -> Optional[dict]:
    """The JSON object a worker reports: its last stdout line that starts with ``{``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    result: Optional[dict]  # the worker's JSON report; None when it failed or wrote none
    wall_s: float


def run_worker(
    cmd: list,
    env: Optional[dict] = None,
    cwd: Optional[str] = None,
    timeout: Optional[float] = None,
    stderr=subprocess.PIPE,
) -> Run:
    """Runs one worker process to its end (``subprocess.TimeoutExpired`` after ``timeout`` s) and
    reads its report. ``env`` default: ``worker_env()``."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=worker_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=timeout,
        check=False,
    )
    result = last_json_line(proc.stdout) if proc.returncode == 0 else None
    return Run(proc, result, time.perf_counter() - t0)


def run_job(name: str, cmd: list, workdir: str, log_dir: Optional[str] = None, env: Optional[dict] = None) -> Run:
    """One job of a framework comparison (a training script that ends its stdout with a JSON
    summary): announced, run in ``workdir``, its stdout kept as ``log_dir/<name>.log``; a failure
    ends the benchmark with the job's last output."""
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    run = run_worker(
        cmd, env=worker_env(cpu_isa_fix=False) if env is None else env, cwd=workdir, stderr=subprocess.DEVNULL
    )
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, name.replace(" #", "_") + ".log"), "w") as f:
            f.write(run.proc.stdout)
    if run.result is None:
        sys.stdout.write(run.proc.stdout[-3000:])
        raise SystemExit(f"{name} failed (exit {run.proc.returncode})")
    return run


def median(xs: Iterable) -> Optional[float]:
    """The median of the values that are not None (None when there are none)."""
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def per_round_ratios(num: Sequence, den: Sequence) -> list:
    """``num[r] / den[r]`` round by round (None where either is None)."""
    return [None if (a is None or b is None) else a / b for a, b in zip(num, den)]


def median_of_ratios(num: Sequence, den: Sequence) -> Optional[float]:
    """The comparison of two contenders: the median over rounds of their per-round ratio."""
    return median(per_round_ratios(num, den))
