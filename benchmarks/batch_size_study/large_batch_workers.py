"""The large-batch study's workers (issue 27): one training run per process, its result a dict.

* :func:`train_cnn` -- a small BatchNorm-free CNN (GroupNorm) on CIFAR-10 (or synthetic images),
  trained for a fixed number of epochs through ``GradAccumCell`` with micro-batches of
  ``micro_batch`` and ``accum`` micro-batches per update (an int, or a schedule for the growing
  batch), evaluated on the test split and on a slice of the training split.
* :func:`train_gpt` -- the example's GPT (examples/gpt_lm) on bytes of text, for a fixed number of
  training sequences, evaluated in bits per byte on the held-out files.

The optimizer and learning-rate schedule of each method come from :func:`build_optimizer`.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from benchmarks.common.proc_memory import import_mindspore, peak_rss_mib

# ============================================================================ learning-rate schedules


def peak_lr(config: dict) -> float:
    """The method's peak learning rate for its (starting) effective batch: the base rate tuned at
    ``base_batch``, scaled linearly (``"linear"``, Goyal et al. 2017), by the square root
    (``"sqrt"``, the LAMB paper's rule for adaptive methods) or not at all (``"none"``)."""
    ratio = config["start_batch"] / config["base_batch"]
    rule = config["scaling"]
    if rule == "none":
        return config["base_lr"]
    if rule == "linear":
        return config["base_lr"] * ratio
    if rule == "sqrt":
        return config["base_lr"] * math.sqrt(ratio)
    raise ValueError(f"unknown scaling rule {rule!r}")


def make_schedule(config: dict, total_updates: int, decay_at: list):
    """A ``LearningRateSchedule`` (or a float): the peak rate of :func:`peak_lr`, reached by a linear
    warm-up from the base rate over ``warmup_updates`` (``mindspore_accum.large_batch``), then
    multiplied by ``decay`` at each update index of ``decay_at`` (step decay)."""
    import mindspore as ms
    from mindspore import Tensor, ops
    from mindspore.nn.learning_rate_schedule import LearningRateSchedule

    from mindspore_accum.large_batch import WarmupLinearScaling

    peak = peak_lr(config)
    warm = int(config["warmup_updates"])
    if not warm and not decay_at:
        return peak

    class StepDecay(LearningRateSchedule):
        """``peak * decay ** (number of milestones <= global_step)``."""

        def __init__(self):
            super().__init__()
            self.milestones = [Tensor(float(m), ms.float32) for m in decay_at]
            self.peak, self.decay = Tensor(peak, ms.float32), Tensor(float(config["decay"]), ms.float32)

        def construct(self, global_step):
            t = ops.cast(global_step, ms.float32)
            lr = self.peak
            for m in self.milestones:
                lr = ops.select(t >= m, lr * self.decay, lr)
            return lr

    after = StepDecay() if decay_at else None
    # WarmupLinearScaling's peak is base * batch / base_batch; with start = the base rate and an
    # explicit peak we pass base_batch = batch and base_lr = peak (the rule applied in peak_lr).
    return WarmupLinearScaling(peak, 1, 1, warm, start=min(config["base_lr"], peak), after=after)


def lr_trace(config: dict, total_updates: int, decay_at: list) -> list:
    """The schedule of :func:`make_schedule` in Python, per update (for the report)."""
    peak, warm, base = peak_lr(config), int(config["warmup_updates"]), min(config["base_lr"], peak_lr(config))
    out = []
    for t in range(total_updates):
        if t < warm:
            out.append(base + (peak - base) * t / warm)
        else:
            out.append(peak * config["decay"] ** sum(t >= m for m in decay_at))
    return out


def actual_lr(schedule, total_updates: int, points: int = 120) -> list:
    """``[[update, lr]]``: the schedule the optimizer was given, evaluated at up to ``points`` update
    indices (all of the first ten, then evenly spaced) -- what the run used, for the report and
    the smoke test (which checks it against the rules written out independently)."""
    from mindspore import Tensor

    steps = sorted(set(range(min(10, total_updates))) | set(np.linspace(0, total_updates - 1, points).astype(int)))
    if isinstance(schedule, float):
        return [[int(t), schedule] for t in steps]
    return [[int(t), float(schedule(Tensor(np.int32(t))).asnumpy())] for t in steps]


def build_optimizer(config: dict, params, schedule):
    """The method's optimizer from mindspore_accum (all fused window ends)."""
    from mindspore_accum import FusedAdamW, FusedLAMB, FusedLARS, FusedMomentum

    opt, wd = config["optimizer"], config["weight_decay"]
    if opt == "momentum":
        return FusedMomentum(params, schedule, config["momentum"], weight_decay=wd)
    if opt == "lars":
        return FusedLARS(params, schedule, config["momentum"], weight_decay=wd, coefficient=config["trust_coef"])
    if opt == "adamw":
        return FusedAdamW(params, schedule, 0.9, 0.99, 1e-8, bias_correction=True)
    if opt == "lamb":
        return FusedLAMB(params, schedule, 0.9, 0.99, 1e-6)
    raise ValueError(f"unknown optimizer {opt!r}")


def accumulation(config: dict):
    """``accumulation_steps`` for the cell: an int, or the growing batch's list of
    ``(from_update, steps)`` pairs (from the plan's ``growth`` entries)."""
    if config.get("growth"):
        return [(int(u), int(k)) for u, k in config["growth"]]
    return int(config["accum"])


# ============================================================================ the CNN


def build_cnn(width: int, groups: int = 4):
    """conv3x3 -> GroupNorm -> ReLU, four times (the first three with stride 2: 32->16->8->4), global
    average pooling, a dense layer to the 10 classes. No BatchNorm: the accumulated update is the
    large batch's update exactly."""
    from mindspore import nn, ops

    chans = [3, width, 2 * width, 4 * width, 4 * width]

    class GroupNormCNN(nn.Cell):
        def __init__(self):
            super().__init__()
            layers = []
            for i in range(4):
                layers += [
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, pad_mode="same", has_bias=False),
                    nn.GroupNorm(groups, chans[i + 1]),
                    nn.ReLU(),
                ]
            self.features = nn.SequentialCell(layers)
            self.head = nn.Dense(chans[-1], 10)

        def construct(self, x):
            return self.head(ops.mean(self.features(x), (2, 3)))

    return GroupNormCNN()


