"""Annotate stage: frames + track records + captions -> annotated frames, whatever the order."""

from __future__ import annotations

import numpy as np
import pytest

from vistream.stages.annotate import AnnotateParams, AnnotateStage
from vistream.stages.base import create_stage, stage_types
from vistream.stages.records import Caption, Frame, Tracks
from vistream.stages.track import TrackState

H, W = 120, 160


def frame(seq: int, stream: str = "cam") -> Frame:
    img = np.full((H, W, 3), 90, np.uint8)
    return Frame.from_image(img, stream, seq, timestamp_ms=1000 + seq, content_type="image/png")


def state(seq: int, boxes, ids, lost=None, stream: str = "cam") -> TrackState:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return TrackState(f"{stream}:{seq:08d}", stream, seq=seq, boxes=boxes,
                      target_ids=np.asarray(ids, np.int64),
                      scores=np.ones(len(boxes), np.float32),
                      lost=np.zeros(len(boxes), bool) if lost is None else np.asarray(lost))


def stage(**kw) -> AnnotateStage:
    return AnnotateStage(AnnotateParams(**kw))


def changed(out: Frame) -> np.ndarray:
    """Mask of pixels the stage drew on (the input frames are flat grey 90)."""
    return np.abs(out.image.astype(int) - 90).sum(axis=2) > 30


def test_registered_and_validated():
    assert "annotate" in stage_types()
    with pytest.raises(ValueError):
        create_stage("annotate", {"max_wait": -1})
    with pytest.raises(ValueError):
        create_stage("annotate", {"colour": "red"})


def test_a_frame_waits_for_its_tracks_then_shows_the_box_and_id():
    st = stage()
    assert st.process([frame(0)]) == []  # waits for its track record
    out = st.process([state(0, [[40, 50, 20, 16]], [7])])
    assert [f.frame_id for f in out] == ["cam:00000000"]
    f = out[0]
    assert (f.stream_id, f.seq, f.timestamp_ms) == ("cam", 0, 1000)
    mask = changed(f)
    assert mask[50:66, 40].all() and mask[50, 40:60].all()  # the box's edges
    assert mask[:12, :60].any()  # the header line
    assert not mask[90:, 100:].any()  # nothing far from the box


def test_tracks_before_their_frame_wait_for_it():
    st = stage()
    assert st.process([state(3, [[10, 10, 12, 12]], [1])]) == []
    out = st.process([frame(3)])
    assert len(out) == 1 and changed(out[0])[8:25, 8].any()


def test_a_frame_with_no_track_record_is_released_by_a_later_one_or_by_max_wait():
    st = stage(max_wait=3)
    assert st.process([frame(0), frame(1)]) == []
    out = st.process([state(1, [[5, 5, 10, 10]], [2])])  # frame 0 will never get a record
    assert [f.seq for f in out] == [0, 1]
    st = stage(max_wait=3)
    out = []
    for k in range(5):
        out += st.process([frame(k)])
    assert [f.seq for f in out] == [0, 1]  # frames 3 and 4 came after them
    assert [f.seq for f in st.flush()] == [2, 3, 4]  # the stream has ended
    assert st.flush() == []


def test_late_inputs_redraw_a_frame_already_sent():
    st = stage(max_wait=1)
    st.process([frame(0)])
    first = st.process([frame(1)])  # frame 0 released without tracks
    assert [f.seq for f in first] == [0] and not changed(first[0])[30:, :].any()
    again = st.process([state(0, [[60, 60, 20, 20]], [4])])
    assert [f.seq for f in again] == [0] and changed(again[0])[60:80, 60].all()
    cap = st.process([Caption("cam:00000000", "cam", text="small red disc top left")])
    assert [f.seq for f in cap] == [0]
    assert changed(cap[0])[H - 20:, :].any()  # the caption line at the bottom
    assert st.summary()["redrawn"] == 2


def test_a_caption_stays_on_the_following_frames_and_lost_targets_are_grey():
    st = stage(caption_frames=2)
    out = st.process([frame(0), state(0, [[5, 5, 8, 8]], [1]),
                      Caption("cam:00000000", "cam", text="blurred frame")])
    for k in (1, 2, 3):
        out += st.process([frame(k), state(k, [[30, 30, 10, 10]], [1], lost=[True])])
    by_seq = {f.seq: f for f in out}
    assert set(by_seq) == {0, 1, 2, 3}
    bottom = [changed(by_seq[k])[H - 20:, :].any() for k in (0, 1, 2, 3)]
    assert bottom == [True, True, True, False]
    px = by_seq[1].image[28, 40].astype(int)  # the lost target's box edge
    assert abs(px[0] - px[1]) < 10 and abs(px[1] - px[2]) < 10  # grey


def test_plain_tracks_records_streams_and_bounded_caches():
    st = stage(cache_frames=4, max_wait=100)
    out = []
    for k in range(10):
        out += st.process([frame(k, "a"), frame(k, "b")])
    # nothing lost: frames leaving the bounded cache are drawn as they are
    assert sorted(f.seq for f in out if f.stream_id == "a") == list(range(6))
    assert all(len(s.frames) <= 4 for s in st.streams.values())
    tr = Tracks("a:00000009", "a", boxes=np.array([[1, 1, 5, 5]], np.float32),
                track_ids=np.array([3]), scores=np.ones(1, np.float32))
    out = st.process([tr])
    assert [f.frame_id for f in out] == ["a:00000006", "a:00000007", "a:00000008", "a:00000009"]


def test_redelivered_frames_come_out_identical():
    st = stage()
    a = st.process([frame(0), state(0, [[20, 20, 10, 10]], [5])])
    b = st.process([frame(0)])
    assert a[0].data == b[0].data and a[0].frame_id == b[0].frame_id
