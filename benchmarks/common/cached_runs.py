"""The studies' runner: each configuration in a child process of its own (so its peak memory and
its failures are its own), its result cached as JSON beside the others; a rerun skips the
configurations whose cached result was made with the same settings."""

from __future__ import annotations

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
