"""Byte-level language-model data for examples/gpt_lm/train.py and its PyTorch twin.

NumPy and the standard library only (no MindSpore, no PyTorch): the example and
benchmarks/vs_pytorch/pytorch_gpt_lm.py both import this module, so they see the same bytes, the same
chunks, the same shuffle and the same padding.

* Vocabulary: the 256 byte values, plus ``PAD`` = 256 (an input embedding only; targets equal to
  ``PAD`` are ignored by the loss).
* Corpus: by default the Python standard library's own ``.py`` files
  (``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded), sorted by relative path.
  The held-out files are the slice ``files[::EVAL_STRIDE]`` (every 20th file), the training
  files are all the others: evaluation text is never seen in training, and both sets span the
  whole library. ``--text-files`` / ``--eval-text-files`` replace either set with globs.
* Chunks: each document is cut into pieces of at most ``seq_len + 1`` bytes, consecutive
  pieces overlapping by one byte (so every byte of a document but its first is a target once).
  The last piece of a document is shorter: lengths vary. Pieces of fewer than 2 bytes (no
  target) are dropped.
* Batches: micro-batch ``m`` (0-based, counted over the whole run) takes chunks
  ``order_e[(m mod M) * B : (m mod M + 1) * B]`` of epoch ``e = m div M`` (M = chunks // B, the
  incomplete tail of an epoch is dropped), where ``order_e`` is a permutation drawn from
  ``(seed, e)``. The batch is padded with ``PAD`` to ``seq_len`` (one fixed shape: GRAPH mode
  compiles once). ``x = chunk[:-1]``, ``y = chunk[1:]``.
"""

from __future__ import annotations

import glob
import math
import os
import sysconfig

import numpy as np

VOCAB = 256  # byte values: the output classes
PAD = 256  # padding id: input embedding row 256, ignored as a target
EMBED_ROWS = VOCAB + 1
EVAL_STRIDE = 20  # default corpus: every 20th file (sorted) is held out
EVAL_ORDER_SEED = 12345  # the evaluation chunks are picked the same way whatever --seed is


class DataError(Exception):
    """Bad or missing data; the scripts print the message and exit with status 2."""


# ============================================================================ file lists


def stdlib_root():
    return sysconfig.get_paths()["stdlib"]


def default_files(root=None):
    """(train_files, eval_files): the standard library's .py files, sorted, every
    EVAL_STRIDE-th one held out."""
    root = root or stdlib_root()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    files.sort(key=lambda p: os.path.relpath(p, root))
    held = set(files[::EVAL_STRIDE])
    return [f for f in files if f not in held], files[::EVAL_STRIDE]


def expand_globs(patterns, what):
    """Files matching any pattern (``**`` recursive), sorted, duplicates removed."""
    out = set()
    for pat in patterns:
        out.update(p for p in glob.glob(os.path.expanduser(pat), recursive=True) if os.path.isfile(p))
    if not out:
        raise DataError(f"{what}: no file matches {' '.join(patterns)!s}")
    return sorted(out)


def resolve_files(text_files=None, eval_text_files=None):
    """Returns (train_files, eval_files, description) from the command line's globs."""
    if not text_files and not eval_text_files:
        tr, ev = default_files()
        return (
            tr,
            ev,
            f"python-stdlib:{stdlib_root()} ({len(tr)} training files, every {EVAL_STRIDE}th of "
            f"{len(tr) + len(ev)} held out: {len(ev)} files)",
        )
    if text_files:
        tr = expand_globs(text_files, "--text-files")
    else:
        tr = default_files()[0]
    if eval_text_files:
        ev = expand_globs(eval_text_files, "--eval-text-files")
    elif text_files:
        # Held out from the given files: the same every-20th slice (never the same files).
        if len(tr) < 2:
            raise DataError(
                f"--text-files matches {len(tr)} file: give --eval-text-files for the held-out text "
                "(evaluation never uses the training files)"
            )
        ev, tr = tr[::EVAL_STRIDE], [f for i, f in enumerate(tr) if i % EVAL_STRIDE]
    else:
        ev = default_files()[1]
    overlap = set(map(os.path.realpath, tr)) & set(map(os.path.realpath, ev))
    if overlap:
        raise DataError(f"{len(overlap)} file(s) are both training and evaluation text, e.g. {sorted(overlap)[0]}")
    return tr, ev, f"files ({len(tr)} training, {len(ev)} held-out)"


# ============================================================================ chunks


class Corpus:
    """All bytes of a file set in one uint8 buffer plus the chunk table (start, length)."""

    def __init__(self, files, seq_len, what="corpus"):
        if seq_len < 1:
            raise DataError(f"--seq-len must be >= 1, got {seq_len}")
        self.files = list(files)
        self.seq_len = int(seq_len)
        parts, starts, lengths = [], [], []
        offset = 0
        for f in self.files:
            with open(f, "rb") as fh:
                data = fh.read()
            if len(data) < 2:
                continue
            n = len(data)
            # pieces [s, s + L + 1) for s = 0, L, 2L, ... while at least 2 bytes remain
            s = np.arange(0, n - 1, self.seq_len, dtype=np.int64)
            starts.append(offset + s)
            lengths.append(np.minimum(self.seq_len + 1, n - s))
            parts.append(np.frombuffer(data, np.uint8))
            offset += n
        if not parts:
            raise DataError(f"{what}: the {len(self.files)} file(s) hold no text (all empty or 1 byte)")
        self.buf = np.concatenate(parts)
        self.starts = np.concatenate(starts)
        self.lengths = np.concatenate(lengths).astype(np.int64)
        self.num_bytes = int(self.buf.size)
        self.num_targets = int((self.lengths - 1).sum())

    def __len__(self):
        return int(self.starts.size)

    def batch(self, idx):
        """(x, y) int32 arrays of shape (len(idx), seq_len), padded with PAD."""
        n, L = len(idx), self.seq_len
        x = np.full((n, L), PAD, np.int32)
        y = np.full((n, L), PAD, np.int32)
        for r, c in enumerate(idx):
            s, ln = int(self.starts[c]), int(self.lengths[c])
            piece = self.buf[s : s + ln].astype(np.int32)
            x[r, : ln - 1] = piece[:-1]
            y[r, : ln - 1] = piece[1:]
        return x, y


