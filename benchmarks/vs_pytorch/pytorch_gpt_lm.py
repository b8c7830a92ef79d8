#!/usr/bin/env python
"""The PyTorch twin of examples/gpt_lm/train.py: the same byte-level GPT trained the same way.

Same command line (the example's own parser: same flags, same defaults; MindSpore-only flags
such as --mode are accepted and ignored), same data (examples/gpt_lm/data.py: same files, chunks,
padding and order), same model (same parameter names and (in, out) weight layout, initial
weights from --init-weights, an .npz written by ``python -m examples.gpt_lm.train --save-init``, or the same
NumPy GPT-2 init from --seed), same warm-up + cosine schedule (examples.gpt_lm.data.lr_at, per update),
same clipping of the window's gradient to --clip-grad-norm, and ``torch.optim.AdamW(fused=True)``
with the example's betas, eps and weight decay groups (= FusedAdamW(bias_correction=True)).

Accumulation is token-exact the way Hugging Face transformers does it since 2024: the number
of real (non-padding) target tokens of the whole window is counted first, and each micro-batch
calls ``(loss_sum / window_tokens).backward()``; one optimizer step per window.

The last line of stdout is a JSON summary with the example's keys (eval_bits_per_byte,
tokens_per_s, updates, wall_time_s, params, first_losses, update_losses, evals, ...).
No checkpoints are written; --stop-after M ends the run at the first window end at or after M
micro-batches (to compare the first losses of a long recipe quickly). Needs PyTorch
(``pip install torch==2.13.0``), not a dependency of the project;
benchmarks/vs_pytorch/bench_gpt_vs_pytorch.py runs it beside the example.
"""

import math
import sys
import time

_T0 = time.perf_counter()

import numpy as np  # noqa: E402

from examples.common import emit_summary  # noqa: E402
from examples.gpt_lm import data as ld  # noqa: E402  (NumPy only)
from examples.gpt_lm.train import check_seq_len, load_data, log, parse_args  # noqa: E402  (no MindSpore at import)

LN2 = math.log(2.0)


def build_gpt(torch, layers, d_model, heads, max_positions, arrays):
    """The example's GPT (examples/gpt_lm/model.py) in PyTorch, loaded from {name: array}."""
    nn, F = torch.nn, torch.nn.functional

    def param(shape):
        return nn.Parameter(torch.zeros(shape, dtype=torch.float32))

    class Linear(nn.Module):
        def __init__(self, d_in, d_out):
            super().__init__()
            self.weight, self.bias = param((d_in, d_out)), param((d_out,))

        def forward(self, x):
            return x @ self.weight + self.bias

    class LayerNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight, self.bias = param((d,)), param((d,))

        def forward(self, x):
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-5)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = Linear(d_model, 3 * d_model), Linear(d_model, d_model)
            self.h, self.hd = heads, d_model // heads
            self.scale = 1.0 / math.sqrt(self.hd)
            self.register_buffer(
                "mask", torch.triu(torch.full((max_positions, max_positions), -1e9), 1), persistent=False
            )

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.c_attn(x).view(b, t, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)
            att = torch.softmax((q @ k.transpose(-1, -2)) * self.scale + self.mask[:t, :t], -1)
            return self.c_proj((att @ v).transpose(1, 2).reshape(b, t, d))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = Linear(d_model, 4 * d_model), Linear(4 * d_model, d_model)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = LayerNorm(d_model), Attention(), LayerNorm(d_model), MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = param((ld.EMBED_ROWS, d_model)), param((max_positions, d_model))
            self.h = nn.ModuleList([Block() for _ in range(layers)])
            self.ln_f = LayerNorm(d_model)

        def forward(self, tokens):
            t = tokens.shape[1]
            x = self.wte[tokens] + self.wpe[:t]
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte[: ld.VOCAB].t()

    net = GPT()
    named = dict(net.named_parameters())
    if set(named) != set(arrays):
        raise RuntimeError(f"parameter names differ: {sorted(set(named) ^ set(arrays))[:6]}")
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(np.asarray(arrays[name], np.float32)))
    return net


def lm_loss(torch, net, x, y):
    """(loss_sum, num_items): cross entropy summed over the targets that are not PAD, and their count."""
    logp = torch.log_softmax(net(x), -1)
    real = y != ld.PAD
    nll = -logp.gather(-1, torch.where(real, y, torch.zeros_like(y)).unsqueeze(-1)).squeeze(-1)
    return (nll * real).sum(), int(real.sum())


