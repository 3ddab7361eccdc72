"""The wire format: frames and results to bus records and back, and the reasons a record is
refused."""

import numpy as np
import pytest

from vistream.pipeline.wire import (
    Record,
    decode_message,
    encode_message,
    frame_to_record,
    result_to_bytes,
)
from vistream.stages.records import (
    PNG,
    Caption,
    Codes,
    Features,
    Frame,
    InvalidRecord,
    Label,
    Result,
    Tracks,
)
from tests.conftest import make_frame, random_image


def as_record(out, topic="t", partition=0, offset=0) -> Record:
    return Record(topic, partition, offset, out.key, out.value, tuple(out.headers), 123)


def test_frame_round_trip_keeps_identity_and_pixels():
    img = random_image(40, 60, 3)
    f = Frame.from_image(img, "cam-7", 42, timestamp_ms=1700, content_type=PNG)
    back = decode_message(as_record(encode_message(f)))
    assert isinstance(back, Frame)
    assert (back.frame_id, back.stream_id, back.seq, back.timestamp_ms) == (
        "cam-7:00000042", "cam-7", 42, 1700)
    assert np.array_equal(back.image, img), "PNG is lossless"
    assert frame_to_record(f).key == b"cam-7"


def test_headerless_jpeg_gets_identity_from_the_record():
    raw = make_frame(0).data
    f = decode_message(Record("frames", 3, 99, None, raw, (), 555))
    assert (f.frame_id, f.stream_id, f.seq, f.timestamp_ms, f.content_type) == (
        "frames/3/99", "frames", 99, 555, "image/jpeg")
    assert f.image.shape == (36, 64, 3)


def test_decoded_messages_carry_no_bus_position():
    rec = as_record(encode_message(make_frame(3)), topic="frames", partition=2, offset=41)
    msg = decode_message(rec)
    assert not hasattr(msg, "origin")
    assert rec.source_id == "frames/2/41"


@pytest.mark.parametrize("result", [
    Tracks("f1", "s", boxes=np.array([[1, 2, 3, 4]], np.float32), track_ids=np.array([7]),
           scores=np.array([0.9], np.float32)),
    Caption("f2", "s", text="a small boat near the shore"),
    Features("f3", "s", vector=np.linspace(0, 1, 512, dtype=np.float32), model_id="r18@abc",
             label=3),
    Codes("f4", "s", code=np.arange(8, dtype=np.uint8), model_version=5),
    Label("f5", "s", label=9),
])
def test_results_round_trip(result: Result):
    back = decode_message(as_record(encode_message(result)), accept=("*",))
    assert type(back) is type(result)
    for name, value in vars(result).items():
        got = getattr(back, name)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value)
        else:
            assert got == value


def test_feature_record_is_compact():
    feats = Features("f", "s", vector=np.zeros(512, np.float32), model_id="m")
    assert len(result_to_bytes(feats)) < 512 * 4 + 300


@pytest.mark.parametrize("mutate, reason", [
    (lambda r: (r.value[:-40], r.headers), "truncated JPEG"),
    (lambda r: (b"", r.headers), "empty value"),
    (lambda r: (b"GIF89a....", [(k, v) for k, v in r.headers if k != "content_type"]),
     "content type"),
    (lambda r: (r.value, [(k, b"video/mp4" if k == "content_type" else v) for k, v in r.headers]),
     "unsupported content type 'video/mp4'"),
    (lambda r: (r.value, [(k, b"x" if k == "seq" else v) for k, v in r.headers]),
     "header 'seq' is not an integer"),
    (lambda r: (r.value, [(k, b"99" if k == "schema" else v) for k, v in r.headers]),
     "schema version 99"),
])
def test_invalid_frames_say_why(mutate, reason):
    out = encode_message(make_frame(1))
    value, headers = mutate(out)
    with pytest.raises(InvalidRecord, match=reason):
        decode_message(Record("t", 0, 0, out.key, value, tuple(headers)))


def test_oversized_frame_is_refused():
    out = encode_message(make_frame(1))
    with pytest.raises(InvalidRecord, match="oversized"):
        decode_message(as_record(out), max_frame_bytes=len(out.value) - 1)


def test_malformed_result_payloads():
    good = encode_message(Features("f", "s", vector=np.ones(16, np.float32)))
    truncated = Record("t", 0, 0, good.key, good.value[:-8], tuple(good.headers))
    with pytest.raises(InvalidRecord, match="truncated"):
        decode_message(truncated, accept=("*",))
    junk = Record("t", 0, 0, None, b"{not json}\n", tuple(good.headers))
    with pytest.raises(InvalidRecord, match="not a known vistream result"):
        decode_message(junk, accept=("*",))
    with pytest.raises(InvalidRecord, match="this stage takes"):
        decode_message(as_record(good), accept=("frame",))
