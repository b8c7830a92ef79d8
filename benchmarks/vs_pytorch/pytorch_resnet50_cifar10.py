#!/usr/bin/env python
"""The competitor: examples/resnet50_cifar10/train.py's job done in PyTorch, for timing beside it.

Same work, step for step: the same ResNet50 (CIFAR stem, bottlenecks [3, 4, 6, 3], He-normal
fan-out init, zero-initialised last BatchNorm scale per block), the same data files, the same
per-epoch shuffle and the same crops/flips (both read examples/resnet50_cifar10/data.py's pure-NumPy
reader and sample source), micro-batch B x K accumulation done the way PyTorch users do it
(``(loss / K).backward()``, one ``SGD.step()`` per window), the same warm-up + cosine schedule
stepped per update (examples/resnet50_cifar10/train.py's ``lr_at``), momentum 0.9, weight decay
on conv/dense weights only, a checkpoint written at each epoch end, and the evaluation of that
checkpoint file on the test split. The last line of stdout is a JSON summary with the same keys
as the example's (wall_time_s from process start, train_time_s, eval_time_s, test_accuracy ...).

Needs PyTorch (CPU build), not a dependency of the project: ``pip install torch==2.13.0``.
``benchmarks/vs_pytorch/bench_vs_pytorch.py`` runs this and the example side by side.
"""

import argparse
import math
import os
import sys
import time

_T0 = time.perf_counter()

import numpy as np  # noqa: E402

from examples.resnet50_cifar10 import data as cd  # noqa: E402  (NumPy only)
from examples.resnet50_cifar10.train import emit_summary, lr_at  # noqa: E402  (no MindSpore at import)

