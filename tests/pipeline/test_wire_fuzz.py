"""The wire parser under random input (hypothesis): whatever bytes and headers a foreign client
sends, decoding a record either gives a message or raises our InvalidRecord with a reason;
no other exception ever comes out (the runner dead-letters InvalidRecord and goes on).

10,000 cases in all, seeded (derandomized) so a failure reproduces."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vistream.pipeline.wire import Record, decode_message
from vistream.stages.records import InvalidRecord
from tests.conftest import make_frame

FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
HEADER_NAMES = st.sampled_from(["frame_id", "stream_id", "seq", "ts_ms", "content_type", "schema",
                                "x-other"])
HEADER_VALUES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"image/jpeg", b"image/png", b"application/x-vistream-features",
                     b"application/x-vistream-tracks", b"99", b"-1", b"1", b"\xff\xfe"]))
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=7).map(tuple)
VALID_JPEG = make_frame(seq=1).data


def _decode_all_or_invalid(value: bytes | None, headers, key: bytes | None = b"cam") -> None:
    record = Record("frames", 0, 7, key, value, headers, 1_700_000_000_000)
    try:
        msg = decode_message(record, accept=("*",))
    except InvalidRecord as exc:
        assert str(exc)  # a reason for the dead-letter topic
        return
    if msg.kind == "frame":
        try:
            assert msg.image.ndim == 3  # the lazy decode keeps to the same contract
        except InvalidRecord:
            pass


@settings(FUZZ, max_examples=3000)
@given(value=st.one_of(st.none(), st.binary(max_size=300)), headers=HEADERS)
def test_random_bytes_and_headers(value, headers):
    _decode_all_or_invalid(value, headers)


@settings(FUZZ, max_examples=3000)
@given(cut=st.one_of(st.none(), st.integers(0, len(VALID_JPEG))), flips=st.lists(
    st.tuples(st.integers(0, len(VALID_JPEG) - 1), st.integers(0, 255)), max_size=8),
    headers=st.one_of(st.just(()), HEADERS))
def test_damaged_real_jpegs(cut, flips, headers):
    """A real frame, cut short or not, with a few bytes overwritten."""
    data = bytearray(VALID_JPEG if cut is None else VALID_JPEG[:cut])
    for pos, byte in flips:
        if pos < len(data):
            data[pos] = byte
    _decode_all_or_invalid(bytes(data), headers)


RESULT_HEAD = st.fixed_dictionaries({
    "kind": st.sampled_from(["features", "tracks", "caption", "label", "codes", "nope", ""]),
    "schema": st.integers(-2, 3),
    "fields": st.dictionaries(st.sampled_from(["frame_id", "stream_id", "text", "label", "x"]),
                              st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=4),
    "arrays": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["vector", "boxes", "code", "zzz"]),
        "dtype": st.sampled_from(["<f4", "<i8", "|u1", "|O", "bogus"]),
        "shape": st.lists(st.integers(-3, 6), max_size=3)}), max_size=3),
})


@settings(FUZZ, max_examples=4000)
@given(head=RESULT_HEAD, body=st.binary(max_size=200))
def test_random_result_records(head, body):
    value = json.dumps(head).encode() + b"\n" + body
    headers = (("content_type", b"application/x-vistream-" + head["kind"].encode()),
               ("frame_id", b"f"), ("stream_id", b"s"))
    _decode_all_or_invalid(value, headers)
