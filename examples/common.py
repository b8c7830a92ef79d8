"""What the two examples share (examples/resnet50_cifar10/train.py, examples/gpt_lm/train.py):
logging and the JSON summary, the CPU-speed fix and the /proc/cpuinfo reader, and the run-state
checkpoints (names from the real counters, rotation, the newest one, resume with a run check).

Never imports MindSpore at module level: the trainers set ONEDNN_MAX_CPU_ISA before it is.
"""

import glob
import json
import os
import re
import sys


def log(msg=""):
    print(msg, flush=True)


def emit_summary(summary, path=None):
    """The JSON summary: the last line of stdout, and the content of ``path`` when given."""
    line = json.dumps(summary)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)


# ============================================================================ CPU speed fix


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has_avx512():
    """True/False from /proc/cpuinfo's flags (Linux), None where that cannot be read."""
    flags = cpu_flags()
    return None if flags is None else "avx512f" in flags


def apply_cpu_isa_fix(args, convolutions=False):
    """Set ONEDNN_MAX_CPU_ISA=AVX2 before MindSpore is imported (it cannot be fixed afterwards).

    MindSpore 2.10's oneDNN picks an unvectorised reference 3x3 convolution for its plain
    NCHW layout on AVX-512 CPUs (~0.6 GFLOP/s); capped at AVX2 it runs ~50 GFLOP/s.
    ``convolutions``: the model has such convolutions, and the description says what the cap
    does on this CPU. Returns a short description for the summary.
    """
    cur = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if args.device != "CPU":
        what = f"not applied (device {args.device})"
    elif args.no_cpu_isa_fix:
        what = (
            f"disabled by --no-cpu-isa-fix (ONEDNN_MAX_CPU_ISA={cur})"
            if cur or not convolutions
            else "disabled by --no-cpu-isa-fix: 3x3 convolutions may run ~50x slower on AVX-512 CPUs"
        )
    elif cur is not None:
        what = f"ONEDNN_MAX_CPU_ISA={cur} already set by the user: left alone"
    elif "mindspore" in sys.modules:
        what = "NOT applied: mindspore was imported before the script could set ONEDNN_MAX_CPU_ISA"
    else:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        what = "set ONEDNN_MAX_CPU_ISA=AVX2"
        if convolutions:
            avx512 = cpu_has_avx512()
            what += " " + (
                "(this CPU has AVX-512, where oneDNN would use a slow reference 3x3 conv)"
                if avx512
                else "(no AVX-512 on this CPU: the cap changes nothing here)"
                if avx512 is False
                else "(avoids oneDNN's slow reference 3x3 conv on AVX-512 CPUs)"
            )
    log(f"[cpu-isa] {what}")
    return what


# ============================================================================ schedule


def make_lr_schedule(peak, warmup, total, final):
    """Linear warm-up over ``warmup`` updates, then a cosine from ``peak`` to ``final`` by update
    ``total``, as a MindSpore LearningRateSchedule evaluated at the optimizer's global_step (which
    advances once per update, not per micro-batch). ``lr_at`` in each example's data or train
    module is the same function in Python."""
    import math

    import mindspore as ms
    from mindspore import nn, ops

    class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
        def __init__(self):
            super().__init__()
            self.peak, self.final = float(peak), float(final)
            self.warmup = float(warmup)
            self.decay_len = float(max(1, total - warmup))

        def construct(self, global_step):
            s = ops.cast(global_step, ms.float32)
            warm = self.peak * (s + 1.0) / max(self.warmup, 1.0)
            prog = ops.clip_by_value((s - self.warmup) / self.decay_len, 0.0, 1.0)
            cos = self.final + 0.5 * (self.peak - self.final) * (1.0 + ops.cos(prog * math.pi))
            return ops.select(s < self.warmup, warm, cos)

    return WarmupCosineLR()


# ============================================================================ checkpoints


def ckpt_name(prefix, updates, micro):
    # Named from the real counters, never from assumed epoch/step numbers.
    return f"{prefix}-u{updates:06d}-mb{micro:07d}.ckpt"


def rotate_checkpoints(written, path, keep):
    """Records ``path`` in ``written`` (the checkpoints this run wrote, oldest first) and deletes
    the oldest beyond the newest ``keep`` (``keep <= 0``: keeps them all)."""
    if path not in written:
        written.append(path)
    while keep > 0 and len(written) > keep:
        old = written.pop(0)
        if os.path.exists(old) and old != path:
            os.remove(old)


def latest_checkpoint(ckpt_dir, prefix):
    """The checkpoint in ``ckpt_dir`` with the most micro-batches behind it, or None."""
    best = None
    for f in glob.glob(os.path.join(ckpt_dir, f"{prefix}-u*-mb*.ckpt")):
        m = re.search(r"-u(\d+)-mb(\d+)\.ckpt$", f)
        if m and (best is None or int(m.group(2)) > best[0]):
            best = (int(m.group(2)), f)
    return best[1] if best else None


def load_resume(train_cell, path, run_cfg, run_keys, *, load, error, floats=(), hint=""):
    """Loads checkpoint ``path`` (with ``load(path)`` -> parameter dict) into ``train_cell`` after
    checking that it belongs to this run (the ``run_keys`` of its saved ``run.config`` equal
    ``run_cfg``'s); returns the run state saved beside it (``run.<name>`` -> ``<name>``: int, or
    float for the names in ``floats``). Refusals raise ``error`` (the example's DataError), with
    ``hint`` appended to the different-run message."""
    import mindspore as ms

    if not os.path.isfile(path):
        raise error(f"--resume: {path} does not exist")
    pd = load(path)
    if "run.config" not in pd:
        raise error(f"--resume: {path} was not written by this script (no run state in it)")
    saved = json.loads(str(pd.pop("run.config")))
    diff = {k: (saved.get(k), run_cfg.get(k)) for k in run_keys if saved.get(k) != run_cfg.get(k)}
    if diff:
        detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise error(f"--resume: {path} belongs to a different run ({detail}){hint}")
    state = {}
    for k in list(pd):
        if k.startswith("run."):
            v = pd.pop(k).asnumpy()
            state[k[4:]] = float(v) if k[4:] in floats else int(v)
    not_loaded, _ = ms.load_param_into_net(train_cell, pd)
    if not_loaded:
        raise RuntimeError(f"--resume: {len(not_loaded)} parameters missing from {path}: {not_loaded[:5]}")
    return state
