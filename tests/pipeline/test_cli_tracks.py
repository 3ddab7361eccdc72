"""`vistream track start|stop`: help, clear errors, and the record it produces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import vistream.pipeline.bus as bus_module
from vistream.cli.main import app
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.wire import decode_message

ROOT = Path(__file__).resolve().parents[2]


def test_help():
    res = subprocess.run([sys.executable, "-m", "vistream", "track", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "start" in res.stdout and "stop" in res.stdout
    res = subprocess.run([sys.executable, "-m", "vistream", "track", "start", "--help"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--box" in res.stdout and "--stream-id" in res.stdout


def test_bad_boxes_are_usage_errors():
    runner = CliRunner()
    for box in ("1,2,0,4", "1,2,3", "a,b,c,d", "1,2,nan,4", "1,2,99999,4"):
        res = runner.invoke(app, ["track", "start", "--box", box, "--stream-id", "cam"])
        assert res.exit_code == 2, (box, res.output)


def test_start_and_stop_produce_records(monkeypatch):
    bus = MemoryBus()
    monkeypatch.setattr(bus_module, "make_bus", lambda backend, bootstrap: bus)
    bus.close = lambda: None  # the command closes its bus; this one is read afterwards
    runner = CliRunner()
    res = runner.invoke(app, ["track", "start", "--box", "10,20,8,6", "--stream-id", "cam",
                              "--topic", "inits"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["box"] == [10, 20, 8, 6]
    res = runner.invoke(app, ["track", "stop", "--track-id", "4", "--stream-id", "cam",
                              "--topic", "inits"])
    assert res.exit_code == 0, res.output
    with bus.consumer(["inits"], "check") as c:
        got = [decode_message(r, accept=("track_init",)) for r in c.poll(10, 0.2)]
    assert [r.target_ids.tolist() for r in got] == [[-2], []]
    assert got[0].boxes.tolist() == [[10, 20, 8, 6]] and got[1].drop_ids.tolist() == [4]
    assert all(r.stream_id == "cam" for r in got)
