"""Kill-and-resume (issue 5, acceptance 3): a training process that checkpoints every micro-step
(mindspore_accum.save_checkpoint_atomic), killed with SIGKILL at a random micro-step and
restarted from its last checkpoint, ends with weights, momenta, accumulators and counters
bit-identical to an uninterrupted run; a half-written checkpoint is never loaded.

tests/cell/kill_resume_worker.py is the training process (tiny BatchNorm-free MLP, GradAccumCell +
FusedMomentum with nesterov and weight decay, accumulation 3, 14 micro-batches: 4 windows, one
of them skipped for an inf input, then a flushed partial window). It kills itself at the chosen
micro-step in one of four phases: before the step's checkpoint is written, half way through
writing the temporary file, after writing it but before the rename, or after the rename.
Self-kill makes every kill point reproducible from the trial's seed (printed on failure).

Both modes run, 10 trials each: PYNATIVE (the CPU host path: kernels on zero-copy views of the
Parameters, so the checkpoint must see memory written behind MindSpore's back) and GRAPH (AOT
custom ops inside compiled graphs; the restarted process recompiles).
"""

import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve().parent / "kill_resume_worker.py"
MICRO_STEPS = 14
PHASES = ["before_save", "mid_write", "before_rename", "after_save"]
TRIALS = 10
STEP_KEY = "kill_resume.micro_batches_done"


def run_worker(mode, ckpt_dir, out, kill_at=-1, phase="after_save"):
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", GLOG_v="3", MSACCUM_NUM_THREADS="1")
    env.pop("MS_CUSTOM_AOT_WHITE_LIST", None)
    cmd = [
        sys.executable,
        str(WORKER),
        "--mode",
        mode,
        "--dir",
        str(ckpt_dir),
        "--out",
        str(out),
        "--kill-at",
        str(kill_at),
        "--kill-phase",
        phase,
    ]
    # cwd outside the source tree: the worker imports the installed package
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ckpt_dir), timeout=300)


