"""`vistream bench index --shards`: a bad shard list is a clear error, not a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from vistream.cli.main import app


def test_more_shards_than_partitions_is_refused_with_a_reason():
    r = CliRunner().invoke(app, ["bench", "index", "--shards", "1,8", "--partitions", "4",
                                 "--n", "1000"])
    assert r.exit_code == 2
    assert "between 1 and the partitions" in r.output
    assert "Traceback" not in r.output


def test_a_shard_list_that_is_not_numbers_is_refused():
    r = CliRunner().invoke(app, ["bench", "index", "--shards", "1,two", "--n", "1000"])
    assert r.exit_code == 2 and "error" in r.output


def test_help_mentions_shards():
    r = CliRunner().invoke(app, ["bench", "index", "--help"])
    assert r.exit_code == 0 and "--shards" in r.output
