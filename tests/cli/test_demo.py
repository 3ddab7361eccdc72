"""`vistream demo`, shortened: every stage runs and is scored, the report and the annotated
video are written, and the last line printed is one JSON object with the five figures."""

from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner

from vistream.cli.main import app


@pytest.mark.slow
def test_short_demo_prints_its_figures_last(tmp_path, monkeypatch):
    monkeypatch.delenv("DEMO_ARTIFACT", raising=False)
    res = CliRunner().invoke(app, ["demo", "--frames", "30", "--out", str(tmp_path),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    last = json.loads(res.output.strip().splitlines()[-1])
    assert {"idf1", "map_sdoh", "map_lsh", "deblur_gain_db", "fps"} <= set(last)
    assert 0 <= last["idf1"] <= 1
    assert set(last["fps"]) >= {"detect", "track", "features", "index", "deblur", "annotate",
                                "summary", "pipeline"}
    assert all(last["fps"][k] > 0 for k in ("detect", "track", "deblur", "annotate", "pipeline"))
    page = (tmp_path / "report.html").read_text()
    assert "IDF1" in page and "data:image/jpeg;base64," in page and "data:image/png;base64," in page
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    cap.release()
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["tracking"]["objects"] == 12
