"""Tests of examples/gpt_lm/train.py (run as a user would, in a subprocess) and of its loss cell
and data module (in process), on text files generated in tmp_path only.

A 1-layer GPT (d_model 16) trains 2 updates of 2 x 2 micro-batches in GRAPH and PYNATIVE mode;
a run stopped mid-window and resumed must end with the very weights of the uninterrupted run;
an empty corpus and a too-long --seq-len must be refused with a clear message.
"""

import json
import os
import subprocess

import numpy as np
import pytest

from examples.gpt_lm import data as ld  # (NumPy only)
from tests.repo import module_env, python_m

MODULE = "examples.gpt_lm.train"

TINY = [
    "--layers",
    "1",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--max-positions",
    "32",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--accum-steps",
    "2",
    "--updates",
    "2",
    "--eval-every",
    "1",
    "--eval-batches",
    "2",
    "--lr",
    "3e-3",
    "--warmup",
    "1",
    "--no-progress",
]
TINY_PARAMS = (
    (257 * 16 + 32 * 16) + (2 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 2 * 16 + 16 * 64 + 64 + 64 * 16 + 16) + 2 * 16
)
TIMEOUT = 600


def write_corpus(root, n_files, seed, sizes=None):
    """Python-like text files of varied length (so chunk tails are short), in nested folders."""
    rng = np.random.default_rng(seed)
    words = [
        "def",
        "return",
        "self",
        "import",
        "class",
        "for",
        "in",
        "if",
        "else",
        "None",
        "x",
        "y",
        "(",
        ")",
        ":",
        "=",
        "+",
        "\n",
        "    ",
        "'text'",
        "0",
        "1",
    ]
    files = []
    for i in range(n_files):
        n = int(sizes[i]) if sizes is not None else int(rng.integers(40, 400))
        text = " ".join(rng.choice(words, size=n))[:n]
        path = os.path.join(root, f"pkg{i % 3}", "sub", f"mod{i:02d}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_corpus(os.path.join(root, "train"), 12, seed=0)
    write_corpus(os.path.join(root, "held"), 3, seed=1)
    return root


def data_args(corpus):
    return [
        "--text-files",
        os.path.join(corpus, "train", "**", "*.py"),
        "--eval-text-files",
        os.path.join(corpus, "held", "**", "*.py"),
    ]


def run(args, cwd, expect_rc=0):
    env = module_env()
    env.pop("ONEDNN_MAX_CPU_ISA", None)  # the script sets it itself
    env["PYTHONUNBUFFERED"] = "1"
    p = subprocess.run(python_m(MODULE, *args), cwd=str(cwd), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode != expect_rc:
        raise AssertionError(
            f"exit {p.returncode} (wanted {expect_rc}) for {args}\n--- stdout\n{p.stdout[-4000:]}"
            f"\n--- stderr\n{p.stderr[-4000:]}"
        )
    return p


def summary_of(p):
    s = json.loads(p.stdout.strip().splitlines()[-1])
    assert s["event"] == "summary"
    return s


def load_ckpt(path):
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if not k.startswith("run.")}


def check_two_updates(s, p, mode):
    assert s["mode"] == mode and s["model"] == "gpt"
    assert s["params"] == TINY_PARAMS
    assert s["updates"] == 2 and s["optimizer_global_step"] == 2 and s["micro_batches"] == 4
    assert s["skipped_updates"] == 0
    assert len(s["first_losses"]) == 4 and len(s["update_losses"]) == 2
    assert all(np.isfinite(s["first_losses"]))
    assert abs(s["first_losses"][0] - np.log(256)) < 0.5  # GPT-2 init: near-uniform predictions
    assert [e["update"] for e in s["evals"]] == [1, 2]
    assert np.isfinite(s["eval_bits_per_byte"]) and s["eval_bits_per_byte"] == pytest.approx(s["eval_loss"] / np.log(2))
    assert s["eval_tokens"] > 0 and s["tokens_per_s"] > 0 and s["wall_time_s"] > 0
    assert p.stdout.count("[eval] update ") == 2 and "eval bits/byte" in p.stdout
    assert os.path.basename(s["checkpoint"]) == "gpt_lm-u000002-mb0000004.ckpt"
    assert os.path.isfile(s["checkpoint"])
    assert s["cpu_isa_fix"] == "set ONEDNN_MAX_CPU_ISA=AVX2"


@pytest.fixture(scope="module")
def pynative_run(tmp_path_factory, corpus):
    work = tmp_path_factory.mktemp("pynative")
    p = run([*data_args(corpus), *TINY, "--mode", "pynative", "--ckpt-dir", "ck"], work)
    return work, p, summary_of(p)


def test_graph_two_updates(tmp_path, corpus):
    p = run([*data_args(corpus), *TINY, "--mode", "graph", "--ckpt-dir", "ck"], tmp_path)
    check_two_updates(summary_of(p), p, "graph")


def test_pynative_two_updates(pynative_run):
    _, p, s = pynative_run
    check_two_updates(s, p, "pynative")
    assert "12 files" in p.stdout and "3 files" in p.stdout


def test_resume_mid_window_is_bit_identical(tmp_path, corpus, pynative_run):
    common = [*data_args(corpus), *TINY, "--mode", "pynative", "--ckpt-dir", "ck"]
    p1 = run([*common, "--stop-after", "3"], tmp_path)
    s1 = summary_of(p1)
    assert s1["stopped_early"] == "--stop-after 3"
    assert s1["micro_batches"] == 3 and s1["updates"] == 1 and s1["optimizer_global_step"] == 1
    assert os.path.basename(s1["checkpoint"]) == "gpt_lm-u000001-mb0000003.ckpt"

    p2 = run([*common, "--resume", "auto"], tmp_path)
    s2 = summary_of(p2)
    assert "1 micro-batch(es) pending in the window" in p2.stdout
    assert s2["resumed_from"] == s1["checkpoint"] and s2["micro_batches_this_run"] == 1
    assert s2["micro_batches"] == 4 and s2["updates"] == 2 and s2["optimizer_global_step"] == 2
    # the window's loss continues across the interruption
    _, _, s_full = pynative_run
    assert s2["update_losses"] == [s_full["update_losses"][1]]

    full = load_ckpt(s_full["checkpoint"])
    resumed = load_ckpt(s2["checkpoint"])
    mid = load_ckpt(s1["checkpoint"])
    assert set(full) == set(resumed)
    weights = [k for k in full if k in ld.gpt_param_shapes(1, 16, 32)]
    assert len(weights) == len(ld.gpt_param_shapes(1, 16, 32))
    for k in full:  # weights, optimizer moments and step, accumulators, counters
        np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
    assert any(np.abs(full[k] - mid[k]).max() > 0 for k in weights)  # the last update did move them


def test_amp_float16_with_dynamic_loss_scale(tmp_path, corpus, pynative_run):
    """--amp: float16 matmuls, DynamicLossScaleUpdateCell in the cell. With a sum-reduced loss
    the scale must start low enough that no window overflows, and the losses follow float32's."""
    p = run([*data_args(corpus), *TINY, "--amp", "--mode", "pynative", "--ckpt-dir", "ck"], tmp_path)
    s = summary_of(p)
    assert s["compute_dtype"] == "float16" and s["loss_scale_initial"] == 2.0**11  # 2**16 / (2 x 16 tokens)
    assert s["skipped_updates"] == 0 and s["updates"] == 2 and s["optimizer_global_step"] == 2
    _, _, f32 = pynative_run
    np.testing.assert_allclose(s["update_losses"], f32["update_losses"], rtol=1e-3)
    assert s["update_losses"] != f32["update_losses"]  # float16 did run


def test_save_init_and_init_weights_round_trip(tmp_path, corpus):
    npz = tmp_path / "init.npz"
    run([*TINY, "--save-init", str(npz)], tmp_path)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    ref = ld.gpt2_init(1, 16, 32, seed=1)
    assert set(arrays) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(arrays[k], ref[k])
    # (the init statistics are checked in test_gpt2_init_statistics)
    p = run(
        [
            *data_args(corpus),
            *TINY,
            "--updates",
            "1",
            "--eval-every",
            "1",
            "--init-weights",
            str(npz),
            "--mode",
            "pynative",
            "--ckpt-dir",
            "ck",
        ],
        tmp_path,
    )
    assert "initial weights from" in p.stdout
    p = run([*data_args(corpus), *TINY, "--d-model", "32", "--init-weights", str(npz)], tmp_path, expect_rc=2)
    assert "does not fit this model" in p.stderr


# ------------------------------------------------------------------ clear errors


def test_empty_corpus_no_files_match(tmp_path, corpus):
    p = run(["--text-files", str(tmp_path / "nothing" / "**" / "*.txt"), *TINY], tmp_path, expect_rc=2)
    assert "--text-files: no file matches" in p.stderr
    assert "Traceback" not in p.stderr


def test_empty_corpus_all_files_empty(tmp_path, corpus):
    for i in range(3):
        (tmp_path / f"e{i}.txt").write_text("")
    p = run(
        [
            "--text-files",
            str(tmp_path / "*.txt"),
            "--eval-text-files",
            os.path.join(corpus, "held", "**", "*.py"),
            *TINY,
        ],
        tmp_path,
        expect_rc=2,
    )
    assert "training text: the 3 file(s) hold no text" in p.stderr
    assert "Traceback" not in p.stderr


def test_seq_len_above_max_positions(tmp_path, corpus):
    p = run([*data_args(corpus), *TINY, "--seq-len", "33"], tmp_path, expect_rc=2)
    assert "--seq-len 33 is longer than the model's 32 positions" in p.stderr
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------ in process: loss cell, data


def numpy_lm_loss(logits, y, pad):
    """Cross entropy (float64) summed over the targets that are not padding, and their count."""
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    total, count = 0.0, 0
    for b in range(y.shape[0]):
        for t in range(y.shape[1]):
            if y[b, t] != pad:
                total -= logp[b, t, y[b, t]]
                count += 1
    return total, count


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_loss_cell_matches_numpy_cross_entropy(mode):
    import mindspore as ms

    from examples.gpt_lm.model import GPT, LMLoss

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        net = GPT(layers=1, d_model=16, heads=2, max_positions=8, seed=3)
        rng = np.random.default_rng(0)
        # make the logits far from uniform, so a wrong class or a missed position shows
        net.load_arrays({k: v * 20 if k == "wte" else v for k, v in ld.gpt2_init(1, 16, 8, seed=3).items()})
        x = rng.integers(0, 256, (3, 8)).astype(np.int32)
        y = rng.integers(0, 256, (3, 8)).astype(np.int32)
        x[1, 5:] = ld.PAD
        y[1, 4:] = ld.PAD  # a short sequence: 4 real targets
        y[2, :] = ld.PAD  # a row of padding only
        y[0, 7] = 255  # the highest byte value is a real class
        loss_sum, num_items = LMLoss(net)(ms.Tensor(x), ms.Tensor(y))
        logits = net(ms.Tensor(x)).asnumpy()
        assert logits.shape == (3, 8, 256) and logits.dtype == np.float32
        want_sum, want_count = numpy_lm_loss(logits, y, ld.PAD)
        assert want_count == 12
        assert num_items.dtype == ms.int32 and num_items.shape == ()
        assert int(num_items.asnumpy()) == want_count
        assert loss_sum.dtype == ms.float32 and loss_sum.shape == ()
        np.testing.assert_allclose(float(loss_sum.asnumpy()), want_sum, rtol=2e-6)
        assert want_sum / want_count > np.log(256) + 0.5  # far from uniform indeed
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_chunks_vary_in_length_and_order_is_deterministic(tmp_path):
    files = write_corpus(str(tmp_path), 4, seed=5, sizes=[50, 17, 1, 0])
    c = ld.Corpus(files, seq_len=16)
    # 50 bytes -> starts 0,16,32,48 (lengths 17,17,17,2); 17 -> one chunk of 17; 1 and 0 bytes -> none
    assert list(c.lengths) == [17, 17, 17, 2, 17]
    x, y = c.batch([3, 0])
    assert (x[0, 1:] == ld.PAD).all() and (y[0, 1:] == ld.PAD).all() and y[0, 0] != ld.PAD
    raw = open(files[0], "rb").read()
    assert list(x[1]) == list(raw[:16]) and list(y[1]) == list(raw[1:17])
    s1, s2 = ld.TrainStream(c, 2, seed=7), ld.TrainStream(c, 2, seed=7)
    assert [list(s1.indices(m)) for m in range(5)] == [list(s2.indices(m)) for m in range(4, -1, -1)][::-1]
    # 5 chunks, 2 per micro-batch: 2 micro-batches per epoch, then the next epoch's order
    assert s1.per_epoch == 2
    assert list(np.concatenate([s1.indices(2), s1.indices(3)])) == list(ld.epoch_order(5, 7, 1)[:4])
    assert list(ld.epoch_order(5, 7, 0)) != list(ld.epoch_order(5, 7, 1))
    assert list(ld.epoch_order(5, 7, 0)) != list(ld.epoch_order(5, 8, 0))


def test_default_corpus_holds_out_whole_files():
    train, held = ld.default_files()
    assert train and held and not set(train) & set(held)
    assert all(f.endswith(".py") and "site-packages" not in f for f in train + held)
    assert len(held) == -(-(len(train) + len(held)) // ld.EVAL_STRIDE)  # every 20th file
    assert ld.default_files() == (train, held)  # deterministic


def test_gpt2_init_statistics():
    """normal(0, 0.02) for embeddings and matrices, 0.02 / sqrt(2 * layers) for the two residual
    projections of each block, biases 0, LayerNorm 1 / 0 (4,096+ values per matrix: the sample
    std is within ~1.1 % of the true one)."""
    w = ld.gpt2_init(layers=4, d_model=64, max_positions=64, seed=0)
    resid = 0.02 / np.sqrt(2 * 4)
    for name, a in w.items():
        if name.endswith("c_proj.weight"):
            assert abs(a.std() / resid - 1) < 0.05, (name, a.std())
        elif name in ("wte", "wpe") or (name.endswith(".weight") and a.ndim == 2):
            assert abs(a.std() / 0.02 - 1) < 0.05, (name, a.std())
        elif name.endswith(".weight"):
            assert (a == 1).all(), name
        else:
            assert (a == 0).all(), name
    assert len(w) == 2 + 4 * 12 + 2
