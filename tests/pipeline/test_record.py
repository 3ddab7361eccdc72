"""Recording a frames topic into a video: order, duplicates, other streams, the end of the
topic, --max-frames; on the memory bus and (marked kafka) on the broker `make test` starts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vistream.pipeline.bus import TopicSpec
from vistream.pipeline.record import record_topic
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Frame


def frame(seq: int, stream: str = "cam", level: int | None = None) -> Frame:
    img = np.full((48, 64, 3), (seq * 20) % 250 if level is None else level, np.uint8)
    return Frame.from_image(img, stream, seq, timestamp_ms=seq)


def send(bus, topic: str, frames, extra: list[tuple[bytes, bytes]] = ()) -> None:
    with bus.producer() as p:
        for f in frames:
            r = encode_message(f)
            p.send(topic, r.value, r.key, r.headers)
        for key, value in extra:
            p.send(topic, value, key, [])
        p.flush()


def read_back(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    return out


@pytest.fixture
def bus(make_bus, topic_name):
    b = make_bus(2)
    b.create_topics([TopicSpec(topic_name, 2)])
    b.topic = topic_name
    return b


def test_frames_are_written_in_order_latest_copy_wins(bus, tmp_path):
    order = [3, 0, 2, 1, 5, 4]
    send(bus, bus.topic, [frame(s) for s in order] + [frame(4, level=250), frame(9, "other")],
         extra=[(b"cam", b"not an image")])
    # two streams on two partitions: which comes first is the broker's business, so name it
    rep = record_topic(bus, bus.topic, tmp_path / "a.mp4", reorder=8, stream_id="cam")
    assert rep.frames == 6 and rep.stream_id == "cam" and rep.size == (64, 48)
    assert (rep.replaced, rep.other_streams) == (1, 1)
    assert rep.undecodable == 1
    frames = read_back(rep.path)
    assert len(frames) == 6
    means = [float(f.mean()) for f in frames]
    assert means[:4] == pytest.approx([0, 20, 40, 60], abs=6)
    assert means[4] == pytest.approx(250, abs=6)  # frame 4's second copy
    assert means[5] == pytest.approx(100, abs=6)


def test_it_stops_at_the_end_of_the_topic_and_at_max_frames(bus, tmp_path):
    send(bus, bus.topic, [frame(s) for s in range(10)])
    rep = record_topic(bus, bus.topic, tmp_path / "b.avi", max_frames=4, stream_id="cam")
    assert rep.frames == 4 and len(read_back(rep.path)) == 4
    send(bus, bus.topic, [frame(s) for s in range(10, 12)])  # written later: included
    assert record_topic(bus, bus.topic, tmp_path / "c.mp4").frames == 12


def test_an_empty_topic_or_a_bad_name_writes_nothing(bus, tmp_path):
    rep = record_topic(bus, bus.topic, tmp_path / "d.mp4")
    assert rep.frames == 0 and not (tmp_path / "d.mp4").exists()
    with pytest.raises(ValueError, match="extension"):
        record_topic(bus, bus.topic, tmp_path / "e.gif")
