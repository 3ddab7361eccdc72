"""`vistream record TOPIC OUT.mp4` as a user runs it (the bus made by the command is swapped
for a memory bus holding the topic; on Kafka it is the same code)."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

import vistream.pipeline.bus as bus_module
from vistream.cli.main import app
from vistream.pipeline.bus import TopicSpec
from vistream.pipeline.bus.memory import MemoryBus
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Frame


class KeptBus(MemoryBus):
    def close(self) -> None:  # the command closes its bus; the test reads on
        pass


def test_record_command(tmp_path, monkeypatch):
    bus = KeptBus()
    bus.create_topics([TopicSpec("annotated", 1)])
    with bus.producer() as p:
        for s in range(5):
            r = encode_message(Frame.from_image(np.full((32, 48, 3), 40 * s, np.uint8), "cam", s))
            p.send("annotated", r.value, r.key, r.headers)
        p.flush()
    monkeypatch.setattr(bus_module, "make_bus", lambda *a, **k: bus)
    runner = CliRunner()
    res = runner.invoke(app, ["record", "annotated", str(tmp_path / "out.mp4"), "--max-frames",
                              "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "wrote 3 frames of stream cam (48x32)" in res.output
    assert (tmp_path / "out.mp4").stat().st_size > 0
    help_ = runner.invoke(app, ["record", "--help"])
    assert help_.exit_code == 0 and "--max-frames" in help_.output
    bus.create_topics([TopicSpec("empty", 1)])
    res = runner.invoke(app, ["record", "empty", str(tmp_path / "none.mp4"), "--no-progress"])
    assert res.exit_code == 1 and "no frames in empty" in res.output
