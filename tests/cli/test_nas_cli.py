"""`vistream search bnas`, `train bnas`, `eval bnas`: help and one-line usage errors."""

from __future__ import annotations

from typer.testing import CliRunner

from vistream.cli.main import app


def _text(res) -> str:
    return " ".join(res.output.replace("│", " ").split())


def test_help_lists_the_search_options():
    res = CliRunner().invoke(app, ["search", "bnas", "--help"])
    assert res.exit_code == 0
    for opt in ("--resume", "--ucb", "--no-reduce", "--round-epochs", "--k"):
        assert opt in _text(res)
    assert CliRunner().invoke(app, ["train", "bnas", "--help"]).exit_code == 0
    assert "--baseline-search" in _text(CliRunner().invoke(app, ["eval", "bnas", "--help"]))


def test_train_refuses_a_bad_genotype(tmp_path):
    bad = tmp_path / "g.json"
    bad.write_text('{"normal": [["conv_9x9", 0], ["skip_connect", 1]], "normal_concat": [2], '
                   '"reduce": [["skip_connect", 0], ["skip_connect", 1]], "reduce_concat": [2]}')
    res = CliRunner().invoke(app, ["train", "bnas", "--genotype", str(bad)])
    assert res.exit_code == 2 and "unknown operation" in _text(res) and "Traceback" not in _text(res)
    res = CliRunner().invoke(app, ["train", "bnas", "--genotype", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "cannot read genotype" in _text(res)


def test_search_checks_its_widths_and_dataset(tmp_path):
    res = CliRunner().invoke(app, ["search", "bnas", "--channels", "6", "--k", "4", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "multiple" in _text(res)
    res = CliRunner().invoke(app, ["search", "bnas", "--dataset", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown dataset" in _text(res)


def test_eval_refuses_an_unknown_handmade_method(tmp_path):
    res = CliRunner().invoke(app, ["eval", "bnas", "--handmade", "resnet", "--search", str(tmp_path)])
    assert res.exit_code == 2 and "--handmade" in _text(res)