def epoch_order(n, seed, epoch):
    """The permutation of the n training chunks used in epoch ``epoch`` (a function of both)."""
    return np.random.default_rng([int(seed), int(epoch), 0x6C6D]).permutation(n)


class TrainStream:
    """Micro-batch ``m`` of the run as a pure function of (corpus, batch size, seed, m): a
    resumed run continues with exactly the batches the interrupted one would have seen."""

    def __init__(self, corpus, batch_size, seed):
        self.corpus, self.B, self.seed = corpus, int(batch_size), int(seed)
        self.per_epoch = len(corpus) // self.B
        if self.per_epoch == 0:
            raise DataError(
                f"the training text gives {len(corpus)} chunk(s) of at most --seq-len+1 = "
                f"{corpus.seq_len + 1} bytes: fewer than one micro-batch of {self.B}"
            )
        self._epoch, self._order = None, None

    def indices(self, m):
        e, i = divmod(int(m), self.per_epoch)
        if e != self._epoch:
            self._epoch, self._order = e, epoch_order(len(self.corpus), self.seed, e)
        return self._order[i * self.B : (i + 1) * self.B]

    def batch(self, m):
        return self.corpus.batch(self.indices(m))


def eval_batches(corpus, batch_size, count):
    """The held-out batches: ``count`` batches of chunks picked by a fixed permutation (the same
    for every --seed), or all chunks when there are fewer. Yields (x, y)."""
    order = np.random.default_rng(EVAL_ORDER_SEED).permutation(len(corpus))
    if count:
        order = order[: count * batch_size]
    for s in range(0, len(order), batch_size):
        yield corpus.batch(order[s : s + batch_size])


# ============================================================================ schedule


def lr_at(step, peak, warmup, total, min_lr=0.0):
    """Learning rate of update ``step`` (0-based): linear warm-up over ``warmup`` updates
    (peak * (step + 1) / warmup), then cosine from ``peak`` to ``min_lr`` at update ``total``.
    The Python twin of the example's LearningRateSchedule."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))


# ============================================================================ model shapes and GPT-2 init
# (framework-neutral: the example and the PyTorch twin build the same named arrays)

INIT_STD = 0.02


def gpt_param_shapes(layers, d_model, max_positions):
    """{name: shape} of every parameter, in a fixed order (shared with the PyTorch twin)."""
    d = d_model
    shapes = {"wte": (EMBED_ROWS, d), "wpe": (max_positions, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (d,),
                p + "ln_1.bias": (d,),
                p + "attn.c_attn.weight": (d, 3 * d),
                p + "attn.c_attn.bias": (3 * d,),
                p + "attn.c_proj.weight": (d, d),
                p + "attn.c_proj.bias": (d,),
                p + "ln_2.weight": (d,),
                p + "ln_2.bias": (d,),
                p + "mlp.c_fc.weight": (d, 4 * d),
                p + "mlp.c_fc.bias": (4 * d,),
                p + "mlp.c_proj.weight": (4 * d, d),
                p + "mlp.c_proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def gpt2_init(layers, d_model, max_positions, seed):
    """The initial weights as {name: float32 array}, drawn with NumPy from ``seed`` (the same
    arrays whatever framework loads them)."""
    rng = np.random.default_rng([int(seed), 0x6770])
    resid_std = INIT_STD / math.sqrt(2 * layers)
    out = {}
    for name, shape in gpt_param_shapes(layers, d_model, max_positions).items():
        if name.endswith(("c_proj.weight",)):
            out[name] = rng.normal(0.0, resid_std, shape).astype(np.float32)
        elif name in ("wte", "wpe") or name.endswith(".weight") and len(shape) == 2:
            out[name] = rng.normal(0.0, INIT_STD, shape).astype(np.float32)
        elif name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            out[name] = np.ones(shape, np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def count_params(layers, d_model, max_positions):
    return int(sum(np.prod(s) for s in gpt_param_shapes(layers, d_model, max_positions).values()))


# ============================================================================ initial weights


def save_npz(path, arrays):
    """Writes {name: float32 array} atomically (temporary name, then rename)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.partial.npz")
    np.savez(tmp, **{k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()})
    os.replace(tmp, path)
    return path


def load_npz(path, expected):
    """{name: array} from ``path``, checked against ``expected`` = {name: shape}."""
    if not os.path.isfile(path):
        raise DataError(f"--init-weights: {path} does not exist")
    with np.load(path) as z:
        got = {k: z[k] for k in z.files}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    bad = [
        f"{k}: {got[k].shape} vs {tuple(expected[k])}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k])
    ]
    if missing or extra or bad:
        raise DataError(
            f"--init-weights {path} does not fit this model: missing {missing[:4]}, "
            f"unexpected {extra[:4]}, wrong shapes {bad[:4]} (same --layers/--d-model/--heads/"
            "--max-positions as with --save-init?)"
        )
    return got
