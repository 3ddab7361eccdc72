"""`vistream train decouple` / `eval decouple`: one-line usage errors (exit 2) for inputs they
cannot use."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from vistream.cli.main import app


def _text(res) -> str:
    """The output with the error box's borders and line wraps removed."""
    return " ".join(res.output.replace("│", " ").split())


def test_eval_rejects_a_missing_checkpoint(tmp_path):
    res = CliRunner().invoke(app, ["eval", "decouple", "--checkpoint", str(tmp_path / "no.pt"),
                                   "--base", str(tmp_path / "b.pt")])
    assert res.exit_code == 2 and "not found" in _text(res) and "Traceback" not in _text(res)


def test_eval_rejects_an_unknown_attack(tmp_path):
    res = CliRunner().invoke(app, ["eval", "decouple", "--checkpoint", str(tmp_path / "no.pt"),
                                   "--base", str(tmp_path / "b.pt"), "--attacks", "fgsm,cw"])
    assert res.exit_code == 2 and "unknown attack" in _text(res)


def test_train_rejects_a_file_that_is_no_backbone(tmp_path):
    bad = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    res = CliRunner().invoke(app, ["train", "decouple", "--base", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "cannot load a backbone" in _text(res)
    assert "Traceback" not in _text(res)


def test_train_rejects_an_unknown_schedule(tmp_path):
    res = CliRunner().invoke(app, ["train", "decouple", "--base", str(tmp_path / "b.pt"),
                                   "--schedule", "warp"])
    assert res.exit_code == 2 and "warp" in _text(res)


def test_train_rejects_settle_epochs_that_leave_no_gated_epoch(tmp_path):
    from vistream.models.backbones import create_model
    from vistream.models.train import save_atomic

    m = create_model("resnet20", num_classes=10)
    ckpt = tmp_path / "b.pt"
    save_atomic({"model": m.state_dict(), "model_config": dict(m.config)}, ckpt)
    res = CliRunner().invoke(app, ["train", "decouple", "--base", str(ckpt), "--epochs", "2",
                                   "--settle-epochs", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "settle" in _text(res) and "Traceback" not in _text(res)
