"""The detect stage: movers of a seeded shaky sequence become track_init detections (target id
-1), which the track stage turns into targets with stable ids."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vistream.models.data import TrackingSpec, render
from vistream.pipeline.wire import Record, decode_message, encode_message
from vistream.stages.base import get_stage_class
from vistream.stages.detect import DetectParams, DetectStage
from vistream.stages.records import PNG, Frame, TrackInit
from vistream.stages.track import TrackParams, TrackStage, TrackState

SEQ = None


def sequence():
    """640x480, three vivid targets, a camera jump (rendered once)."""
    global SEQ
    if SEQ is None:
        SEQ = render(TrackingSpec(name="detect", seed=7, n_frames=50, n_targets=3, shake=2,
                                  shake_px=(40, 70), styles=("vivid", "bright", "dark"),
                                  target_size=(8, 20), target_speed=(1.0, 2.5),
                                  noise_sigma=3.0, background="astronaut"))
    return SEQ


def frames(stream="cam"):
    seq = sequence()
    return [Frame.from_image(seq.frames[t], stream, t, timestamp_ms=t, content_type=PNG)
            for t in range(seq.n_frames)]


def near_target(box, t, tol=10.0):
    """Index of the ground-truth target whose centre is within tol (or its size) of box."""
    seq = sequence()
    c = box[:2] + box[2:] / 2
    for i in range(seq.n_targets):
        g = seq.boxes[t, i]
        if seq.visible[t, i] and np.hypot(*(c - g[:2] - g[2:] / 2)) <= max(tol, g[2:].max()):
            return i
    return None


def test_announces_each_mover_as_a_detection():
    stage = DetectStage()
    stage.setup()
    fr = frames()
    outs = stage.process(fr)
    assert outs and all(isinstance(o, TrackInit) for o in outs)
    found, wrong = set(), 0
    for o in outs:
        assert (o.target_ids == -1).all() and o.stream_id == "cam"
        t = int(o.seq)
        assert o.frame_id == fr[t].frame_id
        for box in o.boxes:
            i = near_target(box, t)
            if i is None:
                wrong += 1
            else:
                found.add(i)
    assert found == {0, 1, 2}, found
    total = sum(len(o.boxes) for o in outs)
    assert wrong <= 0.2 * total, (wrong, total)
    # announced once, then again only after reannounce_frames: few records for 50 frames
    assert total <= 3 * 3 + 3, total


def test_covered_movers_are_not_announced_and_redelivery_is_idempotent():
    seq = sequence()
    stage = DetectStage(DetectParams(reannounce_frames=5))
    fr = frames()
    out = []
    for t, f in enumerate(fr):
        # the track stage's state says every target is tracked
        state = TrackState(frame_id=f.frame_id, stream_id="cam", seq=t,
                           target_ids=np.arange(3), boxes=seq.boxes[t].astype(np.float32),
                           scores=np.ones(3, np.float32), lost=np.zeros(3, bool))
        out += stage.process([state, f])
    assert sum(len(o.boxes) for o in out) <= 2  # at most a stray blob
    again = stage.process(fr[-3:])
    assert stage.redeliveries == 3 and again == [o for o in out if o.seq >= len(fr) - 3]


def test_detect_then_track_gives_stable_ids():
    det = DetectStage()
    track = TrackStage(TrackParams(max_lost=20))
    ids_of: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for f in frames():
        inits = det.process([f])
        states = track.process(inits + [f])  # the detection of a frame arrives with it
        for s in states:
            for tid, box, lost in zip(s.target_ids, s.boxes, s.lost):
                i = None if lost else near_target(box, s.seq)
                if i is not None:
                    ids_of[i].add(int(tid))
    assert all(len(v) == 1 for v in ids_of.values()), ids_of
    assert len(set().union(*ids_of.values())) == 3


def test_late_detection_applies_on_its_own_frame():
    # the track stage runs ahead: the detections of frame t arrive after frame t + 3
    # (the strict confirmation, so that the first record holds all three movers)
    det = DetectStage(DetectParams(discovery={"early_refs": False, "strong_k": 0}))
    track = TrackStage(TrackParams(buffer_frames=8))
    fr = frames()
    inits = [i for f in fr[:20] for i in det.process([f])]
    first = inits[0]
    assert first.seq <= 12 and len(first.boxes) == 3
    track.process(fr[:first.seq + 4])
    assert track.process([first]) == []
    states = track.process(fr[first.seq + 4:first.seq + 10])
    for s in states:  # started on the detection's frame, caught up, tracked since
        hits = {near_target(b, s.seq) for b, lost in zip(s.boxes, s.lost) if not lost}
        assert hits >= {0, 1, 2}, (s.seq, hits)
    # the same detections again (redelivered): covered in their frame, nothing new
    n = len(track.streams["cam"].multi.tracks)
    track.process([first])
    assert len(track.streams["cam"].multi.tracks) == n


def test_wire_round_trip_and_registration():
    init = TrackInit(frame_id="cam:00000003", stream_id="cam", seq=3,
                     boxes=np.array([[1, 2, 3, 4]], np.float32), target_ids=[-1])
    out = encode_message(init)
    back = decode_message(Record("t", 0, 0, out.key, out.value, tuple(out.headers)),
                          accept=("track_init",))
    assert back.target_ids.tolist() == [-1] and back.seq == 3
    assert get_stage_class("detect") is DetectStage
    assert DetectStage.emits == ("track_init",)
    with pytest.raises(ValidationError):
        DetectParams.model_validate({"discovery": {"no_such": 1}})


def test_detect_and_track_through_runners_on_the_memory_bus():
    import threading
    import time

    from vistream.pipeline.bus import TopicSpec
    from vistream.pipeline.bus.memory import MemoryBus
    from vistream.pipeline.runner import StageRunner

    bus = MemoryBus()
    bus.create_topics([TopicSpec(t, 1) for t in ("frames", "inits", "states")])
    detect = StageRunner(DetectStage(), bus, ["frames"], {"track_init": "inits"},
                         batch_size=4, poll_timeout=0.05)
    track = StageRunner(TrackStage(TrackParams(buffer_frames=16)), bus, ["frames", "inits"],
                        {"track_state": "states"}, batch_size=4, poll_timeout=0.05)
    with bus.producer() as prod:
        for f in frames():
            r = encode_message(f)
            prod.send("frames", r.value, r.key, r.headers)
        prod.flush()
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,), kwargs={"idle_timeout": 1.0})
               for r in (detect, track)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    assert detect.stats.dead_lettered == 0 and track.stats.dead_lettered == 0
    states = []
    with bus.consumer(["states"], "check") as c:
        deadline = time.time() + 5
        while time.time() < deadline:
            got = c.poll(100, 0.2)
            if not got and states:
                break
            states += [decode_message(r, accept=("track_state",)) for r in got]
    last = max(states, key=lambda s: s.seq)
    assert last.seq == 49
    found = {near_target(b, 49) for b, lost in zip(last.boxes, last.lost) if not lost}
    visible = set(np.flatnonzero(sequence().visible[49]).tolist())
    assert len(visible) >= 2 and visible <= found, (found, visible, last.boxes)
    assert len(set(last.target_ids.tolist())) == len(last.target_ids) <= 4


def test_a_malformed_init_is_refused_on_arrival_not_with_its_frame():
    track = TrackStage()
    fr = frames()
    for bad in ([[1, 2, float("nan"), 4]], [[1, 2, 0, 4]], [[1, 2, 5, -1]]):
        with pytest.raises(ValueError):
            track.process([TrackInit(frame_id=fr[1].frame_id, stream_id="cam", seq=1,
                                     boxes=bad, target_ids=[-1])])
    assert track.process(fr[:3]) == []  # the frames go on, nothing was queued


def test_sooner_discovery_settings_are_accepted_and_checked():
    # issue 23: the settings that find targets sooner can be set (or switched off) per stage
    params = DetectParams(discovery={"strong_k": 0, "early_refs": False,
                                     "settle_after_jump": False, "strong_ratio": 3.0})
    stage = DetectStage(params)
    stage.setup()
    det = stage._make()
    assert det.p.strong_k == 0 and det.p.early_refs is False and det.p.strong_ratio == 3.0
    with pytest.raises(ValidationError, match="strong_kk"):
        DetectParams(discovery={"strong_kk": 2})


def test_a_mover_present_from_the_first_frame_is_announced_sooner_by_default():
    # issue 23: early references and strong blobs; the old behaviour (off) announces later
    def first_announcement(discovery):
        stage = DetectStage(DetectParams(discovery=discovery))
        stage.setup()
        seqs = [int(o.seq) for o in stage.process(frames()) if isinstance(o, TrackInit)]
        return min(seqs)

    new = first_announcement({})
    old = first_announcement({"early_refs": False, "strong_k": 0})
    assert new < old, (new, old)
    assert new <= 4, new


@pytest.mark.parametrize("every", [True, False])
def test_every_frame_sends_one_record_per_frame_and_every_mover(every):
    fr = frames()[:20]
    det = DetectStage(DetectParams(reannounce_frames=1, every_frame=every))
    out = [det.process([f]) for f in fr]
    if every:  # one record a frame, empty before anything is confirmed
        assert all(len(o) == 1 for o in out) and len(out[0][0].boxes) == 0
    else:  # records only for frames with movers
        assert sum(map(len, out)) < len(fr) and not out[0]
    # reannounce_frames 1: the movers of every frame, not only the new ones
    counts = [len(o[0].boxes) if o else 0 for o in out]
    assert min(counts[-5:]) >= 2, counts  # the same movers again, frame after frame
