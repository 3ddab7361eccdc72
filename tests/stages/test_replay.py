from vistream.stages.records import Caption
from vistream.stages.replay import FrameReplay
from tests.conftest import make_frame


def test_a_redelivered_frame_gets_its_first_outputs_and_an_old_one_nothing():
    replay = FrameReplay(keep=2)
    frames = [make_frame(seq) for seq in range(3)]
    for f in frames:
        assert replay.answer(f) is None  # new: the stage processes it
        replay.record(f, [Caption(f.frame_id, f.stream_id, text=f"c{f.seq}")])
    again = replay.answer(frames[2])
    assert [c.text for c in again] == ["c2"]
    assert replay.answer(frames[0]) == []  # forgotten (keep=2) and older than the last: skipped
    assert replay.answer(make_frame(3)) is None
