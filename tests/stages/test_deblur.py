"""The deblur stage: gate, byte-identical pass-through, deblurring + captions, the runner."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vistream.models.data.blur import VOCAB, make_sample
from vistream.models.deblur.evaluate import psnr
from vistream.pipeline.bus import TopicSpec, make_bus
from vistream.pipeline.runner import StageRunner
from vistream.pipeline.wire import Record, decode_message, encode_message
from vistream.stages.base import create_stage
from vistream.stages.deblur import DEFAULT_WEIGHTS, DeblurParams, DeblurStage, blur_score
from vistream.stages.records import JPEG, PNG, Caption, Frame

STAGE = None


def stage() -> DeblurStage:
    global STAGE  # one loaded model for the module; counters are reset per test
    if STAGE is None:
        STAGE = DeblurStage(DeblurParams(batch_size=4))
        STAGE.setup()
    STAGE.passed = STAGE.deblurred = 0
    return STAGE


def bgr(img: np.ndarray) -> np.ndarray:
    return (img[..., ::-1] * 255).round().astype(np.uint8)


def frame(img: np.ndarray, seq: int, content_type: str = PNG) -> Frame:
    return Frame.from_image(bgr(img), "cam", seq, timestamp_ms=1000 + seq, content_type=content_type)


def test_gate_separates_sharp_from_severely_blurred_frames():
    import cv2

    ok = 0
    for i in range(20):
        s = make_sample(900 + i, "severe", 320, 240)
        ok += blur_score(cv2.cvtColor(bgr(s.sharp), cv2.COLOR_BGR2GRAY)) >= DeblurParams().threshold
        ok += blur_score(cv2.cvtColor(bgr(s.blurred), cv2.COLOR_BGR2GRAY)) < DeblurParams().threshold
    assert ok >= 36  # >= 90% of 40 decisions
    assert blur_score(np.full((50, 50), 128, np.uint8)) == float("inf")  # flat: nothing to deblur


def test_sharp_frames_pass_through_byte_identical():
    st = stage()
    frames = [frame(make_sample(10 + i, "severe", 320, 240).sharp, i, JPEG) for i in range(3)]
    data = [bytes(f.data) for f in frames]
    out = st.process(frames)
    assert [type(m) for m in out] == [Frame] * 3  # no caption records for sharp frames
    assert all(o is f and o.data == d for o, f, d in zip(out, frames, data))
    assert st.passed == 3 and st.deblurred == 0


def test_blurred_frame_is_deblurred_and_captioned():
    st = stage()
    s = make_sample(2, "severe", 320, 240)
    sharp_in = frame(make_sample(12, "severe", 320, 240).sharp, 0)
    blurred_in = frame(s.blurred, 1)
    out = st.process([sharp_in, blurred_in])
    frames = [m for m in out if isinstance(m, Frame)]
    caps = [m for m in out if isinstance(m, Caption)]
    assert frames[0] is sharp_in and st.passed == 1 and st.deblurred == 1
    deb = frames[1]
    assert (deb.frame_id, deb.seq, deb.timestamp_ms, deb.content_type) == (
        blurred_in.frame_id, 1, 1001, PNG)
    assert deb is not blurred_in and deb.image.shape == (240, 320, 3)
    assert len(caps) == 1 and caps[0].frame_id == blurred_in.frame_id
    assert all(w in VOCAB for w in caps[0].text.split())
    assert DEFAULT_WEIGHTS.exists()  # the package ships a trained model, and it really deblurs
    assert caps[0].text and deb.data != blurred_in.data
    samples = [make_sample(seed, "severe", 320, 240) for seed in range(2, 10)]
    out = stage().process([frame(x.blurred, i) for i, x in enumerate(samples)])
    gains = [psnr(x.sharp, o.image[..., ::-1].astype(np.float32) / 255) - psnr(x.sharp, x.blurred)
             for x, o in zip(samples, out[:8])]
    assert np.mean(gains) > 1.0  # measured +2.10 dB with the shipped medium weights (+1.63 small)


def test_mirror_ensemble_stage_deblurs_with_both_views():
    samples = [make_sample(seed, "severe", 320, 240) for seed in range(2, 6)]
    single = stage().process([frame(x.blurred, i) for i, x in enumerate(samples)])
    st = DeblurStage(DeblurParams(batch_size=4, mirror_ensemble=True))
    st.setup()
    both = st.process([frame(x.blurred, i) for i, x in enumerate(samples)])
    assert st.deblurred == 4 and all(isinstance(m, Frame) for m in both[:4])
    assert [c.text for c in both[4:]] == [c.text for c in single[4:]]  # captions of the frames as sent
    assert any(a.data != b.data for a, b in zip(single[:4], both[:4]))


def test_large_frames_keep_their_size():
    st = stage()
    import cv2

    s = make_sample(5, "severe", 320, 240)  # blurred at the processing scale, shown at 640x480
    big = cv2.resize(s.blurred, (640, 480), interpolation=cv2.INTER_LINEAR)
    out = st.process([frame(big, 0, JPEG)])
    assert out[0].image.shape == (480, 640, 3) and st.deblurred == 1


def test_runner_routes_outputs_and_dead_letters_bad_frames():
    bus = make_bus("memory")
    bus.create_topics([TopicSpec(t, 1) for t in ("frames", "frames.dlq", "clean", "captions")])
    good = [frame(make_sample(20, "severe", 160, 120).sharp, 0, JPEG),
            frame(make_sample(21, "severe", 160, 120).blurred, 1, JPEG)]
    truncated = Frame("cam:bad1", "cam", 2, 0, good[0].data[: len(good[0].data) // 2], JPEG)
    garbage = Frame("cam:bad2", "cam", 3, 0, b"\xff\xd8\xff" + b"\x00junk" * 40 + b"\xff\xd9", JPEG)
    with bus.producer() as p:
        for m in (good[0], truncated, garbage, good[1]):
            r = encode_message(m)
            p.send("frames", r.value, r.key, r.headers)
        p.flush()
    st = create_stage("deblur", {"batch_size": 4})
    runner = StageRunner(st, bus, ["frames"], {"frame": "clean", "caption": "captions"},
                         batch_size=8, poll_timeout=0.05)
    runner.run(threading.Event(), idle_timeout=0.3)
    assert runner.stats.dead_lettered == 2

    def read(topic, accept):
        with bus.consumer([topic], f"reader-{topic}") as c:
            recs = c.poll(100, 1.0)
        return [decode_message(Record(r.topic, r.partition, r.offset, r.key, r.value, r.headers),
                               accept=accept) for r in recs]

    clean = read("clean", ("frame",))
    assert [f.frame_id for f in clean] == [good[0].frame_id, good[1].frame_id]
    assert clean[0].data == good[0].data and clean[1].data != good[1].data
    assert [c.frame_id for c in read("captions", ("caption",))] == [good[1].frame_id]
    with bus.consumer(["frames.dlq"], "dlq") as c:
        reasons = sorted(dict(r.headers)["dlq_reason"].decode() for r in c.poll(100, 1.0))
    # the garbage JPEG has no frame header: refused from it, before any decoding
    assert any("truncated" in r for r in reasons) and any("unreadable_size" in r for r in reasons)


def test_params_are_validated():
    with pytest.raises(ValueError):
        DeblurParams(threshold=-1)
    with pytest.raises(ValueError):
        DeblurParams(unknown=1)
    st = DeblurStage(DeblurParams(weights="/nonexistent.safetensors"))
    with pytest.raises(FileNotFoundError):
        st.setup()
