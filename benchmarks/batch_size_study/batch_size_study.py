#!/usr/bin/env python
"""The batch-size study: measured answers to the source articles' questions (issue 6).

Trains the example's ResNet50 (CIFAR stem) on real CIFAR-10 in several configurations, each
in its own process (so peak memory is per configuration), and writes
``docs/batch_size_study.md`` plus PNG plots (``docs/batch_size_study_*.png``):

* training panel, the same training samples (same order, same augmentation) for each of
    - plain batch 32            (nn.TrainOneStepCell + nn.Momentum)
    - plain batch 128           (nn.TrainOneStepCell + nn.Momentum)
    - accumulation 32 x 4, ours (mindspore_accum.GradAccumCell + FusedMomentum)
    - accumulation 32 x 4, MindSpore's own (mindspore.boost.GradientAccumulation + nn.Momentum,
      in a TrainOneStepCell-like cell)
  measuring training loss per micro-batch and per update, test accuracy at the end, images/s,
  time per update and peak resident memory (VmHWM);
* memory / throughput vs effective batch: more plain batches and accumulation windows
  (a few updates each; the training-panel runs are reused where they match);
* equivalence panel: accumulation 32 x 4 vs plain 128 from the same initial weights on the
  same 128 samples per update (no augmentation, no shuffle), the parameter distance
  ||w_acc - w_plain|| / ||w_plain|| and max |w_acc - w_plain| after every update, for the
  BatchNorm ResNet50 and for a GroupNorm variant (per-sample normalisation: no batch statistics).

    python -m benchmarks.batch_size_study.batch_size_study --quick      # < 10 min on 2 quiet cores
    python -m benchmarks.batch_size_study.batch_size_study              # the full study (~35 min on 2 cores)
    python -m benchmarks.batch_size_study.batch_size_study --report-only  # rewrite the report from cached results

Each configuration's result is cached as JSON in ``<out-dir>/batch_size_study_runs/<profile>/``;
a rerun skips configurations whose cached result matches the requested settings (``--force``
reruns them; ``--only NAME ...`` runs a subset). ``ONEDNN_MAX_CPU_ISA=AVX2`` is set before
MindSpore is imported (see docs/DESIGN.md, "CPU speed trap").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

from benchmarks.common.cached_runs import add_runner_arguments, load_results, run_configuration
from benchmarks.common.proc_memory import import_mindspore, peak_rss_mib, reset_peak_rss, rss_mib
from benchmarks.common.rounds import REPO as ROOT

MODULE = "benchmarks.batch_size_study.batch_size_study"
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-subset", "cifar-10-batches-bin"))
RESULT_VERSION = 3  # 3: zero-initialised last scale per block, ResNet50(norm=...)

# The two profiles. samples: training images per training-panel configuration; perf_updates:
# updates per memory/throughput-only run (the first one, which compiles, is not timed);
# dist_updates: updates compared in the equivalence panel; limit_test: test images evaluated.
PROFILES = {
    "quick": dict(
        samples=256, perf_updates=2, dist_updates=2, limit_test=200, perf_plain=(32, 64, 128), perf_accum=(2, 4)
    ),
    "full": dict(
        samples=2048,
        perf_updates=4,
        dist_updates=6,
        limit_test=2000,
        perf_plain=(32, 64, 128, 256),
        perf_accum=(2, 4, 8),
    ),
}


# ============================================================================ configurations


def plan(args) -> list:
    """The configurations of one study, in run order (each a JSON-able dict with a unique name)."""
    prof = PROFILES[args.profile]
    samples = args.samples or prof["samples"]
    micro = 32
    common = dict(
        mode=args.mode,
        seed=args.seed,
        base_lr=args.base_lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        data_dir=os.path.abspath(args.data_dir),
    )
    train = dict(
        common,
        kind="train",
        samples=samples,
        limit_test=args.limit_test or prof["limit_test"],
        augment=True,
        lr_schedule=args.lr_schedule,
        warmup_frac=args.warmup_frac,
    )
    configs = [
        dict(train, name="plain32", method="plain", micro_batch=32, accum_steps=1),
        dict(train, name="plain128", method="plain", micro_batch=128, accum_steps=1),
        dict(train, name="accum32x4_ours", method="ours", micro_batch=micro, accum_steps=4),
        dict(train, name="accum32x4_mindspore", method="mindspore", micro_batch=micro, accum_steps=4),
    ]
    have = {(c["method"], c["micro_batch"], c["accum_steps"]) for c in configs}
    perf_updates = args.perf_updates or prof["perf_updates"]
    perf = dict(common, kind="perf", limit_test=0, augment=True)
    for b in prof["perf_plain"]:
        if ("plain", b, 1) not in have:
            configs.append(
                dict(perf, name=f"plain{b}", method="plain", micro_batch=b, accum_steps=1, samples=b * perf_updates)
            )
    for k in prof["perf_accum"]:
        if ("ours", micro, k) not in have:
            configs.append(
                dict(
                    perf,
                    name=f"accum{micro}x{k}_ours",
                    method="ours",
                    micro_batch=micro,
                    accum_steps=k,
                    samples=micro * k * perf_updates,
                )
            )
    dist = dict(
        common,
        kind="distance",
        micro_batch=micro,
        accum_steps=4,
        updates=args.dist_updates or prof["dist_updates"],
        augment=False,
        lr=args.dist_lr,
    )
    configs.append(dict(dist, name="distance_batchnorm", norm="batch"))
    configs.append(dict(dist, name="distance_groupnorm", norm="group"))
    for c in configs:
        c["effective_batch"] = c["micro_batch"] * c["accum_steps"]
        c["lr"] = args.base_lr * c["effective_batch"] / 256.0 if "lr" not in c else c["lr"]
        c["version"] = RESULT_VERSION
    return configs


# ====================================================================== the worker (one process per configuration)


def _import_mindspore(mode: str):
    return import_mindspore(mode)


def build_resnet50(norm: str = "batch"):
    """The example's ResNet50 (CIFAR stem, zero-initialised last scale per block);
    ``norm="group"``: GroupNorm instead of BatchNorm (per-sample statistics)."""
    from examples.resnet50_cifar10 import model as rn

    return rn.ResNet50(num_classes=10, norm=norm)


class MindSporeAccumStep:
    """Factory for MindSpore's own accumulation: ``mindspore.boost.GradientAccumulation`` (HyperMap of
    AssignAdd(acc, grad / N); the optimizer on the accumulators every N-th call; zeroing), driven by a
    cell shaped like ``nn.TrainOneStepCell``. Built lazily because it subclasses ``nn.Cell``."""

    @staticmethod
    def create(loss_net, optimizer, steps):
        from mindspore import nn, ops
        from mindspore.boost import GradientAccumulation

        class _Step(nn.Cell):
            def __init__(self):
                super().__init__(auto_prefix=False)
                self.network = loss_net
                self.network.set_grad()
                self.weights = optimizer.parameters
                self.grad = ops.GradOperation(get_by_list=True)
                self.accumulation = GradientAccumulation(steps, optimizer)

            def construct(self, x, y):
                loss = self.network(x, y)
                grads = self.grad(self.network, self.weights)(x, y)
                return self.accumulation(loss, grads)

        return _Step()


def lr_per_update(config: dict) -> list:
    """The learning rate of each optimizer update: linear warm-up over ``warmup_frac`` of the updates,
    then a cosine to 0 (the example's schedule), or constant. A function of the fraction of the
    training samples seen, so every configuration follows the same curve in samples."""
    import math

    updates = config["samples"] // config["effective_batch"]
    peak = config["lr"]
    if config.get("lr_schedule", "constant") == "constant":
        return [peak] * updates
    warm = max(1, int(round(updates * config["warmup_frac"])))
    out = []
    for u in range(updates):
        if u < warm:
            out.append(peak * (u + 1) / warm)
        else:
            t = (u - warm) / max(1, updates - warm)
            out.append(0.5 * peak * (1.0 + math.cos(math.pi * t)))
    return out


def _make_step(method, loss_net, params, config):
    from mindspore import nn

    from mindspore_accum import FusedMomentum, GradAccumCell

    mom, wd = config["momentum"], config["weight_decay"]
    lr = config["lr"] if config["kind"] != "train" else lr_per_update(config)
    if method == "plain":
        return nn.TrainOneStepCell(loss_net, nn.Momentum(params, lr, mom, weight_decay=wd))
    if method == "ours":
        return GradAccumCell(loss_net, FusedMomentum(params, lr, mom, weight_decay=wd), config["accum_steps"])
    if method == "mindspore":
        return MindSporeAccumStep.create(loss_net, nn.Momentum(params, lr, mom, weight_decay=wd), config["accum_steps"])
    raise ValueError(method)


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, mininterval=1.0, **kw)


def worker_train(config: dict) -> dict:
    """A training-panel or perf run: train on ``samples`` images, time each update, then evaluate."""
    t_start = time.perf_counter()
    import numpy as np

    ms = _import_mindspore(config["mode"])
    from mindspore import nn

    from examples.resnet50_cifar10 import data as cd

    micro, k, samples = config["micro_batch"], config["accum_steps"], config["samples"]
    eff = micro * k
    if samples % eff:
        raise SystemExit(f"{config['name']}: samples ({samples}) must be a multiple of the effective batch ({eff})")
    images, labels, _ = cd.load_split(config["data_dir"], "train", limit=samples)
    if len(labels) < samples:
        raise SystemExit(
            f"{config['name']}: only {len(labels)} training images in {config['data_dir']}, {samples} requested"
        )
    order = cd.epoch_order(samples, config["seed"], 0)
    dataset = cd.make_dataset(
        images,
        labels,
        micro,
        order=order,
        augment=config["augment"],
        seed=config["seed"],
        drop_remainder=True,
        num_workers=1,
    )
    rss_after_import = rss_mib()

    ms.set_seed(config["seed"])
    net = build_resnet50("batch")
    loss_net = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = _make_step(config["method"], loss_net, net.trainable_params(), config)
    step.set_train()

    micro_losses, update_losses, update_times, rss_trace = [], [], [], []
    seen, window = 0, []
    peak_first, steady_ok = None, False
    n_micro = samples // micro
    bar = _tqdm(total=samples, desc=f"{config['name']:>20}", unit="img")
    t_window = time.perf_counter()
    for x, y in dataset.create_tuple_iterator(num_epochs=1):
        loss = float(step(x, y).asnumpy())  # asnumpy: the step has finished executing
        seen += micro
        micro_losses.append([seen, loss])
        window.append(loss)
        if len(window) == k:
            if config["method"] == "ours":  # the window's update ran inside the k-th call
                _ = net.trainable_params()[0].asnumpy()
            update_times.append(time.perf_counter() - t_window)
            if len(update_times) == 1:  # graphs compiled and run once: from here on, steady state
                peak_first = peak_rss_mib()
                steady_ok = reset_peak_rss()
            update_losses.append([seen, float(np.mean(window))])
            window = []
            t_window = time.perf_counter()
            bar.set_postfix(loss=f"{update_losses[-1][1]:.3f}", s_per_update=f"{update_times[-1]:.2f}")
        rss_trace.append([seen, rss_mib()])
        bar.update(micro)
        if not np.isfinite(loss):
            bar.close()
            raise SystemExit(f"{config['name']}: non-finite loss at {seen} samples")
    bar.close()
    if len(micro_losses) != n_micro:
        raise SystemExit(f"{config['name']}: the pipeline gave {len(micro_losses)} micro-batches, expected {n_micro}")
    peak_after_first = peak_rss_mib()  # since the reset (after the first update)
    peak_train = max(peak_first, peak_after_first)
    timed = update_times[1:] or update_times  # the first update compiles the graphs
    result = dict(
        lr_per_update=lr_per_update(config),
        loss_per_micro=micro_losses,
        loss_per_update=update_losses,
        update_times_s=update_times,
        updates=len(update_times),
        timed_updates=len(update_times) - 1 if len(update_times) > 1 else 0,
        first_update_s=update_times[0],
        time_per_update_s=float(np.median(timed)),
        time_per_update_mean_s=float(np.mean(timed)),
        images_per_s=eff * len(timed) / float(np.sum(timed)),
        peak_rss_mib=peak_train,
        rss_before_model_mib=rss_after_import,
        peak_rss_first_update_mib=peak_first,
        peak_rss_steady_mib=peak_after_first if (steady_ok and len(update_times) > 1) else None,
        rss_end_of_training_mib=rss_mib(),
        rss_per_micro=rss_trace,
    )
    if config.get("limit_test"):
        result.update(_evaluate(net, config))
    result["peak_rss_with_eval_mib"] = peak_rss_mib()
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _evaluate(net, config) -> dict:
    import numpy as np

    from examples.resnet50_cifar10 import data as cd

    images, labels, _ = cd.load_split(config["data_dir"], "test", limit=config["limit_test"])
    dataset = cd.make_dataset(images, labels, 100, augment=False, num_workers=1)
    net.set_train(False)
    correct, total, loss_sum = 0, 0, 0.0
    bar = _tqdm(total=len(labels), desc=f"{'eval ' + config['name']:>20}", unit="img")
    for x, y in dataset.create_tuple_iterator(num_epochs=1):
        logits = net(x).asnumpy().astype(np.float64)
        y = y.asnumpy()
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss_sum += float(-logp[np.arange(len(y)), y].sum())
        correct += int((logits.argmax(axis=1) == y).sum())
        total += len(y)
        bar.update(len(y))
    bar.close()
    return dict(test_accuracy=correct / total, test_loss=loss_sum / total, test_images=total)


def worker_distance(config: dict) -> dict:
    """Accumulation k x micro (ours) vs one plain batch of k*micro, same init, same samples."""
    t_start = time.perf_counter()
    import numpy as np

    ms = _import_mindspore(config["mode"])
    from mindspore import Tensor, nn

    from examples.resnet50_cifar10 import data as cd

    micro, k, updates = config["micro_batch"], config["accum_steps"], config["updates"]
    eff = micro * k
    images, labels, _ = cd.load_split(config["data_dir"], "train", limit=eff * updates)
    if len(labels) < eff * updates:
        raise SystemExit(f"{config['name']}: only {len(labels)} training images, {eff * updates} needed")
    ms.set_seed(config["seed"])
    nets = {}
    for role in ("accum", "plain"):
        nets[role] = build_resnet50(config["norm"])
    # Identical initial weights (and BatchNorm statistics): copy accum -> plain.
    src = nets["accum"].parameters_dict()
    for name, p in nets["plain"].parameters_dict().items():
        p.set_data(Tensor(src[name].asnumpy().copy()))
    steps = {}
    for role, method in (("accum", "ours"), ("plain", "plain")):
        loss_net = nn.WithLossCell(nets[role], nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        steps[role] = _make_step(method, loss_net, nets[role].trainable_params(), config)
        steps[role].set_train()

    def flat(net):
        return [p.asnumpy().astype(np.float64).ravel() for p in net.trainable_params()]

    # Same samples, no augmentation, no shuffle: batch u of the plain run = micro-batches u*k..u*k+k-1.
    dataset = cd.make_dataset(images, labels, eff, augment=False, drop_remainder=True, num_workers=1)
    rel, max_abs, norms, losses = [], [], [], []
    bar = _tqdm(total=updates, desc=f"{config['name']:>20}", unit="update")
    for x, y in dataset.create_tuple_iterator(num_epochs=1):
        xa, ya = x.asnumpy(), y.asnumpy()
        loss_plain = float(steps["plain"](x, y).asnumpy())
        loss_acc = []
        for i in range(k):
            sl = slice(i * micro, (i + 1) * micro)
            loss_acc.append(float(steps["accum"](Tensor(xa[sl]), Tensor(ya[sl])).asnumpy()))
        wa, wb = flat(nets["accum"]), flat(nets["plain"])
        diff = np.sqrt(sum(float(np.dot(a - b, a - b)) for a, b in zip(wa, wb)))
        norm_b = np.sqrt(sum(float(np.dot(b, b)) for b in wb))
        rel.append(diff / norm_b)
        max_abs.append(max(float(np.max(np.abs(a - b))) for a, b in zip(wa, wb)))
        norms.append(norm_b)
        losses.append([loss_plain, float(np.mean(loss_acc))])
        bar.set_postfix(rel_l2=f"{rel[-1]:.2e}")
        bar.update(1)
    bar.close()
    return dict(
        update=list(range(1, len(rel) + 1)),
        rel_l2=rel,
        max_abs=max_abs,
        param_norm=norms,
        loss_plain_vs_accum=losses,
        wall_s=time.perf_counter() - t_start,
    )


def worker_main(config_json: str, out_path: str) -> None:
    config = json.loads(config_json)
    result = (worker_distance if config["kind"] == "distance" else worker_train)(config)
    result = dict(config=config, **result)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, out_path)


# ============================================================================ the driver


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:  # versions without importing MindSpore in the driver
        from importlib import metadata

        info["mindspore"] = metadata.version("mindspore")
        info["numpy"] = metadata.version("numpy")
    except Exception:  # noqa: BLE001
        pass
    try:
        import mindspore_accum

        b = mindspore_accum.build_info()
        info["mindspore_accum"] = f"{b.get('version')} ({b.get('vector_isa')}, {b.get('num_threads')} threads)"
    except Exception as e:  # noqa: BLE001
        info["mindspore_accum"] = f"unavailable ({e})"
    info["ONEDNN_MAX_CPU_ISA"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "AVX2 (set in each worker)")
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the quick profile (< 10 min on 2 quiet cores)")
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else None,
        help="CIFAR-10 binary folder (default: ../shared/data/cifar10-subset/cifar-10-batches-bin when it exists)",
    )
    p.add_argument(
        "--out-dir",
        default=os.path.join(ROOT, "docs"),
        help="where batch_size_study.md, the PNGs and the cached runs go (default: docs/)",
    )
    p.add_argument(
        "--samples",
        type=int,
        help="training images per training-panel configuration (quick 256, full 2048; a multiple of 128)",
    )
    p.add_argument("--limit-test", type=int, help="test images evaluated (quick 200, full 2000)")
    p.add_argument("--perf-updates", type=int, help="updates per memory/throughput-only run (quick 2, full 4)")
    p.add_argument("--dist-updates", type=int, help="updates in the equivalence panel (quick 2, full 6)")
    p.add_argument("--mode", choices=["graph", "pynative"], default="graph")
    p.add_argument("--base-lr", type=float, default=0.1, help="peak lr = base_lr * effective batch / 256")
    p.add_argument(
        "--lr-schedule",
        choices=["warmup_cosine", "constant"],
        default="warmup_cosine",
        help="training panel: linear warm-up then cosine to 0 per update (the example's), or constant",
    )
    p.add_argument("--warmup-frac", type=float, default=0.125, help="fraction of the updates spent warming up")
    p.add_argument(
        "--dist-lr",
        type=float,
        default=0.01,
        help="constant lr of the equivalence panel (small enough that neither network diverges: "
        "a loss spike would amplify any difference)",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    add_runner_arguments(p)
    args = p.parse_args(argv)
    args.profile = "quick" if args.quick else "full"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.worker_out)
        return 0
    if args.data_dir is None:
        print(f"error: no --data-dir given and the default {DEFAULT_DATA} does not exist", file=sys.stderr)
        return 2
    if args.samples is not None and args.samples % 128:
        print(
            "error: --samples must be a multiple of 128 (the largest effective batch of the training panel)",
            file=sys.stderr,
        )
        return 2
    from benchmarks.batch_size_study import study_report

    configs = plan(args)
    if args.list:
        for c in configs:
            print(json.dumps(c))
        return 0
    if args.only:
        unknown = set(args.only) - {c["name"] for c in configs}
        if unknown:
            print(
                f"error: unknown configuration(s) {sorted(unknown)}; known: {[c['name'] for c in configs]}",
                file=sys.stderr,
            )
            return 2
    run_dir = os.path.join(args.out_dir, "batch_size_study_runs", args.profile)
    os.makedirs(run_dir, exist_ok=True)
    meta_path = os.path.join(run_dir, "_meta.json")
    machine = machine_info()
    status = {}
    t0 = time.perf_counter()
    if not args.report_only:
        for i, c in enumerate(configs, 1):
            if args.only and c["name"] not in args.only:
                continue
            print(f"[{i}/{len(configs)}] {c['name']}: {_describe(c)}", flush=True)
            t = time.perf_counter()
            result, how = run_configuration(
                MODULE, c, os.path.join(run_dir, c["name"] + ".json"), args.force, args.timeout
            )
            status[c["name"]] = how
            print(f"[{i}/{len(configs)}] {c['name']}: {how} ({time.perf_counter() - t:.0f} s)", flush=True)
        meta = {
            "machine": machine,
            "profile": args.profile,
            "command": "python -m "
            + " ".join(shlex.quote(a) for a in [MODULE] + (argv if argv is not None else sys.argv[1:])),
            "study_wall_s": time.perf_counter() - t0,
            "status": status,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        }
        # The wall time of the whole study is the sum of the configurations' own times when some were cached.
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
    else:
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {"machine": machine, "profile": args.profile, "command": "(unknown)"}
    results = load_results(configs, run_dir)
    missing = [c["name"] for c in configs if c["name"] not in results]
    paths = study_report.write_report(results, meta, args.out_dir)
    for p_ in paths:
        print(f"wrote {os.path.relpath(p_)}")
    if missing:
        print(f"missing results (see above): {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _describe(c: dict) -> str:
    what = {
        "plain": "plain batch {micro_batch}",
        "ours": "GradAccumCell+FusedMomentum {micro_batch}x{accum_steps}",
        "mindspore": "mindspore.boost.GradientAccumulation {micro_batch}x{accum_steps}",
    }
    if c["kind"] == "distance":
        return (
            f"equivalence, {c['norm']}norm ResNet50: ours {c['micro_batch']}x{c['accum_steps']} vs plain "
            f"{c['effective_batch']}, {c['updates']} updates"
        )
    return what[c["method"]].format(**c) + f", {c['samples']} samples, peak lr {c['lr']:g}"


if __name__ == "__main__":
    sys.exit(main())