def main(argv=None):
    args = parse_args(
        argv,
        description=__doc__.split("\n\n")[0],
        extra=lambda p: p.add_argument(
            "--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)"
        ),
    )
    try:
        check_seq_len(args)
        data = load_data(args)
        shapes = ld.gpt_param_shapes(args.layers, args.d_model, args.max_positions)
        arrays = (
            ld.load_npz(args.init_weights, shapes)
            if args.init_weights
            else ld.gpt2_init(args.layers, args.d_model, args.max_positions, args.seed)
        )
    except ld.DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = build_gpt(torch, args.layers, args.d_model, args.heads, args.max_positions, arrays)
    n_params = sum(p.numel() for p in net.parameters())
    B, K, U = args.batch_size, args.accum_steps, args.updates
    min_lr = args.lr * args.min_lr_frac
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(args.beta1, args.beta2),
        eps=args.eps,
        fused=True,
    )
    log(
        f"[torch] PyTorch {torch.__version__}, {torch.get_num_threads()} threads; GPT {n_params:,} parameters"
        + (f" from {args.init_weights}" if args.init_weights else f", GPT-2 init seed {args.seed}")
        + f"; micro-batch {B} x {K}, {U} updates, AdamW(fused=True) lr {args.lr:g}"
    )

    def evaluate():
        net.eval()
        total, items = 0.0, 0
        with torch.no_grad():
            for x, y in ld.eval_batches(data["held"], B, args.eval_batches):
                s, n = lm_loss(torch, net, torch.from_numpy(x).long(), torch.from_numpy(y).long())
                total += float(s)
                items += n
        net.train()
        loss = total / max(items, 1)
        return {"eval_loss": loss, "eval_bits_per_byte": loss / LN2, "eval_tokens": items}

    stream = data["stream"]
    first_losses, update_losses, evals = [], [], []
    since_sum, since_tok, run_tokens, run_positions, micro = 0.0, 0, 0, 0, 0
    t_train = time.perf_counter()
    t_first = None
    bar = tqdm(
        total=U * K,
        unit="mb",
        desc="train",
        file=sys.stderr,
        disable=args.no_progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    net.train()
    for u in range(U):
        window = [stream.batch(u * K + j) for j in range(K)]
        window_tokens = sum(int((y != ld.PAD).sum()) for _, y in window)
        w_sum = 0.0
        for x, y in window:
            s, n = lm_loss(torch, net, torch.from_numpy(x).long(), torch.from_numpy(y).long())
            (s / window_tokens).backward()
            loss = float(s.detach()) / n
            if t_first is None:
                t_first = time.perf_counter() - t_train
            if len(first_losses) < 10:
                first_losses.append(loss)
            w_sum += float(s.detach())
            run_tokens += n
            run_positions += y.size
            micro += 1
            bar.update(1)
        if args.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip_grad_norm)
        for g in opt.param_groups:
            g["lr"] = ld.lr_at(u, args.lr, args.warmup, U, min_lr)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_losses.append(w_sum / window_tokens)
        since_sum += w_sum
        since_tok += window_tokens
        bar.set_postfix(
            loss=f"{update_losses[-1]:.3f}",
            upd=u + 1,
            tok_s=f"{run_tokens / (time.perf_counter() - t_train):.0f}",
            refresh=False,
        )
        stopping = bool(args.stop_after and micro >= args.stop_after and u + 1 < U)
        if (u + 1) % args.eval_every == 0 or u + 1 == U:
            ev = evaluate()
            tl = since_sum / max(1, since_tok)
            since_sum, since_tok = 0.0, 0
            evals.append({"update": u + 1, "train_loss": tl, **ev})
            bar.clear()
            log(
                f"[eval] update {u + 1}/{U}: train loss {tl:.4f}, eval loss {ev['eval_loss']:.4f}, "
                f"eval bits/byte {ev['eval_bits_per_byte']:.4f} ({ev['eval_tokens']:,} held-out bytes)"
            )
        if stopping:  # --stop-after M: at the first window end at or after M micro-batches (no resume here)
            break
    bar.close()
    train_time = time.perf_counter() - t_train
    first_tok = int((stream.batch(0)[1] != ld.PAD).sum())
    final = (
        evals[-1]
        if evals and evals[-1]["update"] == len(update_losses)
        else {"eval_loss": None, "eval_bits_per_byte": None, "eval_tokens": None}
    )
    summary = {
        "event": "summary",
        "model": "gpt",
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "params": n_params,
        "layers": args.layers,
        "d_model": args.d_model,
        "heads": args.heads,
        "max_positions": args.max_positions,
        "seq_len": args.seq_len,
        "tied_head": True,
        "compute_dtype": "float32",
        "data": data["desc"],
        "micro_batch": B,
        "accum_steps": K,
        "peak_lr": args.lr,
        "warmup_updates": args.warmup,
        "min_lr": min_lr,
        "total_updates": U,
        "updates": len(update_losses),
        "micro_batches": micro,
        "stopped_early": f"--stop-after {args.stop_after}" if len(update_losses) < U else None,
        "train_tokens_this_run": run_tokens,
        "padding_fraction": 1 - run_tokens / max(1, run_positions),
        "first_step_s": round(t_first, 3),
        "train_time_s": round(train_time, 2),
        "tokens_per_s": round(run_tokens / train_time, 1),
        "tokens_per_s_after_first_step": (
            round((run_tokens - first_tok) / (train_time - t_first), 1) if micro > 1 else None
        ),
        "first_losses": first_losses,
        "update_losses": update_losses,
        "evals": evals,
        "eval_loss": final["eval_loss"],
        "eval_bits_per_byte": final["eval_bits_per_byte"],
        "eval_tokens": final["eval_tokens"],
        "init_weights": args.init_weights,
    }
    summary["wall_time_s"] = round(time.perf_counter() - _T0, 2)
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
