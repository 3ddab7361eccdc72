"""`vistream serve --backbone`: the shipped artifact by default; a random-init backbone only with
--random-init (issue 23)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vistream.cli.commands.serve import query_backbone
from vistream.cli.main import app
from vistream.models.zoo import DEFAULT_ARTIFACT


def test_the_default_backbone_is_the_shipped_artifact():
    assert query_backbone(DEFAULT_ARTIFACT, False) == DEFAULT_ARTIFACT
    assert query_backbone("none", False) is None


def test_a_registered_backbone_runs_only_when_random_init_is_asked_for(tmp_path):
    with pytest.raises(ValueError, match="only with --random-init"):
        query_backbone("resnet18", False)
    assert query_backbone("resnet18", True) == "resnet18"
    with pytest.raises(ValueError, match="not the artifact"):
        query_backbone(DEFAULT_ARTIFACT, True)
    with pytest.raises(ValueError, match="no shipped artifact"):
        query_backbone("zoo:nope", False)
    with pytest.raises(ValueError, match="not found"):
        query_backbone(str(tmp_path / "missing.vsa"), False)
    (tmp_path / "m.vsa").write_bytes(b"x")
    assert query_backbone(str(tmp_path / "m.vsa"), False) == str(tmp_path / "m.vsa")


def test_the_command_line_says_so(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "--random-init" in out.output
    res = runner.invoke(app, ["serve", "--snapshot", str(tmp_path), "--backbone", "resnet18"])
    assert res.exit_code == 2
    assert "--random-init" in res.output and "Traceback" not in res.output