def load_npz(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per mode (computed in parallel)."""

    def one(mode):
        d = tmp_path_factory.mktemp(f"reference_{mode}")
        proc = run_worker(mode, d, d / "final.npz")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return mode, load_npz(d / "final.npz")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, ["PYNATIVE", "GRAPH"]))


def trial(mode, index, base):
    """One kill-and-resume; returns None on success or a failure description."""
    seed = 1000 * (mode == "GRAPH") + index
    rng = random.Random(seed)
    kill_at, phase = rng.randrange(MICRO_STEPS), rng.choice(PHASES)
    where = f"[{mode} trial {index}, seed {seed}: SIGKILL at micro-step {kill_at}, phase {phase}]"
    d = base / f"{mode}_{index}"
    d.mkdir()
    out = d / "final.npz"

    killed = run_worker(mode, d, out, kill_at, phase)
    if killed.returncode != -signal.SIGKILL:
        return f"{where} the worker was not killed (exit {killed.returncode}):\n{killed.stdout}\n{killed.stderr}"
    # What a restart will find: the checkpoint of the last completed save, complete and verified.
    saved = kill_at + 1 if phase == "after_save" else kill_at
    ckpt = d / "last.ckpt"
    from mindspore_accum import load_checkpoint_verified

    if saved == 0:
        if ckpt.exists():
            return f"{where} a checkpoint exists although no save completed"
    else:
        state = load_checkpoint_verified(ckpt)
        if int(state[STEP_KEY].asnumpy()) != saved:
            return f"{where} the checkpoint holds {int(state[STEP_KEY].asnumpy())} micro-steps, expected {saved}"
    partial = sorted(p for p in d.iterdir() if p.name.endswith(".partial.ckpt"))
    if phase in ("mid_write", "before_rename") and not partial:
        return f"{where} no temporary file left behind: the kill did not happen during the save"
    if phase == "mid_write":
        # the half-written file is exactly what must never be loaded: it is rejected cleanly
        try:
            load_checkpoint_verified(partial[0])
            return f"{where} the half-written checkpoint {partial[0].name} was accepted"
        except ValueError:
            pass

    resumed = run_worker(mode, d, out)
    if resumed.returncode != 0:
        return f"{where} the restarted worker failed (exit {resumed.returncode}):\n{resumed.stdout}\n{resumed.stderr}"
    if saved and f"resumed at micro-step {saved}" not in resumed.stdout:
        return f"{where} the restart did not resume at micro-step {saved}:\n{resumed.stdout}"
    return where, load_npz(out)


@pytest.mark.parametrize("mode", ["PYNATIVE", "GRAPH"])
def test_kill_and_resume_ten_times_is_bit_identical(mode, references, tmp_path):
    expected = references[mode]
    assert len(expected) > 10 and int(expected["accumulation.skipped_updates"]) == 1
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i: trial(mode, i, tmp_path), range(TRIALS)))
    failures = [r for r in results if isinstance(r, str)]
    for where, got in (r for r in results if not isinstance(r, str)):
        if set(got) != set(expected):
            failures.append(f"{where} parameters differ: {sorted(set(got) ^ set(expected))}")
            continue
        for name, value in expected.items():
            if got[name].dtype != value.dtype or got[name].tobytes() != value.tobytes():
                diff = np.max(np.abs(got[name].astype(np.float64) - value.astype(np.float64)))
                failures.append(f"{where} {name} differs from the uninterrupted run (max abs diff {diff:.3g})")
        for name, value in got.items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                failures.append(f"{where} {name} is not finite")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- the helper itself


class TinyNet:
    @staticmethod
    def make():
        import mindspore as ms
        from mindspore import nn

        ms.set_seed(1)
        return nn.Dense(8, 4)


def test_truncated_or_damaged_checkpoint_is_rejected(tmp_path):
    from mindspore_accum import load_checkpoint_verified, save_checkpoint_atomic

    net = TinyNet.make()
    path = save_checkpoint_atomic(net, tmp_path / "model", append_dict={"step": 3})
    assert path == str(tmp_path / "model.ckpt")
    raw = Path(path).read_bytes()
    assert set(load_checkpoint_verified(path)) == {"weight", "bias", "step"}
    bad = tmp_path / "bad.ckpt"
    for n in range(len(raw)):  # every truncation, including cuts between two parameters
        bad.write_bytes(raw[:n])
        with pytest.raises(ValueError):
            load_checkpoint_verified(bad)
    for i in range(0, len(raw), 7):  # damaged bytes
        b = bytearray(raw)
        b[i] ^= 0x20
        bad.write_bytes(bytes(b))
        with pytest.raises(ValueError):
            load_checkpoint_verified(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint_verified(tmp_path / "missing.ckpt")


def test_atomic_save_replaces_in_one_step_and_leaves_no_temporary(tmp_path):
    import mindspore as ms

    from mindspore_accum import load_checkpoint_verified, save_checkpoint_atomic

    net = TinyNet.make()
    path = tmp_path / "state.ckpt"
    save_checkpoint_atomic(net, path, append_dict={"step": 1})
    inode = os.stat(path).st_ino
    save_checkpoint_atomic(net, path, append_dict={"step": 2})  # over MindSpore's read-only file
    assert os.stat(path).st_ino != inode  # a new file renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.ckpt"]
    assert int(load_checkpoint_verified(path)["step"].asnumpy()) == 2
    # a failing save leaves the previous checkpoint and no temporary file
    with pytest.raises(TypeError, match="save_obj"):
        save_checkpoint_atomic(object(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.ckpt"]
    assert int(load_checkpoint_verified(path)["step"].asnumpy()) == 2
    with pytest.raises(ValueError, match="asynchronously"):
        save_checkpoint_atomic(net, path, async_save=True)
    assert int(ms.load_checkpoint(str(path))["step"].asnumpy()) == 2  # plain MindSpore loading works too