def load_images(config: dict):
    """(train_x, train_y, test_x, test_y): float32 NCHW normalised, int32 labels."""
    from examples.resnet50_cifar10 import data as cd

    if config["data_dir"] == "synthetic":
        tx, ty = cd.synthetic_cifar10(config["train_images"], config["seed"] + 1)
        vx, vy = cd.synthetic_cifar10(config["test_images"], config["seed"] + 2)
    else:
        tx, ty, _ = cd.load_split(config["data_dir"], "train", limit=config["train_images"])
        vx, vy, _ = cd.load_split(config["data_dir"], "test", limit=config["test_images"])

    def prep(x):
        x = (x.astype(np.float32) / 255.0 - cd.MEAN) / cd.STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    return prep(tx), ty.astype(np.int32), prep(vx), vy.astype(np.int32)


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop (4-pixel zero padding) and horizontal flip, per image."""
    n = len(x)
    pad = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
    out = np.empty_like(x)
    flip = rng.random(n) < 0.5
    for i in range(n):
        crop = pad[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return out


def _evaluate_cnn(net, x, y, batch=500) -> dict:
    from mindspore import Tensor

    net.set_train(False)
    correct, loss_sum = 0, 0.0
    for s in range(0, len(y) - len(y) % batch or len(y), batch):
        logits = net(Tensor(x[s : s + batch])).asnumpy().astype(np.float64)
        yy = y[s : s + batch]
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss_sum += float(-logp[np.arange(len(yy)), yy].sum())
        correct += int((logits.argmax(axis=1) == yy).sum())
    n = len(y) - len(y) % batch or len(y)
    net.set_train(True)
    return dict(accuracy=correct / n, loss=loss_sum / n, images=n)


def _micro_batches(config, n_train):
    """Yields (epoch, index array) for every micro-batch of the run: epoch e's order is a permutation
    drawn from (seed, e); the incomplete last micro-batch of an epoch is dropped."""
    micro = config["micro_batch"]
    for e in range(config["epochs"]):
        order = np.random.default_rng([config["seed"], e, 0x1A7B]).permutation(n_train)
        for s in range(0, n_train - micro + 1, micro):
            yield e, order[s : s + micro]


def train_cnn(config: dict) -> dict:
    t_start = time.perf_counter()
    ms = import_mindspore(config["mode"])
    from mindspore import Tensor, nn

    from mindspore_accum import GradAccumCell

    tx, ty, vx, vy = load_images(config)
    ms.set_seed(config["seed"])
    net = build_cnn(config["width"])
    loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    sched_info = config["plan_updates"]
    schedule = make_schedule(config, sched_info["total"], sched_info["decay_at"])
    optimizer = build_optimizer(config, net.trainable_params(), schedule)
    cell = GradAccumCell(loss_net, optimizer, accumulation(config))
    cell.set_train()
    rng = np.random.default_rng([config["seed"], 0xA06])

    window, curve = [], []  # curve: [images seen, mean loss of the window, batch]
    seen, updates, t_train = 0, 0, time.perf_counter()
    max_updates = sched_info["total"]
    for _, idx in _micro_batches(config, len(ty)):
        xb = augment(tx[idx], rng) if config["augment"] else tx[idx]
        loss = float(cell(Tensor(xb), Tensor(ty[idx])).asnumpy())
        if not math.isfinite(loss):
            return _diverged(config, seen, updates, t_start)
        seen += len(idx)
        window.append(loss)
        if cell.pending == 0:  # the call ended a window: an update was applied
            updates += 1
            curve.append([seen, float(np.mean(window)), len(window) * config["micro_batch"]])
            window = []
            if updates == max_updates:
                break
    train_s = time.perf_counter() - t_train
    if updates != max_updates:
        raise SystemExit(f"{config['name']}: {updates} updates applied, the plan says {max_updates}")
    test = _evaluate_cnn(net, vx, vy)
    train_eval = _evaluate_cnn(net, tx[: config["train_eval_images"]], ty[: config["train_eval_images"]])
    return dict(
        diverged=False,
        updates=updates,
        images_seen=seen,
        epochs_seen=seen / len(ty),
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        train_accuracy=train_eval["accuracy"],
        train_loss=train_eval["loss"],
        loss_per_update=curve,
        lr_per_update=lr_trace(config, max_updates, sched_info["decay_at"]),
        lr_used=actual_lr(schedule, max_updates),
        batch_per_update=[c[2] for c in curve],
        train_s=train_s,
        images_per_s=seen / train_s,
        peak_rss_mib=peak_rss_mib(),
        wall_s=time.perf_counter() - t_start,
    )


def _diverged(config, seen, updates, t_start) -> dict:
    """A run whose loss became non-finite: recorded (a result of the study), not an error."""
    print(f"{config['name']}: non-finite loss after {updates} updates ({seen} samples)", file=sys.stderr)
    nan = float("nan")
    return dict(
        diverged=True,
        updates=updates,
        images_seen=seen,
        test_accuracy=nan,
        test_loss=nan,
        train_accuracy=nan,
        train_loss=nan,
        eval_bits_per_byte=nan,
        loss_per_update=[],
        wall_s=time.perf_counter() - t_start,
    )


# ============================================================================ the GPT


def gpt_corpora(config: dict):
    """(train corpus, held-out corpus) of examples/gpt_lm/data.py: the standard library's .py files
    (every 20th held out), or ``text_glob`` (split the same way)."""
    from examples.gpt_lm import data as ld

    globs = [config["text_glob"]] if config.get("text_glob") else None
    train_files, eval_files, _ = ld.resolve_files(globs)
    return ld.Corpus(train_files, config["seq_len"]), ld.Corpus(eval_files, config["seq_len"])


def train_gpt(config: dict) -> dict:
    t_start = time.perf_counter()
    ms = import_mindspore(config["mode"])
    from mindspore import Tensor

    from examples.gpt_lm import data as ld
    from examples.gpt_lm.model import GPT, LMLoss
    from examples.gpt_lm.train import param_groups
    from mindspore_accum import GradAccumCell

    train, held = gpt_corpora(config)
    stream = ld.TrainStream(train, config["micro_batch"], config["seed"])
    ms.set_seed(config["seed"])
    net = GPT(config["layers"], config["d_model"], config["heads"], config["seq_len"], seed=config["seed"])
    loss_cell = LMLoss(net)
    sched_info = config["plan_updates"]
    schedule = make_schedule(config, sched_info["total"], sched_info["decay_at"])
    optimizer = build_optimizer(config, param_groups(net, config["weight_decay"]), schedule)
    cell = GradAccumCell(loss_cell, optimizer, accumulation(config), clip_global_norm=1.0)
    cell.set_train()
    window, curve, updates, t_train = [], [], 0, time.perf_counter()
    for m in range(sched_info["total"] * config["accum"]):
        x, y = stream.batch(m)
        loss = float(cell(Tensor(x), Tensor(y)).asnumpy())
        if not math.isfinite(loss):
            return _diverged(config, (m + 1) * config["micro_batch"], updates, t_start)
        window.append(loss)
        if cell.pending == 0:
            updates += 1
            curve.append([(m + 1) * config["micro_batch"], float(np.mean(window)), config["effective_batch"]])
            window = []
    train_s = time.perf_counter() - t_train
    total, items = 0.0, 0
    loss_cell.set_train(False)
    for x, y in ld.eval_batches(held, config["micro_batch"], config["eval_batches"]):
        if len(x) < config["micro_batch"]:
            continue  # one shape for GRAPH mode
        s, n = loss_cell(Tensor(x), Tensor(y))
        total += float(s.asnumpy())
        items += int(n.asnumpy())
    bpb = total / max(items, 1) / math.log(2)
    return dict(
        diverged=False,
        updates=updates,
        sequences_seen=sched_info["total"] * config["effective_batch"],
        eval_bits_per_byte=bpb,
        eval_tokens=items,
        train_bits_per_byte_last=float(np.mean([c[1] for c in curve[-max(1, len(curve) // 10) :]])) / math.log(2),
        loss_per_update=curve,
        lr_per_update=lr_trace(config, sched_info["total"], sched_info["decay_at"]),
        lr_used=actual_lr(schedule, sched_info["total"]),
        train_s=train_s,
        peak_rss_mib=peak_rss_mib(),
        wall_s=time.perf_counter() - t_start,
    )
