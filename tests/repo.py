"""The repository's examples and benchmarks run as a user would: `python -m <module>` in a
subprocess, with the repository root importable from whatever working directory the test gives
it (PYTHONPATH, as `python -m` run from the root would have it)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_m(module, *args, python=sys.executable):
    """The command line that runs ``module`` (``examples.gpt_lm.train``) with ``args``."""
    return [python, "-m", module, *args]


def module_env(env=None):
    """``env`` (default: this process's environment), copied, with the repository root first on
    PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env
