"""The typed records stages exchange: identity, lazy images, image checks, result kinds.
Their bytes on the bus are tested in tests/pipeline/test_wire.py."""

import dataclasses
import struct
import zlib

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


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    ihdr = struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00"
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def test_pixel_bombs_are_refused_from_the_header_with_a_reason_of_ours():
    with pytest.raises(InvalidRecord, match=r"^too_many_pixels: 60000 x 60000 = 3600000000 pixels"):
        check_image_bytes(_png_claiming(60000, 60000), PNG)
    with pytest.raises(InvalidRecord, match=r"^no_pixels: the image header says 0 x 5"):
        check_image_bytes(_png_claiming(0, 5), PNG)
    with pytest.raises(InvalidRecord, match=r"^too_many_pixels"):
        check_image_bytes(_png_claiming(101, 100), PNG, max_pixels=100 * 100)
    check_image_bytes(_png_claiming(100, 100), PNG, max_pixels=100 * 100)  # at the limit: taken


def test_a_jpeg_without_a_frame_header_is_refused():
    # start and end markers but no SOF segment: nothing says how big it is
    with pytest.raises(InvalidRecord, match=r"^unreadable_size"):
        check_image_bytes(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xd9", JPEG)
    frame = make_frame(seq=0)
    check_image_bytes(frame.data, frame.content_type)  # a real JPEG passes
