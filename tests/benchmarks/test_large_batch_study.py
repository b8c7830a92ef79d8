"""benchmarks/batch_size_study/large_batch_study.py --smoke, end to end on synthetic images and a
small generated text corpus: every planned run finishes, the report and its plots are written,
and each run used what its method prescribes -- the learning rate the optimizer was given (read
back from the schedule) and the batch of every update (read from the cell) -- checked against
the rules written out here."""

import json
import math
import os
import subprocess

import pytest

from tests.repo import module_env, python_m

MODULE = "benchmarks.batch_size_study.large_batch_study"
TRAIN_IMAGES, EPOCHS, WARMUP_EPOCHS, BASE_BATCH = 512, 2, 0.5, 32  # the smoke profile's CNN


def _text_files(folder):
    """20 small Python-like files (the GPT holds out every 20th): a few kB of text, no ../shared."""
    os.makedirs(folder)
    for i in range(20):
        with open(os.path.join(folder, f"m{i:02d}.py"), "w") as f:
            for j in range(60):
                f.write(f"def f{i}_{j}(x, y={j}):\n    return x * {i} + y  # line {j}\n")
    return os.path.join(folder, "*.py")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("large_batch")
    out = tmp / "out"
    cmd = python_m(
        MODULE,
        "--smoke",
        "--data",
        "synthetic",
        "--text-glob",
        _text_files(str(tmp / "text")),
        "--warmup-epochs",
        str(WARMUP_EPOCHS),
        "--out-dir",
        str(out),
    )
    p = subprocess.run(cmd, cwd=str(tmp), env=module_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = {}
    run_dir = out / "large_batch_study_runs" / "smoke"
    for f in sorted(os.listdir(run_dir)):
        if not f.startswith("_"):
            runs[f[:-5]] = json.loads((run_dir / f).read_text())
    return out, runs


def test_every_method_ran_and_the_report_shows_it(smoke):
    out, runs = smoke
    cnn = {
        (r["config"]["method"], r["config"]["effective_batch"]) for r in runs.values() if r["config"]["study"] == "cnn"
    }
    assert cnn == {("sgd", 32), ("lars", 32), ("sgd", 128), ("scaled", 128), ("lars", 128), ("grow", 128)}
    assert {r["config"]["method"] for r in runs.values() if r["config"]["study"] == "gpt"} == {"adamw", "lamb"}
    for name, r in runs.items():
        assert not r["diverged"], name
        score = r.get("test_accuracy", r.get("eval_bits_per_byte"))
        assert math.isfinite(score), name
    page = (out / "large_batch_study.md").read_text()
    for method, batch in cnn:
        row = [ln for ln in page.splitlines() if ln.startswith(f"| {batch} | {method} |")]
        assert len(row) == 1 and "not measured" not in row[0], (method, batch, row)
    assert "not measured" not in page
    for png in ("large_batch_study_cnn_accuracy.png", "large_batch_study_cnn_loss.png", "large_batch_study_gpt.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # the synthetic classes are learnable: the base configuration learns (10 classes: chance is 10 %)
    assert runs["cnn_sgd_b32_s0"]["test_accuracy"] > 0.2


def _expected_lr(method, batch, base, t, updates, warmup):
    """Each method's rule, written out: (a) the base rate; (b) base * B / 32; (c) base * sqrt(B / 32);
    (b) and (c) reach it by a linear warm-up from the base rate; all but (d) halve it at 50 % and
    75 % of the updates; (d) the scaling rule's rate for its first batch B / 4, never decayed."""
    peak = {"sgd": base, "scaled": base * batch / 32, "lars": base * math.sqrt(batch / 32), "grow": base * batch / 128}
    if t < warmup:
        return base + (peak[method] - base) * t / warmup
    if method == "grow":
        return peak[method]
    return peak[method] * 0.5 ** ((t >= updates // 2) + (t >= 3 * updates // 4))


def test_the_rate_and_batch_of_every_update_follow_the_rules(smoke):
    _, runs = smoke
    micro_batches_per_epoch = TRAIN_IMAGES // 32
    for name, r in runs.items():
        c = r["config"]
        if c["study"] != "cnn":
            continue
        b, updates = c["effective_batch"], r["updates"]
        batches = r["batch_per_update"]
        assert len(batches) == updates
        if c["method"] == "grow":
            # B/4 for half of the images, B/2 for a quarter, B for (at most) the last quarter
            total = EPOCHS * TRAIN_IMAGES
            phases = [sum(x for x in batches if x == size) for size in (b // 4, b // 2, b)]
            assert sorted(set(batches)) == [b // 4, b // 2, b] and batches == sorted(batches), name
            assert phases[0] == total // 2 and phases[1] == total // 4 and 0 < phases[2] <= total // 4, (name, phases)
            warmup = 0  # its first batch (32) is the base batch: nothing to warm up to
        else:
            assert set(batches) == {b}, name
            assert updates == EPOCHS * micro_batches_per_epoch * 32 // b, name
            warmup = 0 if (c["method"] == "sgd" or b == 32) else round(WARMUP_EPOCHS * updates / EPOCHS)
        for t, lr in r["lr_used"]:
            want = _expected_lr(c["method"], b, c["base_lr"], t, updates, warmup)
            assert lr == pytest.approx(want, rel=1e-5), (name, t, lr, want)
