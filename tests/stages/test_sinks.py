import json

from vistream.stages.records import Frame
from vistream.stages.sinks import SummaryParams, SummarySink
from vistream.stages.thumbnail import summarize_frame
from tests.conftest import make_frame, random_image


def sink(tmp_path) -> SummarySink:
    s = SummarySink(SummaryParams(out_dir=str(tmp_path)))
    s.setup()
    return s


def test_summary_sink_is_idempotent_and_survives_restart(tmp_path):
    frames = [make_frame(i, stream="a.b") for i in range(5)]
    frames.append(Frame.from_image(random_image(), "x", 0, frame_id="topic.with.dots/0/7"))
    first = sink(tmp_path)
    first.process([summarize_frame(f) for f in frames[:4]])
    first.process([summarize_frame(f) for f in frames[2:]])  # 2 and 3 redelivered
    assert first.summary()["frames"] == 6 and first.redeliveries == 2
    # A new process on the same folder (a restart) sees the same six entries and thumbnails.
    second = sink(tmp_path)
    second.process([frames[0]])  # raw frames are summarised by the sink itself
    assert second.summary()["frames"] == 6 and second.redeliveries == 1
    assert len(second.thumbnails) == 6
    second.close()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["streams"]["a.b"]["frames"] == 5
    assert (tmp_path / "contact_sheet.png").exists()
    assert len(list((tmp_path / "frames").glob("*.json"))) == 6
    assert not list((tmp_path / "frames").glob("*tmp*"))


def test_thumbnail_keeps_aspect_and_identity():
    f = Frame.from_image(random_image(90, 160), "cam", 3)
    s = summarize_frame(f, width=80)
    assert (s.frame_id, s.width, s.height) == (f.frame_id, 160, 90)
    from vistream.stages.records import decode_image

    assert decode_image(s.thumbnail.tobytes()).shape == (45, 80, 3)
