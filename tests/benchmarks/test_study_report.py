"""The batch-size study's report writer on tiny synthetic results (no MindSpore, no training, no data)."""

import os
import struct

import matplotlib  # noqa: E402,F401  (a test dependency: the report writer draws with it)

from benchmarks.batch_size_study import study_report  # noqa: E402


def _train(name, method, micro, k, samples=256, rss=1000.0, ips=10.0, kind="train", acc=0.25):
    eff = micro * k
    config = dict(
        name=name,
        kind=kind,
        method=method,
        micro_batch=micro,
        accum_steps=k,
        effective_batch=eff,
        samples=samples,
        lr=0.1 * eff / 256,
        base_lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        seed=0,
        mode="graph",
        data_dir="/data",
        lr_schedule="warmup_cosine",
        warmup_frac=0.125,
        limit_test=100 if kind == "train" else 0,
        augment=True,
    )
    micro_losses = [[(i + 1) * micro, 2.3 - 0.001 * i * micro] for i in range(samples // micro)]
    per_update = [
        [micro_losses[j + k - 1][0], sum(loss for _, loss in micro_losses[j : j + k]) / k]
        for j in range(0, len(micro_losses), k)
    ]
    times = [30.0] + [eff / ips] * (len(per_update) - 1)
    r = dict(
        config=config,
        loss_per_micro=micro_losses,
        loss_per_update=per_update,
        update_times_s=times,
        updates=len(per_update),
        first_update_s=times[0],
        time_per_update_s=eff / ips,
        time_per_update_mean_s=eff / ips,
        images_per_s=ips,
        peak_rss_mib=rss,
        rss_before_model_mib=400.0,
        wall_s=60.0,
    )
    if kind == "train":
        r.update(test_accuracy=acc, test_loss=2.1, test_images=100)
    return r


def _dist(name, norm, rel):
    config = dict(
        name=name,
        kind="distance",
        norm=norm,
        micro_batch=32,
        accum_steps=4,
        effective_batch=128,
        updates=len(rel),
        lr=0.05,
        base_lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        seed=0,
        mode="graph",
    )
    return dict(
        config=config,
        update=list(range(1, len(rel) + 1)),
        rel_l2=rel,
        max_abs=[x * 10 for x in rel],
        param_norm=[100.0] * len(rel),
        loss_plain_vs_accum=[[2.3, 2.3]] * len(rel),
        wall_s=30.0,
    )


def _results():
    return {
        "plain32": _train("plain32", "plain", 32, 1, rss=1234.0, ips=11.11),
        "plain128": _train("plain128", "plain", 128, 1, rss=3456.0, ips=12.34, acc=0.3125),
        "accum32x4_ours": _train("accum32x4_ours", "ours", 32, 4, rss=1300.0, ips=10.87),
        "accum32x4_mindspore": _train("accum32x4_mindspore", "mindspore", 32, 4, rss=1500.0, ips=10.5),
        "plain64": _train("plain64", "plain", 64, 1, samples=192, rss=2000.0, ips=11.5, kind="perf"),
        "accum32x2_ours": _train("accum32x2_ours", "ours", 32, 2, samples=192, rss=1280.0, ips=10.9, kind="perf"),
        "distance_batchnorm": _dist("distance_batchnorm", "batch", [3.2e-3, 5.1e-3, 7.7e-3]),
        "distance_groupnorm": _dist("distance_groupnorm", "group", [1.1e-7, 2.0e-7, 0.0]),
    }


META = {
    "machine": {"cpu": "Synthetic CPU 9000", "logical_cpus": 2, "memory_gib": 24.0},
    "profile": "quick",
    "command": "python -m benchmarks.batch_size_study.batch_size_study --quick",
    "study_wall_s": 543.0,
    "date": "2025-01-01 00:00 UTC",
    "status": {"plain32": "ran"},
}


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _check_pngs(tmp_path):
    for key, name in study_report.PNG.items():
        p = tmp_path / name
        assert p.is_file() and p.stat().st_size > 5000, name
        assert _png_size(p) == study_report.PIXELS[key], name


def test_report_full_results(tmp_path):
    paths = study_report.write_report(_results(), META, str(tmp_path))
    md = (tmp_path / study_report.MD_NAME).read_text()
    assert len(paths) == 5 and all(os.path.isfile(p) for p in paths)
    _check_pngs(tmp_path)
    # the numbers appear in the tables
    for needle in (
        "1234",
        "3456",
        "1300",
        "1500",
        "2000",
        "1280",  # peak RSS (MiB)
        "11.11",
        "12.34",
        "10.87",
        "10.50",  # images/s
        "31.25%",
        "25.00%",  # test accuracy
        "3.200e-03",
        "7.700e-03",
        "1.100e-07",
        "0.000e+00",  # distances
        "Synthetic CPU 9000",
        "--quick",
        "543",
    ):
        assert needle in md, needle
    # every image is linked from the markdown
    for name in study_report.PNG.values():
        assert f"]({name})" in md
    # key findings: memory ratio of accumulation vs plain 128, ours vs MindSpore per update
    assert "x0.38" in md  # 1300 / 3456
    assert "accumulation 32x4 (MindSpore boost)" in md
    # a markdown table row per training configuration, with the configuration's label
    assert md.count("| plain batch 32 |") >= 2 and "| accumulation 32x2 (ours) |" in md


def test_report_partial_results(tmp_path):
    results = _results()
    for name in ("plain128", "accum32x4_mindspore", "distance_groupnorm"):
        del results[name]
    results["accum32x2_ours"]["timed_updates"] = 0  # one update only: its time includes compilation
    study_report.write_report(results, META, str(tmp_path))
    md = (tmp_path / study_report.MD_NAME).read_text()
    assert study_report.NA in md
    assert "| 10.90 * |" in md and study_report.UNTIMED_NOTE in md
    _check_pngs(tmp_path)


def test_report_no_results(tmp_path):
    study_report.write_report({}, {"profile": "quick"}, str(tmp_path))
    assert (tmp_path / study_report.MD_NAME).is_file()
    _check_pngs(tmp_path)


def test_block_means_weight_by_batch_size():
    # batches of 32 at 32, 64, ..., and one batch of 128
    assert study_report._block_means([[32, 1.0], [64, 2.0], [96, 3.0], [128, 4.0]], 128, 128) == [2.5]
    assert study_report._block_means([[128, 4.0], [256, 2.0]], 128, 256) == [4.0, 2.0]
