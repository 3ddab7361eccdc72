from vistream.bench.console import bench_console


def test_bench_console_small_run_reports_both_figures():
    out = bench_console(frames=300, dim=16, n_bits=16, k=5, queries=5, loads=0, progress=False)
    assert out["frames"] == 300 and out["k"] == 5 and out["first_paint"] is None
    for key in ("baseline_index_search_frame", "search_frame_with_thumbnails", "streams_refresh"):
        assert set(out[key]) == {"median_ms", "p95_ms", "max_ms"}
        assert 0 <= out[key]["median_ms"] <= out[key]["max_ms"]
    assert "search_image_with_thumbnails" not in out
