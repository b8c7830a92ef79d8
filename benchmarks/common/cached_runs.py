"""The studies' runner: each configuration in a child process of its own (so its peak memory and
its failures are its own), its result cached as JSON beside the others; a rerun skips the
configurations whose cached result was made with the same settings."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

from benchmarks.common.rounds import module_command, worker_env


def run_configuration(module: str, config: dict, path: str, force: bool, timeout) -> tuple:
    """(result, how) for ``config`` run as ``python -m module --worker CONFIG --worker-out path``,
    unless ``path`` holds a result of the same config (and not ``force``); result is None when
    the child failed or timed out, and ``how`` says which."""
    if not force and os.path.isfile(path):
        try:
            with open(path) as f:
                cached = json.load(f)
            if cached.get("config") == config:
                return cached, "cached"
        except (OSError, ValueError):
            pass
    cmd = module_command(module, "--worker", json.dumps(config), "--worker-out", path)
    env = worker_env()
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return None, f"failed (exit code {proc.returncode})"
    with open(path) as f:
        return json.load(f), "ran"


def load_results(configs: list, run_dir: str) -> dict:
    """{name: result} of the cached results in ``run_dir`` made with these configs."""
    results = {}
    for c in configs:
        p = os.path.join(run_dir, c["name"] + ".json")
        try:
            with open(p) as f:
                r = json.load(f)
        except (OSError, ValueError):
            continue
        if r.get("config") == c:
            results[c["name"]] = r
    return results


def add_runner_arguments(p: argparse.ArgumentParser) -> None:
    """The runner's command-line flags, the same in every study."""
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these configurations (others: cache)")
    p.add_argument("--force", action="store_true", help="rerun configurations that have a cached result")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from cached results")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration (default: none)")
    p.add_argument("--list", action="store_true", help="print the planned configurations and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
