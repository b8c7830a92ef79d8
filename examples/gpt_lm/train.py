#!/usr/bin/env python
"""Train a small byte-level GPT on real text with token-exact gradient accumulation
(mindspore_accum.GradAccumCell + FusedAdamW, loss returned as (loss_sum, num_items)).

    python -m examples.gpt_lm.train --layers 4 --d-model 256 --heads 4 --seq-len 128 \
        --batch-size 8 --accum-steps 4 --lr 3e-3 --updates 200

Data: by default the Python standard library's own .py files (no download), every 20th file
(sorted) held out for evaluation; --text-files / --eval-text-files take globs instead. Documents
are cut into chunks of at most --seq-len + 1 bytes (the tail of each file is shorter), padded in
the batch; the padding is excluded from the loss and from the count the update divides by, so
the update of a window is the gradient of the window's total loss / its number of real tokens,
whatever the micro-batch split. The learning rate warms up linearly over --warmup updates, then
follows a cosine to --min-lr-frac x peak, stepped once per update. The last line of stdout is
a JSON summary.
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
from examples.common import emit_summary, log, make_lr_schedule  # noqa: E402,F401  (log: also the PyTorch twin's)
from examples.gpt_lm import data as ld  # noqa: E402  (NumPy only)

CKPT_PREFIX = "gpt_lm"
LN2 = math.log(2.0)


# ============================================================================ arguments


def parse_args(argv=None, description=None, extra=None):
    """The command line. ``extra(parser)`` may add options (the PyTorch twin adds its own and
    shares all of these, defaults included)."""
    p = argparse.ArgumentParser(
        description=description or __doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--text-files",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="training text (globs, ** recursive); default: the Python standard library's .py files",
    )
    g.add_argument(
        "--eval-text-files",
        nargs="+",
        default=None,
        metavar="GLOB",
        help="held-out text; default: every 20th file of the training set, removed from it",
    )
    g.add_argument(
        "--eval-batches",
        type=int,
        default=16,
        help="held-out batches of --batch-size chunks per evaluation (0: all held-out chunks)",
    )

    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--d-model", type=int, default=256)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--max-positions", type=int, default=512, help="rows of the position embedding")
    g.add_argument("--seq-len", type=int, default=128, help="context length (<= --max-positions)")
    g.add_argument(
        "--amp",
        action="store_true",
        help="half-precision matmuls (float32 master weights, LayerNorm/softmax/loss in float32) "
        "with a dynamic loss scale",
    )
    g.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default="float16")
    g.add_argument("--init-weights", default=None, metavar="NPZ", help="initial weights written by --save-init")
    g.add_argument(
        "--save-init",
        default=None,
        metavar="NPZ",
        help="write the initial weights (GPT-2 init from --seed) to NPZ and exit",
    )

    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=8, help="micro-batch (sequences)")
    g.add_argument("--accum-steps", type=int, default=4, help="micro-batches per update")
    g.add_argument("--updates", type=int, default=200)
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--warmup", type=int, default=None, help="linear warm-up updates (default: updates // 10)")
    g.add_argument("--min-lr-frac", type=float, default=0.1, help="the cosine ends at this fraction of --lr")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=0.1,
        help="AdamW decoupled decay on matrices and embeddings (not biases/LayerNorm)",
    )
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.95)
    g.add_argument("--eps", type=float, default=1e-8)
    g.add_argument("--clip-grad-norm", type=float, default=1.0, help="global norm of the window's gradient (0: off)")
    g.add_argument("--seed", type=int, default=1, help="initial weights and data order")
    g.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    g.add_argument("--device", choices=["CPU", "GPU", "Ascend"], default="CPU")
    g.add_argument("--no-cpu-isa-fix", action="store_true", help="do not set ONEDNN_MAX_CPU_ISA=AVX2")

    g = p.add_argument_group("evaluation, checkpoints, output")
    g.add_argument("--eval-every", type=int, default=50, help="evaluate every U updates (and after the last)")
    g.add_argument("--ckpt-dir", default="checkpoints_gpt")
    g.add_argument("--keep-ckpt", type=int, default=2)
    g.add_argument(
        "--resume",
        default="none",
        metavar="auto|PATH|none",
        help="auto: the newest checkpoint in --ckpt-dir if there is one (else start afresh)",
    )
    g.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="M",
        help="stop after M micro-batches in this run with a resumable checkpoint (SIGINT/SIGTERM too)",
    )
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--summary-json", default=None, metavar="PATH")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    for name in (
        "layers",
        "d_model",
        "heads",
        "max_positions",
        "seq_len",
        "batch_size",
        "accum_steps",
        "updates",
        "eval_every",
        "keep_ckpt",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.eval_batches < 0:
        p.error("--eval-batches must be >= 0")
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after must be >= 1")
    if args.d_model % args.heads:
        p.error(f"--d-model {args.d_model} must be divisible by --heads {args.heads}")
    if args.warmup is None:
        args.warmup = max(1, args.updates // 10)
    return args


def check_amp_dtype(args):
    if args.amp and args.amp_dtype == "bfloat16" and args.device == "CPU":
        raise ld.DataError(
            "--amp-dtype bfloat16 does not run on MindSpore's CPU backend (2.10: MatMul, BatchMatMul "
            "and GeLU have no bfloat16 CPU kernel, 'Select CPU operator[MatMul] fail! Unsupported "
            "data type!'); use --amp-dtype float16 or a GPU/Ascend --device"
        )


def check_seq_len(args):
    if args.seq_len > args.max_positions:
        raise ld.DataError(
            f"--seq-len {args.seq_len} is longer than the model's {args.max_positions} positions "
            f"(--max-positions): the position embedding has no row for position {args.max_positions}"
        )


# ============================================================================ CPU speed fix


def apply_cpu_isa_fix(args):
    """ONEDNN_MAX_CPU_ISA=AVX2 before MindSpore is imported (see README: "the ISA trap")."""
    return common.apply_cpu_isa_fix(args)


# ============================================================================ data


def load_data(args):
    """Train and held-out corpora. NumPy only: errors surface before MindSpore starts."""
    train_files, eval_files, desc = ld.resolve_files(args.text_files, args.eval_text_files)
    train = ld.Corpus(train_files, args.seq_len, "training text")
    held = ld.Corpus(eval_files, args.seq_len, "held-out text")
    stream = ld.TrainStream(train, args.batch_size, args.seed)
    log(f"[data] {desc}")
    log(
        f"[data] train: {train.num_bytes:,} bytes in {len(train_files)} files -> {len(train):,} chunks of <= "
        f"{args.seq_len + 1} bytes ({stream.per_epoch:,} micro-batches per epoch); held-out: {held.num_bytes:,} "
        f"bytes in {len(eval_files)} files -> {len(held):,} chunks"
    )
    return {"train": train, "held": held, "stream": stream, "desc": desc}


# ============================================================================ schedule, optimizer, cell


def param_groups(net, weight_decay):
    """Decay on matrices and embeddings (ndim >= 2), none on biases and LayerNorm (nanoGPT's split)."""
    params = net.trainable_params()
    decay = [p for p in params if len(p.shape) >= 2]
    no_decay = [p for p in params if len(p.shape) < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initial_loss_scale(args):
    """2^16 / (tokens per micro-batch), as a power of two >= 1. The loss is a SUM over up to
    batch x seq-len tokens, so its float16 gradients are that many times larger than those of a
    mean loss: the usual 2^16 overflows every window (checked: 3 of 3 windows skipped at 2 x 32
    tokens), and the dynamic scale would need ~log2(tokens) skipped windows to come down."""
    return float(2 ** max(0, 16 - math.ceil(math.log2(args.batch_size * args.seq_len))))


def build_train_cell(loss_cell, groups, schedule, args):
    """THE place where mindspore_accum is used: FusedAdamW (torch AdamW semantics) + GradAccumCell
    on a loss cell returning (loss_sum, num_items)."""
    from mindspore import nn

    import mindspore_accum

    optimizer = mindspore_accum.FusedAdamW(
        groups, learning_rate=schedule, beta1=args.beta1, beta2=args.beta2, eps=args.eps, bias_correction=True
    )
    loss_scale = None
    if args.amp:
        loss_scale = nn.DynamicLossScaleUpdateCell(
            loss_scale_value=initial_loss_scale(args), scale_factor=2, scale_window=1000
        )
    cell = mindspore_accum.GradAccumCell(
        loss_cell, optimizer, args.accum_steps, clip_global_norm=args.clip_grad_norm or None, loss_scale=loss_scale
    )
    return cell, optimizer


# ============================================================================ checkpoints

RUN_KEYS = (
    "layers",
    "d_model",
    "heads",
    "max_positions",
    "seq_len",
    "batch_size",
    "accum_steps",
    "updates",
    "lr",
    "warmup",
    "min_lr_frac",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "clip_grad_norm",
    "seed",
    "amp",
    "amp_dtype",
    "data",
)


def save_ckpt(train_cell, args, state, run_cfg, written):
    from mindspore_accum import save_checkpoint_atomic

    path = os.path.join(args.ckpt_dir, common.ckpt_name(CKPT_PREFIX, state["updates"], state["micro_total"]))
    extra = {
        "run.micro_total": int(state["micro_total"]),
        "run.updates": int(state["updates"]),
        "run.window_loss_sum": float(state["window_loss_sum"]),
        "run.window_tokens": int(state["window_tokens"]),
        "run.config": json.dumps(run_cfg, sort_keys=True),
    }
    path = save_checkpoint_atomic(train_cell, path, append_dict=extra)
    common.rotate_checkpoints(written, path, args.keep_ckpt)
    return path


def load_resume(train_cell, path, run_cfg):
    from mindspore_accum import load_checkpoint_verified

    return common.load_resume(
        train_cell,
        path,
        run_cfg,
        RUN_KEYS,
        load=load_checkpoint_verified,
        error=ld.DataError,
        floats=("window_loss_sum",),
    )


# ============================================================================ evaluation


def evaluate(loss_cell, held, args):
    """Held-out cross entropy per real byte (nats) and bits per byte, over --eval-batches batches."""
    from mindspore import Tensor

    loss_cell.set_train(False)
    total, items = 0.0, 0
    for x, y in ld.eval_batches(held, args.batch_size, args.eval_batches):
        if len(x) < args.batch_size:  # one shape for GRAPH mode: pad the last batch with empty rows
            x = np.concatenate([x, np.full((args.batch_size - len(x), x.shape[1]), ld.PAD, np.int32)])
            y = np.concatenate([y, np.full((args.batch_size - len(y), y.shape[1]), ld.PAD, np.int32)])
        s, n = loss_cell(Tensor(x), Tensor(y))
        total += float(s.asnumpy())
        items += int(n.asnumpy())
    loss_cell.set_train(True)
    loss = total / max(items, 1)
    return {"eval_loss": loss, "eval_bits_per_byte": loss / LN2, "eval_tokens": items}


# ============================================================================ main


def main(argv=None):
    args = parse_args(argv)
    try:
        check_seq_len(args)
        check_amp_dtype(args)
        if args.save_init:
            arrays = ld.gpt2_init(args.layers, args.d_model, args.max_positions, args.seed)
            ld.save_npz(args.save_init, arrays)
            log(
                f"[init] wrote the GPT-2 initial weights for --seed {args.seed} "
                f"({sum(a.size for a in arrays.values()):,} values) to {args.save_init}"
            )
            return 0
        isa = apply_cpu_isa_fix(args)
        data = load_data(args)  # before MindSpore: data errors are reported fast
        init = None
        if args.init_weights:
            init = ld.load_npz(args.init_weights, ld.gpt_param_shapes(args.layers, args.d_model, args.max_positions))
        return train(args, data, isa, init)
    except ld.DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


def train(args, data, isa, init):
    import mindspore as ms
    from mindspore import Tensor
    from tqdm import tqdm

    from examples.gpt_lm.model import GPT, LMLoss

    ms.set_seed(args.seed)
    ms.set_context(mode=ms.GRAPH_MODE if args.mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(args.device)
    cdt = {"float16": ms.float16, "bfloat16": ms.bfloat16}[args.amp_dtype] if args.amp else ms.float32
    net = GPT(args.layers, args.d_model, args.heads, args.max_positions, compute_dtype=cdt, seed=args.seed)
    if init is not None:
        net.load_arrays(init)
    n_params = ld.count_params(args.layers, args.d_model, args.max_positions)
    loss_cell = LMLoss(net)
    B, K, U = args.batch_size, args.accum_steps, args.updates
    min_lr = args.lr * args.min_lr_frac
    train_cell, optimizer = build_train_cell(
        loss_cell, param_groups(net, args.weight_decay), make_lr_schedule(args.lr, args.warmup, U, min_lr), args
    )
    train_cell.set_train(True)
    log(
        f"[model] GPT: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, {args.max_positions} "
        f"positions, vocabulary 256 bytes + padding, tied head: {n_params:,} parameters"
        + (f"; initial weights from {args.init_weights}" if args.init_weights else f"; GPT-2 init, seed {args.seed}")
    )
    log(
        f"[train] micro-batch {B} x {K} accumulation, {U} updates of <= {B * K * args.seq_len:,} tokens; "
        f"AdamW lr {args.lr:g} (warm-up {args.warmup}, cosine to {min_lr:g}), betas ({args.beta1}, {args.beta2}), "
        f"eps {args.eps:g}, weight decay {args.weight_decay:g}, clip {args.clip_grad_norm or 'off'}, mode {args.mode}, "
        f"compute {'float32' if not args.amp else args.amp_dtype}"
    )

    run_cfg = {k: getattr(args, k) for k in RUN_KEYS if k != "data"}
    run_cfg["data"] = data["desc"]
    state = {"micro_total": 0, "updates": 0, "window_loss_sum": 0.0, "window_tokens": 0}
    resumed_from = None
    if args.resume not in ("none", "", None):
        path = common.latest_checkpoint(args.ckpt_dir, CKPT_PREFIX) if args.resume == "auto" else args.resume
        if path is None:
            log(f"[resume] auto: no {CKPT_PREFIX}-*.ckpt in {args.ckpt_dir}: starting afresh")
        else:
            path = os.path.abspath(path)
            state.update(load_resume(train_cell, path, run_cfg))
            resumed_from = path
            if int(train_cell.pending) != state["micro_total"] % K:
                raise RuntimeError(
                    f"{path}: the cell holds {train_cell.pending} pending micro-batches, "
                    f"the loop state says {state['micro_total'] % K}"
                )
            log(
                f"[resume] {path}: {state['updates']} updates done, micro-batch {state['micro_total']}, "
                f"{state['micro_total'] % K} micro-batch(es) pending in the window"
            )

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stream, held = data["stream"], data["held"]
    total_micro = U * K
    written, last_ckpt = [], resumed_from
    first_losses, update_losses, evals = [], [], []
    since_eval_sum, since_eval_tok = 0.0, 0
    run_micro, run_tokens, run_positions = 0, 0, 0
    t_train = time.perf_counter()
    t_first = None
    stopped = None
    pbar = tqdm(
        total=total_micro,
        initial=state["micro_total"],
        unit="mb",
        desc="train",
        file=sys.stderr,
        disable=args.no_progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    while state["micro_total"] < total_micro:
        x, y = stream.batch(state["micro_total"])
        tokens = int((y != ld.PAD).sum())
        loss = float(train_cell(Tensor(x), Tensor(y)).asnumpy())
        if t_first is None:
            t_first = time.perf_counter() - t_train
        state["micro_total"] += 1
        run_micro += 1
        run_tokens += tokens
        run_positions += y.size
        if len(first_losses) < 10:
            first_losses.append(loss)
        if not math.isfinite(loss) and not args.amp:
            raise RuntimeError(f"loss is {loss} at micro-batch {state['micro_total']}")
        state["window_loss_sum"] += loss * tokens
        state["window_tokens"] += tokens
        if state["micro_total"] % K == 0:
            state["updates"] += 1
            wl = state["window_loss_sum"] / max(1, state["window_tokens"])
            update_losses.append(wl)
            since_eval_sum += state["window_loss_sum"]
            since_eval_tok += state["window_tokens"]
            state["window_loss_sum"], state["window_tokens"] = 0.0, 0
        if int(train_cell.pending) != state["micro_total"] % K:
            raise RuntimeError(
                f"train cell reports {train_cell.pending} pending micro-batches, expected {state['micro_total'] % K}"
            )
        pbar.update(1)
        elapsed = time.perf_counter() - t_train
        pbar.set_postfix(
            loss=f"{loss:.3f}", upd=state["updates"], tok_s=f"{run_tokens / max(elapsed, 1e-9):.0f}", refresh=False
        )
        at_boundary = state["micro_total"] % K == 0
        if at_boundary and (state["updates"] % args.eval_every == 0 or state["updates"] == U):
            ev = evaluate(loss_cell, held, args)
            tl = since_eval_sum / max(1, since_eval_tok)
            since_eval_sum, since_eval_tok = 0.0, 0
            evals.append({"update": state["updates"], "train_loss": tl, **ev})
            pbar.clear()
            log(
                f"[eval] update {state['updates']}/{U}: train loss {tl:.4f}, eval loss {ev['eval_loss']:.4f}, "
                f"eval bits/byte {ev['eval_bits_per_byte']:.4f} ({ev['eval_tokens']:,} held-out bytes)"
            )
            last_ckpt = save_ckpt(train_cell, args, state, run_cfg, written)
        if stop["signal"] or (args.stop_after and run_micro >= args.stop_after):
            if state["micro_total"] < total_micro:
                stopped = stop["signal"] or f"--stop-after {args.stop_after}"
                last_ckpt = save_ckpt(train_cell, args, state, run_cfg, written)
                break
    pbar.close()
    train_time = time.perf_counter() - t_train
    if stopped:
        log(
            f"[train] stopped ({stopped}) at micro-batch {state['micro_total']}, {state['updates']} updates, "
            f"{int(train_cell.pending)} pending; continue with --resume auto (or --resume {last_ckpt})"
        )
    final = evals[-1] if evals and evals[-1]["update"] == state["updates"] and not stopped else None
    global_step = int(np.asarray(optimizer.global_step.asnumpy()).reshape(-1)[0])
    summary = {
        "event": "summary",
        "model": "gpt",
        "framework": f"mindspore {ms.__version__}",
        "params": n_params,
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "max_positions": args.max_positions,
        "seq_len": args.seq_len,
        "tied_head": True,
        "mode": args.mode,
        "device": args.device,
        "cpu_isa_fix": isa,
        "amp": args.amp,
        "compute_dtype": args.amp_dtype if args.amp else "float32",
        "data": data["desc"],
        "loss_scale_initial": initial_loss_scale(args) if args.amp else None,
        "loss_scale_last": (
            float(np.asarray(train_cell.loss_scale.asnumpy()).reshape(-1)[0])
            if args.amp and hasattr(train_cell, "loss_scale")
            else None
        ),
        "train_bytes": data["train"].num_bytes,
        "eval_bytes": data["held"].num_bytes,
        "micro_batch": B,
        "accum_steps": K,
        "peak_lr": args.lr,
        "warmup_updates": args.warmup,
        "min_lr": min_lr,
        "total_updates": U,
        "updates": state["updates"],
        "optimizer_global_step": global_step,
        "skipped_updates": int(np.asarray(train_cell.skipped_updates.asnumpy()).reshape(-1)[0]),
        "micro_batches": state["micro_total"],
        "micro_batches_this_run": run_micro,
        "train_tokens_this_run": run_tokens,
        "padding_fraction": 1 - run_tokens / max(1, run_positions),
        "first_step_s": round(t_first, 3) if t_first is not None else None,
        "train_time_s": round(train_time, 2),
        "tokens_per_s": round(run_tokens / train_time, 1) if run_micro else None,
        "tokens_per_s_after_first_step": None,
        "first_losses": first_losses,
        "update_losses": update_losses,
        "evals": evals,
        "eval_loss": final["eval_loss"] if final else None,
        "eval_bits_per_byte": final["eval_bits_per_byte"] if final else None,
        "eval_tokens": final["eval_tokens"] if final else None,
        "checkpoint": last_ckpt,
        "resumed_from": resumed_from,
        "stopped_early": stopped,
    }
    if run_micro > 1 and t_first is not None:
        first_tok = int((stream.batch(state["micro_total"] - run_micro)[1] != ld.PAD).sum())
        summary["tokens_per_s_after_first_step"] = round((run_tokens - first_tok) / (train_time - t_first), 1)
    summary["wall_time_s"] = round(time.perf_counter() - _T0, 2)
    emit_summary(summary, args.summary_json)
    return 0 if stopped is None or stopped.startswith("--stop-after") else 130


if __name__ == "__main__":
    sys.exit(main())
