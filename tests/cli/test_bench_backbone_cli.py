"""`vistream bench backbone`: batch 1 and 32 (any list), the target in the same run, synthetic
pruned nets, and clear errors instead of tracebacks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from vistream.cli.main import app


def test_synthetic_run_reports_every_batch_and_the_target(tmp_path):
    r = CliRunner().invoke(app, ["bench", "backbone", "--arch", "resnet20", "--batch", "1", "--batch", "2",
                                 "--reps", "2"])
    assert r.exit_code == 0, r.output
    last = json.loads(r.output.strip().splitlines()[-1])
    assert last["bench"] == "backbone" and last["batches"] == [1, 2] and last["target"] == 0.8
    (row,) = last["models"]
    assert 0.4 < row["flops_ratio"] < 0.6
    assert abs(row["target_speedup"] - 0.8 / row["flops_ratio"]) < 0.005
    assert row["pad_multiple"] in (1, 8, 16)
    for b in ("batch1", "batch2"):
        f = row[b]
        assert abs(f["speedup"] - f["reference_ms"] / f["latency_ms"]) < 0.01 * f["speedup"]
        assert "speedup_cpu_clock" in f and f["latency_ms"] > 0
    worst = min(row[b]["speedup_over_flops_ratio"] for b in ("batch1", "batch2"))
    assert last["min_speedup_over_flops_ratio"] == worst and last["target_met"] == (worst >= 0.8)


def test_nothing_to_measure_is_a_clear_error():
    r = CliRunner().invoke(app, ["bench", "backbone"])
    assert r.exit_code == 2 and "--arch" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["bench", "backbone", "--arch", "resnet20", "--clock", "sundial"])
    assert r.exit_code == 2 and "wall or cpu" in r.output


def test_help_mentions_batches_and_padding():
    r = CliRunner().invoke(app, ["bench", "backbone", "--help"])
    assert r.exit_code == 0 and "--batch" in r.output and "--pad" in r.output
