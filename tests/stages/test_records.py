"""The typed records stages exchange: identity, lazy images, image checks, result kinds.
Their bytes on the bus are tested in tests/pipeline/test_wire.py."""

import dataclasses

import numpy as np
import pytest

from vistream.stages.records import (
    JPEG,
    PNG,
    Features,
    Frame,
    InvalidRecord,
    Result,
    Tracks,
    check_image_bytes,
    decode_image,
    make_frame_id,
    result_type,
)
from tests.conftest import make_frame, random_image


def test_frame_from_image_keeps_identity_and_pixels():
    img = random_image(40, 60, 3)
    f = Frame.from_image(img, "cam-7", 42, timestamp_ms=1700, content_type=PNG)
    assert (f.frame_id, f.stream_id, f.seq, f.timestamp_ms, f.content_type) == (
        "cam-7:00000042", "cam-7", 42, 1700, PNG)
    assert f.frame_id == make_frame_id("cam-7", 42)
    assert np.array_equal(f.image, img), "PNG is lossless"
    assert f.image is f.image, "decoded once"


def test_records_carry_no_bus_position():
    for cls in (Frame, Result, Features, Tracks):
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & {"topic", "partition", "offset", "origin"}
        assert not hasattr(cls, "origin")


def test_result_kinds_are_found_by_name():
    assert result_type("tracks") is Tracks and result_type("features") is Features

    @dataclasses.dataclass(eq=False)
    class Probe(Result):
        kind = "test_records_probe"
        value: int = 0

    assert result_type("test_records_probe") is Probe
    with pytest.raises(KeyError):
        result_type("no-such-kind")


@pytest.mark.parametrize("data, content_type, reason", [
    (b"", JPEG, "empty value"),
    (None, JPEG, "empty value"),
    (b"\xff\xd8\xff" + b"x" * 100 + b"\xff\xd9", JPEG, "oversized"),
    (b"GIF89a....", "image/gif", "unsupported content type 'image/gif'"),
    (b"\x89PNG\r\n\x1a\n....", JPEG, "does not match the data"),
    (b"\xff\xd8\xff....", JPEG, "truncated JPEG"),
    (b"\x89PNG\r\n\x1a\n....", PNG, "truncated PNG"),
])
def test_image_checks_say_why(data, content_type, reason):
    with pytest.raises(InvalidRecord, match=reason):
        check_image_bytes(data, content_type, max_bytes=64)


def test_a_good_image_passes_and_garbage_does_not_decode():
    check_image_bytes(make_frame(1).data, JPEG)
    with pytest.raises(InvalidRecord, match="could not be decoded"):
        decode_image(b"\xff\xd8\xff not really a jpeg \xff\xd9")
