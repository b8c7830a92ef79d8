"""The large-batch study's report writer on hand-made results (no MindSpore, no training)."""

import statistics

import matplotlib  # noqa: F401  (a test dependency: the report writer draws with it)

from benchmarks.batch_size_study import large_batch_report as rep


def _cnn(method, batch, seed, acc, train_acc=0.9, updates=10):
    config = dict(
        study="cnn",
        name=f"cnn_{method}_b{batch}_s{seed}",
        method=method,
        effective_batch=batch,
        start_batch=batch // 4 if method == "grow" else batch,
        base_batch=32,
        base_lr=0.05,
        scaling={"sgd": "none", "scaled": "linear", "lars": "sqrt", "grow": "linear"}[method],
        warmup_updates=0 if method == "sgd" else 2,
        plan_updates=dict(total=updates, decay_at=[]),
        train_images=1000,
        test_images=1000,
        train_eval_images=500,
        epochs=2,
        width=8,
        weight_decay=5e-4,
        seed=seed,
    )
    curve = [[100 * (i + 1), 2.3 - 0.1 * i, batch] for i in range(updates)]
    return dict(
        config=config,
        diverged=False,
        updates=updates,
        test_accuracy=acc,
        train_accuracy=train_acc,
        loss_per_update=curve,
        train_s=12.0,
    )


def _results():
    runs = [
        _cnn("sgd", 32, 0, 0.60),
        _cnn("sgd", 32, 1, 0.62),
        _cnn("sgd", 1024, 0, 0.30),
        _cnn("sgd", 1024, 1, 0.34),
        _cnn("scaled", 1024, 0, 0.50),
        _cnn("scaled", 1024, 1, 0.52),
        _cnn("lars", 1024, 0, 0.505),
        _cnn("lars", 1024, 1, 0.515),
    ]
    return {r["config"]["name"]: r for r in runs}


def test_mean_and_sample_std_over_seeds_and_diverged_runs_counted():
    values = [0.30, 0.34, 0.35]
    text = rep.fmt_ms(values, 100.0, 2)
    assert text == f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} (n=3)"
    assert rep.fmt_ms([0.5, float("nan")], 100.0) == "50.0 (n=1, 1 diverged)"
    assert rep.fmt_ms([float("nan")]) == "diverged"


def test_a_difference_is_called_real_only_beyond_twice_the_spread():
    # 0.20 apart with stds of ~0.028: beyond; 0.005 apart with the same spread: within
    assert "beyond" in rep._diff_text([0.30, 0.34], [0.50, 0.52], 100.0, "points")
    assert "within" in rep._diff_text([0.505, 0.515], [0.50, 0.52], 100.0, "points")
    assert "one seed" in rep._diff_text([0.5], [0.50, 0.52], 100.0, "points")


def test_the_page_has_a_row_per_cell_and_the_base_run_counts_for_the_scaling_rule(tmp_path):
    results = _results()
    configs = [r["config"] for r in results.values()]
    meta = dict(command="python -m x", profile="full", machine={"cpu": "test cpu"}, commit="abc", date="d")
    paths = rep.write_report(results, meta, str(tmp_path), configs)
    page = (tmp_path / rep.MD_NAME).read_text()
    assert len(paths) == 3  # two CNN plots and the page (no GPT results: no GPT plot)
    for png in (rep.PNG["cnn_acc"], rep.PNG["cnn_loss"]):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    rows = [ln for ln in page.splitlines() if ln.startswith("| 32 |") or ln.startswith("| 1024 |")]
    # batch 32: sgd, and the same runs again as the scaling rule (the rules coincide there)
    assert [r.split("|")[2].strip() for r in rows] == ["sgd", "scaled", "sgd", "scaled", "lars"]
    assert rows[0].split("|")[5] == rows[1].split("|")[5]  # the same accuracies
    assert "61.0 ± 1.4 (n=2)" in rows[0]
    assert "beyond twice the seed spread" in page and "not a measured difference" in page


def test_runs_from_another_rate_or_budget_stay_out_of_the_main_table(tmp_path):
    results = _results()
    for tag, acc in (("lr0.02", 0.11), ("e24", 0.44)):
        r = _cnn("sgd", 1024, 0, acc)
        r["config"]["name"] += f"_{tag}"
        results[r["config"]["name"]] = r
    configs = [r["config"] for r in results.values() if not r["config"]["name"].endswith(("_lr0.02", "_e24"))]
    rep.write_report(results, dict(machine={}), str(tmp_path), configs)
    page = (tmp_path / rep.MD_NAME).read_text()
    main_row = [ln for ln in page.splitlines() if ln.startswith("| 1024 | sgd | 10 | 0.05 |")]
    assert len(main_row) == 1 and "32.0 ± 2.8 (n=2)" in main_row[0]  # 0.30 and 0.34 only
    assert "| 1024 | sgd | 10 | 0.05 -> 0.05 | 11.0 | 0.05 -> 0.05 | 30.0 |" in page
    assert "| 1024 | sgd | 2 -> 2 | 10 -> 10 | 30.0 -> 44.0 |" in page
