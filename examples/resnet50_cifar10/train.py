#!/usr/bin/env python
"""Train ResNet50 on CIFAR-10 with gradient accumulation (mindspore_accum.GradAccumCell +
FusedMomentum), then evaluate the checkpoint that was written.

Written from scratch as the corrected version of the script in the project's source
material; examples/README.md lists that script's defects and how each is fixed here.

    python -m examples.resnet50_cifar10.train --data-dir data --download \
        --batch-size 32 --accum-steps 4 --epochs 2

Effective batch = --batch-size x --accum-steps (x the number of workers with --distributed).
The learning rate is given for the effective batch (default 0.1 * effective / 256), warmed up
linearly and decayed with a cosine, one step per optimizer update. The last line of stdout is a
JSON summary.

Data parallelism (MindSpore, launched with msrun; see examples/README.md):

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --join=True --log_dir=msrun_logs \
        python -m examples.resnet50_cifar10.train --distributed --data-dir data --batch-size 32 --accum-steps 2
"""

import argparse
import json
import math
import os
import signal
import sys
import time

_T0 = time.perf_counter()

import numpy as np  # noqa: E402

from examples import common  # noqa: E402  (no MindSpore at import)
from examples.common import cpu_has_avx512, emit_summary, log, make_lr_schedule  # noqa: E402,F401  (the PyTorch twin's too)
from examples.resnet50_cifar10 import data as cd  # noqa: E402  (no MindSpore import at module level)

CKPT_PREFIX = "resnet50_cifar10"


# ============================================================================ arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        default="data",
        help="folder with the CIFAR-10 binary files, or their parent holding cifar-10-batches-bin/",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download, MD5-check and extract the official binary archive into --data-dir if absent",
    )
    g.add_argument("--download-url", default=cd.DEFAULT_URL)
    g.add_argument("--download-md5", default=cd.DEFAULT_MD5, help="expected MD5 of the archive ('' skips the check)")
    g.add_argument(
        "--synthetic",
        action="store_true",
        help="train and test on generated data (smoke tests only; accuracy is meaningless)",
    )
    g.add_argument("--synthetic-size", type=int, default=512, help="train images with --synthetic (test: 1/4)")
    g.add_argument("--limit-train", type=int, default=None, metavar="N", help="use the first N training images")
    g.add_argument("--limit-test", type=int, default=None, metavar="N", help="evaluate on the first N test images")
    g.add_argument(
        "--num-workers",
        type=int,
        default=cd.default_num_workers(),
        help="data pipeline workers (default from os.cpu_count())",
    )

    g = p.add_argument_group("model")
    g.add_argument(
        "--stem",
        choices=["cifar", "imagenet"],
        default="cifar",
        help="cifar: 3x3 conv, no max-pool (for 32x32 inputs); imagenet: 7x7/2 conv + max-pool",
    )
    g.add_argument(
        "--amp", action="store_true", help="float16 compute (BatchNorm and loss in float32) with dynamic loss scaling"
    )

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=2)
    g.add_argument("--batch-size", type=int, default=32, help="micro-batch size (what fits in memory)")
    g.add_argument("--accum-steps", type=int, default=4, help="micro-batches accumulated per optimizer update")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate for the EFFECTIVE batch (default 0.1 * batch*accum / 256)",
    )
    g.add_argument(
        "--warmup-frac",
        type=float,
        default=0.125,
        help="fraction of all updates spent in linear warm-up before the cosine decay",
    )
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=5e-4, help="L2 on conv/dense weights only")
    g.add_argument("--nesterov", action="store_true")
    g.add_argument(
        "--clip-grad-norm",
        type=float,
        default=None,
        help="clip the accumulated gradient to this global norm before each update",
    )
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    g.add_argument("--device", choices=["CPU", "GPU", "Ascend"], default="CPU")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="data parallelism across the workers started by msrun: mindspore.communication.init(), "
        "ParallelMode.DATA_PARALLEL, training set sharded per worker, gradients all-reduced "
        "once per accumulation window; rank 0 writes checkpoints, reports and evaluates",
    )
    g.add_argument(
        "--no-cpu-isa-fix",
        action="store_true",
        help="do not set ONEDNN_MAX_CPU_ISA=AVX2 (see README: ~50x slower convs on AVX-512 CPUs)",
    )

    g = p.add_argument_group("checkpoints and evaluation")
    g.add_argument("--ckpt-dir", default="checkpoints")
    g.add_argument(
        "--ckpt-every",
        type=int,
        default=0,
        metavar="U",
        help="also write a checkpoint every U updates (0: only at the end of each epoch)",
    )
    g.add_argument("--keep-ckpt", type=int, default=3, help="keep the newest K checkpoints this script wrote")
    g.add_argument(
        "--resume",
        default=None,
        metavar="CKPT|auto",
        help="continue from a checkpoint written by this script (mid-epoch and mid-window "
        "included); 'auto' picks the newest in --ckpt-dir",
    )
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="M",
        help="stop after M micro-batches in this run, writing a resumable checkpoint (SIGINT/SIGTERM do the same)",
    )
    g.add_argument(
        "--eval-batch-size",
        type=int,
        default=16,
        help="evaluation batch (small batches keep the activations in cache: faster on CPU)",
    )
    g.add_argument(
        "--no-fold-bn",
        action="store_true",
        help="evaluate with the BatchNorm layers as they are instead of folded into the convolutions",
    )
    g.add_argument("--no-eval", action="store_true")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar (one line per epoch instead)")
    g.add_argument("--summary-json", default=None, metavar="PATH", help="also write the JSON summary here")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "accum_steps", "eval_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("limit_train", "limit_test", "stop_after"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.synthetic and args.download:
        p.error("--synthetic and --download exclude each other")
    return args


