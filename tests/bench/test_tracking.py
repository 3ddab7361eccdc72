"""``vistream bench tracking``'s measuring function on a tiny run."""

from vistream.bench.tracking import bench_tracking


def test_bench_tracking_reports_fps_ratios_and_the_target():
    lines = []
    result = bench_tracking(["aggregation", "kcf"], sequences=1, frames=20, repeats=1,
                            echo=lines.append)
    assert len(lines) == 2 and lines[0].startswith("aggregation")
    assert result["frame_size"] == [640, 480] and result["frames"] == {"aggregation": 19, "kcf": 19}
    assert result["fps_per_target"]["aggregation"] > 0 and result["cpu_fps_per_target"]["kcf"] > 0
    assert result["ratio_vs_kcf"] > 0 and "ratio_vs_csrt" not in result
    assert result["target_fps"] == 300 and isinstance(result["target_met_cpu"], bool)
