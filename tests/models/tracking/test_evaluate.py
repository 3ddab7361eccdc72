import json

import numpy as np
import pytest

from vistream.models.data import TrackingSpec, render
from vistream.models.tracking.evaluate import (
    OpenCVTracker,
    center_error,
    evaluate,
    format_table,
    iou,
    make_tracker,
    plot_curves,
    precision_curve,
    success_curve,
    summarize,
)


def test_metrics_follow_the_otb_definitions():
    gt = np.array([[10, 10, 10, 10], [0, 0, 4, 4], [0, 0, 10, 10]], float)
    pred = np.array([[10, 10, 10, 10], [2, 0, 4, 4], [30, 0, 10, 10]], float)
    assert center_error(pred, gt).tolist() == [0.0, 2.0, 30.0]
    assert iou(pred, gt).tolist() == pytest.approx([1.0, 8 / 24, 0.0])
    prec = precision_curve(center_error(pred, gt))
    assert prec[0] == pytest.approx(1 / 3) and prec[20] == pytest.approx(2 / 3)
    succ = success_curve(iou(pred, gt))
    assert len(succ) == 21
    assert succ[0] == pytest.approx(2 / 3)  # IoU > 0
    assert succ[7] == pytest.approx(1 / 3)  # IoU > 0.35
    assert succ[-1] == 0.0  # IoU > 1 never


@pytest.mark.parametrize("name", ["csrt", "kcf", "mil", "medianflow", "mosse"])
def test_opencv_trackers_are_available(name):
    t = make_tracker(name)
    assert isinstance(t, OpenCVTracker)
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    t.init(img, (60, 50, 20, 20))
    out = t.update(img)
    assert len(out.box) == 4


def test_evaluate_summarize_and_plot(tmp_path):
    seq = render(TrackingSpec(name="q", seed=4, n_frames=25, n_targets=2, shake=1))
    runs = evaluate([seq], ["aggregation", "kcf"], progress=False)
    assert len(runs) == 4 and {r.tracker for r in runs} == {"aggregation", "kcf"}
    agg = [r for r in runs if r.tracker == "aggregation"]
    assert all(r.n_scored == int(seq.visible[1:, r.target].sum()) for r in agg)
    summary = summarize(runs)
    assert set(summary["groups"]) >= {"all", "shake", "multi", "no_shake"}
    assert summary["groups"]["no_shake"] == {}
    stats = summary["groups"]["all"]["aggregation"]
    assert 0 <= stats["precision20"] <= 1 and 0 <= stats["success_auc"] <= 1
    assert stats["fps"] > 0
    table = format_table(summary)
    assert "| all | 2 |" in table and "aggregation" in table
    paths = plot_curves(summary, tmp_path)
    assert [p.name for p in paths] == ["success.png", "precision.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_eval_and_bench(tmp_path):
    from typer.testing import CliRunner

    from vistream.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["eval", "tracking", "--quick", "--trackers", "aggregation,kcf",
                              "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    last = json.loads(res.output.strip().splitlines()[-1])
    assert last["eval"] == "tracking" and "auc_above_all_baselines" in last
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["meta"]["trackers"] == ["aggregation", "kcf"]
    assert (tmp_path / "success.png").exists() and (tmp_path / "precision_shake.png").exists()
    assert "P@20" in (tmp_path / "results.md").read_text()

    res = runner.invoke(app, ["bench", "tracking", "--sequences", "1", "--frames", "20",
                              "--repeats", "1", "--trackers", "aggregation,kcf"])
    assert res.exit_code == 0, res.output
    last = json.loads(res.output.strip().splitlines()[-1])
    assert set(last["fps_per_target"]) == {"aggregation", "kcf"}
    assert last["frame_size"] == [640, 480] and "target_met_cpu" in last

    res = runner.invoke(app, ["eval", "tracking", "--quick", "--trackers", "nope"])
    assert res.exit_code != 0


def test_targets_compare_the_aggregation_tracker_with_the_best_baseline():
    from vistream.models.tracking.evaluate import check_targets

    groups = {"all": {"aggregation": {"success_auc": 0.6}, "kcf": {"success_auc": 0.5},
                      "csrt": {"success_auc": 0.55}},
              "shake": {"aggregation": {"precision20": 0.9}, "kcf": {"precision20": 0.6},
                        "csrt": {"precision20": 0.75}}}
    t = check_targets({"groups": groups})
    assert t["overall_auc"] == 0.6 and t["best_baseline_auc"] == 0.55 and t["auc_above_all_baselines"]
    assert t["drift_margin_points"] == 15.0 and not t["drift_margin_met"]
    assert check_targets({"groups": {"all": {"kcf": {"success_auc": 0.5}}}}) == {}
