"""benchmarks/dist/shard_memory.py's arithmetic on synthetic results (no MindSpore, no msrun)."""

import pytest

from benchmarks.dist import shard_memory as sm

MIB = 2.0**20


def test_formula_per_param_is_the_design_formula():
    # weights 4 + accumulators 4 + two moments 8; sharded parts divided by W (issue 25)
    assert sm.formula_per_param("none", 2) == 16.0
    assert sm.formula_per_param("optimizer", 2) == 4 + 4 + 8 / 2
    assert sm.formula_per_param("gradients", 8) == 4 + 4 / 8 + 8 / 8
    assert sm.psi_of(5000) == 5000 * 5000 + 5000 + 1000 * 17


def test_formula_table_gb_for_a_7b_model():
    table = sm.formula_table(worlds=(8,), psi=7e9)
    row = next(line for line in table.splitlines() if line.startswith("| 8 |"))
    # 7e9 * 16 = 112 GB (+ 4 * 7e9 = 140); 7e9 * (8 + 1) = 63 (91); 7e9 * (4 + 1.5) = 38.5 (66.5)
    assert row == "| 8 | 112.0 (140.0) | 63.0 (91.0) | 38.5 (66.5) |"


def test_pool_stats_reads_the_last_report(tmp_path):
    line = (
        "[INFO] PRE_ACT(1,7f,python):2026 [mindspore/ccsrc/runtime/memory/mem_pool/mem_dynamic_allocator.cc:1211] "
        "DumpDynamicMemPoolStateInfo] The dynamic memory pool total allocated mem:{}M, min addr :0, max addr: 0, "
        "peak used mem:{}M, actual peak used mem:{}M, in used mem:0M\n"
    )
    log = tmp_path / "worker_0.log"
    log.write_text("noise\n" + line.format(1024, 23, 30) + line.format(2048, 286, 381))
    assert sm._pool_stats(str(log)) == {"allocated": 2048, "peak_used": 286, "actual_peak": 381}
    assert sm._pool_stats(str(tmp_path / "absent.log")) is None


def _rank(setting, rows, rank, per_param, pool_extent, peak_extra=2.0):
    """A worker result whose resident memory follows the model: built = 4 B/param (the weights),
    end = Parameters + pool extent + 4, peak = end + peak_extra; constants added to all."""
    psi = sm.psi_of(rows)
    base, const = 400.0, 50.0
    end = const + (per_param + pool_extent + 4.0) * psi / MIB
    return {
        "rank": rank,
        "world": 2,
        "setting": setting,
        "psi": psi,
        "parameter_bytes": per_param * psi,
        "rss_baseline_mib": base,
        "rss_built_mib": base + const + 4.0 * psi / MIB,
        "rss_trimmed_mib": base + end,
        "peak_rss_mib": base + end + peak_extra * psi / MIB,
        "trace_mib": [[0, 0], [0, 0], [0, 0], [end, end]],
        "pool_mib": {"allocated": 1024, "peak_used": 10, "actual_peak": 20.0 + pool_extent * psi / MIB},
    }


def test_report_slopes_cancel_the_constants():
    runs = {
        "optimizer": {
            rows: [_rank("optimizer", rows, r, 12.0, 12.0, peak_extra=2.0 * (r + 1)) for r in (0, 1)]
            for rows in (5000, 10000)
        }
    }
    slope_rows = [line for line in sm.report(runs, 2).splitlines() if line.startswith("| optimizer | 0 |")]
    assert len(slope_rows) == 1
    cells = [c.strip() for c in slope_rows[0].strip("|").split("|")]
    # Parameters, built, pool extent, end, model (12 + 12 + 4), ratio, steady formula, its ratio
    assert float(cells[2]) == pytest.approx(12.0, abs=1e-3)
    assert float(cells[4]) == pytest.approx(4.0, abs=1e-2)
    assert float(cells[7]) == pytest.approx(28.0, abs=1e-2)
    assert float(cells[8]) == pytest.approx(28.0, abs=1e-2)
    assert cells[10] == "28" and float(cells[11]) == pytest.approx(1.0, abs=1e-3)
    assert cells[14].startswith("2.00 (1.0)")  # peak - end: one ring chunk of 4/W
