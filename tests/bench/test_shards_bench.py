"""The sharded-index bench on a tiny setting: its JSON has the fields the issue asks for, and
the behaviour it measures holds (exact answers; a killed replica loses and repeats nothing).
No timing is asserted."""

from __future__ import annotations

import pytest

from vistream.bench.shards import bench_shards


def test_tiny_sharded_bench_is_exact_and_recovers_everything():
    out = bench_shards((1, 2), n=3000, partitions=2, queries=20, k=5, batch=500,
                       echo=lambda s: None)
    assert out["exact"] is True
    assert out["lost"] == 0 and out["duplicated"] == 0
    assert out["recovery_s"] is not None and out["ingest_scaling_2"] is not None
    assert out["p99_ratio_4"] is None  # no 4-shard run asked for
    assert out["runs"]["2"]["recovery"]["partitions_moved"] == 1
    assert set(out["cost_model"]) >= {"scan_ms_per_million_codes", "merge_ms_per_shard"}


def test_more_shards_than_partitions_is_a_clear_error():
    with pytest.raises(ValueError, match="between 1 and the partitions"):
        bench_shards((1, 8), n=1000, partitions=4, echo=lambda s: None)
