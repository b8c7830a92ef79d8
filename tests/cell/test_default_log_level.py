"""At MindSpore's default log level (GLOG_v unset: WARNING and above), training with GradAccumCell
prints no MindSpore warning or error line beyond what nn.TrainOneStepCell prints. The test suite
sets GLOG_v=3 (tests/conftest.py), which would hide them: the worker runs without it."""

import os
import re
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "log_level_worker.py"
# MindSpore's log lines: "[WARNING] ANALYZER(pid,...):date [file:line] function] message"
LOG_LINE = re.compile(r"^\[(WARNING|ERROR|CRITICAL)\] ")


def mindspore_log_lines(which, tmp_path):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    env.pop("GLOG_v", None)  # MindSpore's default level
    env.pop("MS_CUSTOM_AOT_WHITE_LIST", None)
    # cwd outside the source tree: the worker imports the installed package
    run = subprocess.run(
        [sys.executable, str(WORKER), which], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600
    )
    assert run.returncode == 0 and f"trained {which}" in run.stdout, run.stdout + run.stderr
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if LOG_LINE.match(line)]


def test_no_more_warning_lines_than_train_one_step_cell(tmp_path):
    baseline = mindspore_log_lines("onestep", tmp_path)
    ours = mindspore_log_lines("accum", tmp_path)
    assert len(ours) <= len(baseline), (
        f"GradAccumCell printed {len(ours)} MindSpore warning/error lines, nn.TrainOneStepCell {len(baseline)}:\n"
        + "\n".join(line[:300] for line in ours)
    )