# ============================================================================ CPU speed fix


def apply_cpu_isa_fix(args):
    """ONEDNN_MAX_CPU_ISA=AVX2 before MindSpore is imported (examples.common.apply_cpu_isa_fix)."""
    return common.apply_cpu_isa_fix(args, convolutions=True)


# ============================================================================ data


def load_data(args):
    """Returns dict(train=(x, y), test=(x, y), source=str). Never imports MindSpore."""
    if args.synthetic:
        bar = "!" * 78
        log(bar)
        log("!! --synthetic: training and testing on GENERATED images, not CIFAR-10.")
        log("!! Use this for smoke tests only; the accuracy printed below means nothing.")
        log(bar)
        ntr = args.limit_train or args.synthetic_size
        nte = args.limit_test or max(1, args.synthetic_size // 4)
        return {
            "train": cd.synthetic_cifar10(ntr, args.seed),
            "test": cd.synthetic_cifar10(nte, args.seed + 1),
            "source": "synthetic",
        }
    if args.download:
        cd.download_cifar10(args.data_dir, args.download_url, args.download_md5, log=log)
    xtr, ytr, ftr = cd.load_split(args.data_dir, "train", args.limit_train)
    xte, yte, fte = (None, None, [])
    if not args.no_eval:
        xte, yte, fte = cd.load_split(args.data_dir, "test", args.limit_test)
    log(
        f"[data] train: {len(ytr):,} images from {', '.join(os.path.basename(f) for f in ftr)}"
        + (f" (--limit-train {args.limit_train})" if args.limit_train else "")
    )
    if not args.no_eval:
        log(
            f"[data] test:  {len(yte):,} images from {', '.join(os.path.basename(f) for f in fte)}"
            + (f" (--limit-test {args.limit_test})" if args.limit_test else "")
        )
    return {"train": (xtr, ytr), "test": (xte, yte), "source": "cifar10:" + cd.resolve_data_dir(args.data_dir)}


# ============================================================================ schedule


def lr_at(step, peak, warmup, total, final=0.0):
    """Learning rate of update number ``step`` (0-based); the Python twin of WarmupCosineLR."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


# ============================================================================ model + train cell


def build_network(args):
    from examples.resnet50_cifar10.model import ResNet50, count_params, expected_param_count

    net = ResNet50(num_classes=cd.NUM_CLASSES, stem=args.stem)
    n, want = count_params(net), expected_param_count(cd.NUM_CLASSES, args.stem)
    if n != want:
        raise RuntimeError(f"ResNet50 has {n:,} trainable parameters, expected {want:,}")
    log(f"[model] ResNet50, {args.stem} stem, {n:,} trainable parameters (expected {want:,}: ok)")
    return net, n


def make_loss_cell(net, amp):
    """Network + mean softmax cross-entropy; also records the micro-batch's correct count.

    The correct count is written to a non-trainable Parameter with ops.assign (a side effect,
    like BatchNorm's running statistics), so the progress bar shows training accuracy without
    a second forward pass while the train cell still sees a plain scalar loss.
    """
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops

    class NetWithLoss(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.net = net
            self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
            self.correct = Parameter(Tensor(0.0, ms.float32), name="train_correct", requires_grad=False)

        def construct(self, x, y):
            logits = ops.cast(self.net(x), ms.float32)
            loss = self.ce(logits, y)
            correct = ops.cast(ops.equal(ops.argmax(logits, dim=1), y), ms.float32).sum()
            return ops.depend(loss, ops.assign(self.correct, correct))

    if amp:
        from mindspore import amp as msamp

        # O2: conv/dense in float16, BatchNorm kept in float32, network output cast back.
        net = msamp.auto_mixed_precision(net, "O2")
    return NetWithLoss()


def param_groups(net, weight_decay):
    """Weight decay on convolution and dense weights (ndim > 1) only; none on BN gamma/beta or biases."""
    decay = [p for p in net.trainable_params() if len(p.shape) > 1]
    no_decay = [p for p in net.trainable_params() if len(p.shape) <= 1]
    return (
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        len(decay),
        len(no_decay),
    )


def build_train_cell(net_with_loss, groups, lr_schedule, args):
    """THE place where mindspore_accum is used: FusedMomentum + GradAccumCell.

    Returns (train_cell, optimizer). Loss scaling lives in the cell (dynamic with --amp), so
    the optimizer's own static loss_scale stays 1.0.
    """
    from mindspore import nn

    import mindspore_accum

    optimizer = mindspore_accum.FusedMomentum(
        groups, learning_rate=lr_schedule, momentum=args.momentum, nesterov=args.nesterov
    )
    loss_scale = None
    if args.amp:
        loss_scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=2.0**12, scale_factor=2, scale_window=1000)
    train_cell = mindspore_accum.GradAccumCell(
        net_with_loss, optimizer, args.accum_steps, clip_global_norm=args.clip_grad_norm, loss_scale=loss_scale
    )
    return train_cell, optimizer


# ============================================================================ checkpoints

RUN_KEYS = (
    "batch_size",
    "accum_steps",
    "epochs",
    "seed",
    "stem",
    "amp",
    "lr",
    "warmup_frac",
    "min_lr",
    "momentum",
    "weight_decay",
    "nesterov",
    "train_images",
    "data_source",
    "world_size",
)


def save_checkpoint(train_cell, args, state, run_cfg, written, writer=True):
    """Writes the checkpoint; returns its path. ``writer=False`` (ranks > 0 under --distributed)
    only returns the path rank 0 writes: the weights, moments and step are identical on every
    rank, and the script saves there only at window boundaries (empty accumulators)."""
    from mindspore_accum import save_checkpoint_atomic

    path = os.path.join(args.ckpt_dir, common.ckpt_name(CKPT_PREFIX, state["updates"], state["micro_total"]))
    if not writer:
        return path
    extra = {f"run.{k}": v for k, v in state.items()}
    extra["run.config"] = json.dumps(run_cfg, sort_keys=True)
    # temporary name + rename, with a CRC: a crash mid-write never leaves a truncated *.ckpt behind
    save_checkpoint_atomic(train_cell, path, append_dict=extra)
    common.rotate_checkpoints(written, path, args.keep_ckpt)
    return path  # as given (relative to the working directory), the name every rank computes


def load_resume(train_cell, path, run_cfg):
    from mindspore_accum import load_checkpoint_verified

    return common.load_resume(
        train_cell,
        path,
        run_cfg,
        RUN_KEYS,
        load=load_checkpoint_verified,
        error=cd.DataError,
        hint=". Resume with the same settings, or start a new run in another --ckpt-dir.",
    )


# ============================================================================ evaluation


def evaluate_checkpoint(path, args, test):
    """Evaluate the checkpoint FILE that was written, in a freshly built network."""
    import mindspore as ms

    from examples.resnet50_cifar10.model import ResNet50, fold_batchnorm
    from mindspore_accum import load_checkpoint_verified

    net = ResNet50(num_classes=cd.NUM_CLASSES, stem=args.stem)
    # checks the CRC, and is not refused for memory the page cache holds (MindSpore 2.10)
    pd = load_checkpoint_verified(path)
    not_loaded, _ = ms.load_param_into_net(net, pd)
    if not_loaded:
        raise RuntimeError(f"{path} lacks network parameters: {not_loaded[:5]}")
    net.set_train(False)
    if not args.no_fold_bn:  # same logits up to float rounding, fewer memory-bound kernels
        fold_batchnorm(net)
    x, y = test
    ds = cd.make_dataset(x, y, args.eval_batch_size, drop_remainder=False, num_workers=args.num_workers)
    correct, seen, loss_sum = 0, 0, 0.0
    t = time.perf_counter()
    for xb, yb in ds.create_tuple_iterator(output_numpy=True, num_epochs=1):
        logits = net(ms.Tensor(xb)).asnumpy().astype(np.float64)
        m = logits.max(1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
        loss_sum += float(-logp[np.arange(len(yb)), yb].sum())
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
    if seen != len(y):
        raise RuntimeError(f"evaluated {seen} of {len(y)} test images")
    return {
        "test_accuracy": correct / seen,
        "test_loss": loss_sum / seen,
        "test_images": seen,
        "eval_time_s": round(time.perf_counter() - t, 2),
    }


# ============================================================================ main


def main(argv=None):
    args = parse_args(argv)
    isa = apply_cpu_isa_fix(args)
    try:
        data = load_data(args)  # fails fast on missing/malformed data, before MindSpore starts
    except cd.DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        return train(args, data, isa)
    except cd.DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def init_distributed():
    """mindspore.communication.init() + DATA_PARALLEL. Must run BEFORE the train cell is built:
    GradAccumCell reads the parallel mode at construction (then all-reduces once per window)."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def shard_order(order, rank, world, count):
    """Rank ``rank``'s part of an epoch's shuffled order: every ``world``-th sample starting at
    ``rank``, cut to ``count`` samples, so every worker gets the same number of micro-batches (the
    window all-reduces pair up) and the shards are disjoint. Global micro-batch i of the epoch is
    micro-batch i of every worker, together the first ``world*count`` samples of ``order``."""
    return order[rank::world][:count]


def train(args, data, isa):
    import mindspore as ms
    from mindspore import Tensor
    from tqdm import tqdm

    ms.set_seed(args.seed)  # the same seed on every rank: identical initial weights
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(args.device)
    rank, world = 0, 1
    if args.distributed:
        rank, world = init_distributed()
        log(
            f"[dist] rank {rank} of {world}: DATA_PARALLEL, gradients all-reduced once per accumulation window"
            + ("" if rank == 0 else "; rank 0 writes checkpoints, reports and evaluates")
        )
    lead = rank == 0

    xtr, ytr = data["train"]
    n_train = len(ytr)
    B, K = args.batch_size, args.accum_steps
    micro_per_epoch = n_train // (B * world)  # per worker
    if micro_per_epoch == 0:
        raise cd.DataError(
            f"{n_train} training images are fewer than one micro-batch of {B}"
            + (f" per worker ({world} workers)" if world > 1 else "")
        )
    updates_per_epoch = math.ceil(micro_per_epoch / K)
    total_updates = updates_per_epoch * args.epochs
    eff = B * K * world
    peak = args.lr if args.lr is not None else 0.1 * eff / 256
    warmup = max(1, round(args.warmup_frac * total_updates)) if args.warmup_frac > 0 else 0
    used = micro_per_epoch * B * world
    if args.distributed:
        log(
            f"[train] {world} workers x micro-batch {B} x {K} accumulation = effective batch {eff}; "
            f"{micro_per_epoch} micro-batches per worker and epoch (shard of {micro_per_epoch * B} images each; "
            f"{used} images used, the last {n_train - used} of each shuffled epoch dropped) "
            f"-> {updates_per_epoch} updates/epoch, {total_updates} in {args.epochs} epoch(s)"
        )
    else:
        log(
            f"[train] micro-batch {B} x {K} accumulation = effective batch {eff}; {micro_per_epoch} micro-batches "
            f"({micro_per_epoch * B} images, the last {n_train - micro_per_epoch * B} of each shuffled epoch dropped) "
            f"-> {updates_per_epoch} updates/epoch, {total_updates} in {args.epochs} epoch(s)"
        )
    log(
        f"[train] lr {peak:g} for the effective batch, linear warm-up over {warmup} updates then cosine to "
        f"{args.min_lr:g}; momentum {args.momentum}, weight decay {args.weight_decay:g} on conv/dense weights, "
        f"nesterov {args.nesterov}, amp {args.amp}, mode {args.mode}, {args.num_workers} data worker(s)"
    )

    net, n_params = build_network(args)
    loss_cell = make_loss_cell(net, args.amp)
    groups, n_decay, n_nodecay = param_groups(net, args.weight_decay)
    log(f"[train] weight decay on {n_decay} weight tensors, not on {n_nodecay} BN/bias tensors")
    train_cell, optimizer = build_train_cell(
        loss_cell, groups, make_lr_schedule(peak, warmup, total_updates, args.min_lr), args
    )
    train_cell.set_train(True)

    run_cfg = {
        "batch_size": B,
        "accum_steps": K,
        "epochs": args.epochs,
        "seed": args.seed,
        "stem": args.stem,
        "amp": args.amp,
        "lr": peak,
        "warmup_frac": args.warmup_frac,
        "min_lr": args.min_lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "nesterov": args.nesterov,
        "train_images": n_train,
        "data_source": data["source"],
    }
    if args.distributed:  # another world size shards the data differently: refused on resume
        run_cfg["world_size"] = world
    state = {"epoch": 0, "mb_in_epoch": 0, "micro_total": 0, "updates": 0}
    resumed_from = None
    if args.resume:
        path = common.latest_checkpoint(args.ckpt_dir, CKPT_PREFIX) if args.resume == "auto" else args.resume
        if path is None:
            raise cd.DataError(f"--resume auto: no {CKPT_PREFIX}-*.ckpt in {args.ckpt_dir}")
        state.update(load_resume(train_cell, path, run_cfg))
        resumed_from = path
        want_pending = state["mb_in_epoch"] % K
        if int(train_cell.pending) != want_pending:
            raise RuntimeError(
                f"checkpoint {path}: train cell has {train_cell.pending} pending micro-batches, "
                f"the loop state says {want_pending}"
            )
        log(
            f"[resume] {path}: epoch {state['epoch'] + 1}, micro-batch {state['mb_in_epoch']}/{micro_per_epoch} "
            f"of it, {state['updates']} updates done, {want_pending} micro-batch(es) pending in the window"
        )

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    if not args.distributed:
        # Under msrun the workers could see a signal at different micro-batches and would then
        # wait for each other's all-reduce forever: there SIGINT/SIGTERM end the job (resume from
        # the last checkpoint, see --ckpt-every) and --stop-after is the clean way to stop.
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    written, last_ckpt = [], None
    run_micro, run_images = 0, 0
    loss_hist, correct_sum, seen_sum = [], 0.0, 0
    t_train = time.perf_counter()
    t_first = None
    stopped = None
    pbar = None
    while state["epoch"] < args.epochs and stopped is None:
        ep = state["epoch"]
        start = state["mb_in_epoch"]
        order = cd.epoch_order(n_train, args.seed, ep)
        aug_seed = args.seed
        if args.distributed:
            order = shard_order(order, rank, world, micro_per_epoch * B)
            aug_seed = args.seed + 1_000_003 * rank  # crops/flips drawn per (seed, epoch, position in the shard)
        batches = []  # a run stopped right after an epoch's last micro-batch resumes into its flush
        if start < micro_per_epoch:
            batches = cd.make_dataset(
                xtr,
                ytr,
                B,
                order=order,
                start=start * B,
                count=(micro_per_epoch - start) * B,
                augment=True,
                seed=aug_seed,
                epoch=ep,
                drop_remainder=True,
                num_workers=args.num_workers,
            ).create_tuple_iterator(output_numpy=True, num_epochs=1)
        pbar = tqdm(
            total=micro_per_epoch,
            initial=start,
            desc=f"epoch {ep + 1}/{args.epochs}",
            unit="mb",
            disable=args.no_progress or not lead,
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )
        ep_loss, ep_correct, ep_seen = 0.0, 0.0, 0
        t_ep = time.perf_counter()
        for xb, yb in batches:
            loss = float(train_cell(Tensor(xb), Tensor(yb)).asnumpy())
            correct = float(loss_cell.correct.asnumpy())
            if t_first is None:
                t_first = time.perf_counter() - t_train
            state["mb_in_epoch"] += 1
            state["micro_total"] += 1
            run_micro += 1
            run_images += len(yb)
            if state["mb_in_epoch"] % K == 0:
                state["updates"] += 1
            if int(train_cell.pending) != state["mb_in_epoch"] % K:
                raise RuntimeError(
                    f"train cell reports {train_cell.pending} pending micro-batches, "
                    f"expected {state['mb_in_epoch'] % K}"
                )
            if not math.isfinite(loss) and not args.amp:
                raise RuntimeError(f"loss is {loss} at micro-batch {state['micro_total']}")
            loss_hist.append(loss)
            ep_loss += loss * len(yb)
            ep_correct += correct
            ep_seen += len(yb)
            elapsed = time.perf_counter() - t_ep
            pbar.update(1)
            pbar.set_postfix(
                loss=f"{ep_loss / ep_seen:.3f}",
                acc=f"{ep_correct / ep_seen:.3f}",
                img_s=f"{ep_seen / max(elapsed, 1e-9):.1f}",
                upd=state["updates"],
                refresh=False,
            )
            if (
                args.ckpt_every
                and state["mb_in_epoch"] % K == 0
                and state["updates"] % args.ckpt_every == 0
                and state["mb_in_epoch"] < micro_per_epoch
            ):
                last_ckpt = save_checkpoint(train_cell, args, state, run_cfg, written, writer=lead)
            # --distributed: stop at a window boundary (accumulators empty, identical on all ranks),
            # the same micro-batch on every rank since all run the same count.
            if stop["signal"] or (
                args.stop_after and run_micro >= args.stop_after and not (args.distributed and int(train_cell.pending))
            ):
                stopped = stop["signal"] or f"--stop-after {args.stop_after}"
                break
        pbar.close()
        correct_sum += ep_correct
        seen_sum += ep_seen
        if stopped is None:
            if state["mb_in_epoch"] != micro_per_epoch:
                raise RuntimeError(
                    f"epoch {ep + 1} delivered {state['mb_in_epoch']} of {micro_per_epoch} micro-batches"
                )
            if int(train_cell.pending):
                k = int(train_cell.pending)
                train_cell.flush()  # partial window: averaged over the k micro-batches it holds
                state["updates"] += 1
                log(f"[train] end of epoch {ep + 1}: flushed a partial window of {k} micro-batch(es)")
            state["epoch"] += 1
            state["mb_in_epoch"] = 0
        last_ckpt = save_checkpoint(train_cell, args, state, run_cfg, written, writer=lead)
        if ep_seen:
            log(
                f"[epoch {ep + 1}] loss {ep_loss / ep_seen:.4f} train-acc {ep_correct / ep_seen:.4f} "
                f"{ep_seen / (time.perf_counter() - t_ep):.1f} img/s, {state['updates']} updates -> {last_ckpt}"
            )
    train_time = time.perf_counter() - t_train
    if stopped is None and last_ckpt is None:  # resumed a finished run: nothing to train
        last_ckpt = resumed_from
    if stopped:
        log(
            f"[train] stopped ({stopped}) at epoch {state['epoch'] + 1}, micro-batch {state['mb_in_epoch']}, "
            f"{int(train_cell.pending)} pending; resume with --resume {last_ckpt}"
        )

    global_step = int(optimizer.global_step.asnumpy().reshape(-1)[0])
    if global_step != state["updates"] and not args.amp:
        raise RuntimeError(
            f"optimizer.global_step is {global_step} after {state['updates']} updates: the "
            f"learning-rate schedule would be stepped wrongly"
        )
    summary = {
        "event": "summary",
        "model": "resnet50",
        "stem": args.stem,
        "params": n_params,
        "data": data["source"].split(":")[0],
        "mode": args.mode,
        "device": args.device,
        "cpu_isa_fix": isa,
        "amp": args.amp,
        "train_images": n_train,
        "epochs": args.epochs,
        "micro_batch": B,
        "accum_steps": K,
        "effective_batch": eff,
        "world_size": world,
        "peak_lr": peak,
        "warmup_updates": warmup,
        "total_updates": total_updates,
        "updates": state["updates"],
        "optimizer_global_step": global_step,
        "skipped_updates": (
            int(np.asarray(train_cell.skipped_updates.asnumpy()).reshape(-1)[0])
            if hasattr(train_cell, "skipped_updates")
            else None
        ),
        "micro_batches": state["micro_total"],
        "micro_batches_this_run": run_micro,
        "images_this_run": run_images * world,
        "lr_last_update": lr_at(max(0, global_step - 1), peak, warmup, total_updates, args.min_lr),
        "train_loss_last": loss_hist[-1] if loss_hist else None,
        "train_loss_mean_last_epoch": None,
        "train_accuracy_this_run": (correct_sum / seen_sum) if seen_sum else None,
        "first_step_s": round(t_first, 2) if t_first is not None else None,
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(run_images * world / train_time, 2) if run_images else None,
        "train_images_per_s_after_first_step": (
            round((run_images - B) * world / (train_time - t_first), 2) if run_micro > 1 else None
        ),
        "checkpoint": last_ckpt,
        "resumed_from": resumed_from,
        "stopped_early": stopped,
        "test_accuracy": None,
        "test_loss": None,
        "test_images": 0,
        "eval_time_s": None,
    }
    tail = loss_hist[-min(len(loss_hist), micro_per_epoch) :]
    summary["train_loss_mean_last_epoch"] = float(np.mean(tail)) if tail else None
    if args.distributed:
        # Evidence that the replicas agree (the same figure must appear in every worker's log).
        wsum = sum(float(np.abs(p.asnumpy()).astype(np.float64).sum()) for p in net.trainable_params())
        log(
            f"[dist] rank {rank}: {state['updates']} updates, {state['micro_total']} micro-batches, "
            f"optimizer global_step {global_step}, sum|w| = {wsum:.10e}"
        )
        if not lead:
            return 0 if stopped is None or stopped.startswith("--stop-after") else 130
    if not args.no_eval and stopped is None:
        log(
            f"[eval] evaluating {last_ckpt} on {len(data['test'][1]):,} test images, batch {args.eval_batch_size}, "
            + ("BatchNorm as is (--no-fold-bn)" if args.no_fold_bn else "BatchNorm folded into the convolutions")
        )
        summary.update(evaluate_checkpoint(last_ckpt, args, data["test"]))
        log(f"[eval] test accuracy {summary['test_accuracy']:.4f}, loss {summary['test_loss']:.4f}")
    summary["wall_time_s"] = round(time.perf_counter() - _T0, 2)
    emit_summary(summary, args.summary_json)
    return 0 if stopped is None or stopped.startswith("--stop-after") else 130


if __name__ == "__main__":
    sys.exit(main())