PARAMS_CIFAR = 23_520_842  # examples/resnet50_cifar10/model.py's count for 10 classes (= torchvision's)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch")
    p.add_argument("--accum-steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=None, help="peak lr for the effective batch (default 0.1*eff/256)")
    p.add_argument("--warmup-frac", type=float, default=0.125)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    p.add_argument(
        "--eval-batch-size",
        type=int,
        default=16,
        help="PyTorch's fastest here: 20.4 img/s at 16 vs 18.4 at 100 (2-core CPU)",
    )
    p.add_argument("--ckpt-dir", default="checkpoints_torch")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--summary-json", default=None)
    return p.parse_args(argv)


def log(msg):
    print(msg, flush=True)


def build_resnet50(torch, nn, num_classes=10):
    """torchvision's resnet50(zero_init_residual=True) with the CIFAR stem (3x3/1 conv, no max-pool)."""

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            blocks, cin = [], 64
            for i, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
                for b in range(n):
                    blocks.append(Bottleneck(cin, width, 2 if (i > 0 and b == 0) else 1))
                    cin = width * 4
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(cin, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

        def forward(self, x):
            x = self.layers(self.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(x.mean((2, 3)), 1))

    return ResNet50()


def batches(source, batch_size, count):
    """Consecutive micro-batches of the sample source, the last incomplete one dropped."""
    for b in range(count // batch_size):
        items = [source[b * batch_size + i] for i in range(batch_size)]
        yield np.stack([x for x, _ in items]), np.array([y for _, y in items], np.int64)


def main(argv=None):
    args = parse_args(argv)
    import torch
    from torch import nn
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr, ytr, _ = cd.load_split(args.data_dir, "train", args.limit_train)
    xte, yte, _ = cd.load_split(args.data_dir, "test", args.limit_test)
    net = build_resnet50(torch, nn)
    n_params = sum(p.numel() for p in net.parameters())
    if n_params != PARAMS_CIFAR:
        raise RuntimeError(f"ResNet50 has {n_params:,} parameters, expected {PARAMS_CIFAR:,}")
    B, K = args.batch_size, args.accum_steps
    micro_per_epoch = len(ytr) // B
    updates_per_epoch = math.ceil(micro_per_epoch / K)
    total = updates_per_epoch * args.epochs
    peak = args.lr if args.lr is not None else 0.1 * B * K / 256
    warmup = max(1, round(args.warmup_frac * total)) if args.warmup_frac > 0 else 0
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak,
        momentum=args.momentum,
    )
    loss_fn = nn.CrossEntropyLoss()
    log(
        f"[torch] PyTorch {torch.__version__}, {torch.get_num_threads()} threads; ResNet50 {n_params:,} params; "
        f"{len(ytr):,} train / {len(yte):,} test images; micro-batch {B} x {K}, {total} updates, peak lr {peak:g}"
    )

    os.makedirs(args.ckpt_dir, exist_ok=True)
    updates, micro_total, seen, correct_sum = 0, 0, 0, 0
    t_train = time.perf_counter()
    t_first, ckpt, last_loss = None, None, None
    net.train()
    for ep in range(args.epochs):
        source = cd._Source(
            xtr,
            ytr,
            cd.epoch_order(len(ytr), args.seed, ep),
            0,
            micro_per_epoch * B,
            augment=True,
            seed=args.seed,
            epoch=ep,
        )
        pending, ep_loss, ep_seen, t_ep = 0, 0.0, 0, time.perf_counter()
        bar = tqdm(
            total=micro_per_epoch,
            desc=f"epoch {ep + 1}/{args.epochs}",
            unit="mb",
            file=sys.stderr,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for xb, yb in batches(source, B, micro_per_epoch * B):
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            logits = net(x)
            loss = loss_fn(logits, y)
            (loss / K).backward()
            pending += 1
            micro_total += 1
            if pending == K:
                for g in opt.param_groups:
                    g["lr"] = lr_at(updates, peak, warmup, total, args.min_lr)
                opt.step()
                opt.zero_grad(set_to_none=True)
                updates, pending = updates + 1, 0
            last_loss = float(loss)
            correct_sum += int((logits.argmax(1) == y).sum())
            seen += B
            ep_loss += last_loss * B
            ep_seen += B
            if t_first is None:
                t_first = time.perf_counter() - t_train
            bar.update(1)
            bar.set_postfix(
                loss=f"{ep_loss / ep_seen:.3f}",
                img_s=f"{ep_seen / (time.perf_counter() - t_ep):.1f}",
                upd=updates,
                refresh=False,
            )
        bar.close()
        if pending:  # a partial window: the mean over the micro-batches it holds
            for p in net.parameters():
                if p.grad is not None:
                    p.grad.mul_(K / pending)
            for g in opt.param_groups:
                g["lr"] = lr_at(updates, peak, warmup, total, args.min_lr)
            opt.step()
            opt.zero_grad(set_to_none=True)
            updates += 1
        ckpt = os.path.join(args.ckpt_dir, f"torch_resnet50-u{updates:06d}-mb{micro_total:07d}.pt")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "updates": updates}, ckpt)
        log(
            f"[epoch {ep + 1}] loss {ep_loss / ep_seen:.4f} {ep_seen / (time.perf_counter() - t_ep):.1f} img/s, "
            f"{updates} updates -> {ckpt}"
        )
    train_time = time.perf_counter() - t_train
    summary = {
        "event": "summary",
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "params": n_params,
        "train_images": len(ytr),
        "epochs": args.epochs,
        "micro_batch": B,
        "accum_steps": K,
        "effective_batch": B * K,
        "peak_lr": peak,
        "warmup_updates": warmup,
        "updates": updates,
        "micro_batches": micro_total,
        "train_loss_last": last_loss,
        "train_accuracy_this_run": correct_sum / max(1, seen),
        "first_step_s": round(t_first or 0.0, 2),
        "train_time_s": round(train_time, 2),
        "train_images_per_s": round(seen / train_time, 2),
        "train_images_per_s_after_first_step": (
            round((seen - B) / (train_time - t_first), 2) if micro_total > 1 else None
        ),
        "checkpoint": ckpt,
        "test_accuracy": None,
        "test_images": 0,
        "eval_time_s": None,
    }
    if not args.no_eval:
        t_eval = time.perf_counter()
        model = build_resnet50(torch, nn)
        model.load_state_dict(torch.load(ckpt)["model"])
        model.eval()
        correct, loss_sum = 0, 0.0
        with torch.inference_mode():
            for s in range(0, len(yte), args.eval_batch_size):
                xb = np.stack([cd.normalize_chw(img) for img in xte[s : s + args.eval_batch_size]])
                yb = torch.from_numpy(yte[s : s + args.eval_batch_size].astype(np.int64))
                logits = model(torch.from_numpy(xb))
                loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        summary.update(
            test_accuracy=correct / len(yte),
            test_loss=loss_sum / len(yte),
            test_images=len(yte),
            eval_time_s=round(time.perf_counter() - t_eval, 2),
        )
        log(f"[eval] test accuracy {summary['test_accuracy']:.4f} on {len(yte):,} images")
    summary["wall_time_s"] = round(time.perf_counter() - _T0, 2)
    emit_summary(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
