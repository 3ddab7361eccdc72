"""The wire format: how the records of :mod:`vistream.stages.records` travel on the bus.

A *frame record* (DESIGN.md, "Data flow"):

* key    = stream id, so one stream stays ordered on one partition;
* value  = the encoded image (JPEG by default, PNG for lossless);
* headers = ``frame_id``, ``stream_id``, ``seq``, ``ts_ms`` (capture time, ms since the
  epoch), ``content_type`` and ``schema``.

A record with no headers at all (a JPEG sent by kcat or a bare client) is still a valid
frame: its id is ``topic/partition/offset``, its stream is the key (or the topic), its
content type is sniffed from the magic bytes and its time is the record timestamp.

A *result record* keeps the frame id in its headers. Its value is a compact self-describing
binary: one JSON line (kind, scalar fields, array table) followed by the raw array bytes. JSON
alone would blow a 512-d float vector up ~4x; pickle is unsafe to load.

Decoding raises :class:`~vistream.stages.records.InvalidRecord` whose message is the reason
that ends up in the dead-letter topic. Positions (topic, partition, offset) stay on the bus
:class:`Record`: the decoded message does not carry them, the runner keeps them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vistream.stages.records import (
    MAX_FRAME_BYTES,
    Frame,
    InvalidRecord,
    Message,
    Result,
    check_image_bytes,
    result_type,
    sniff_content_type,
)

SCHEMA_VERSION = 1
RESULT_CONTENT_TYPE_PREFIX = "application/x-vistream-"

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Record:
    """One record as the bus delivers it, backend independent."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def source_id(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to produce: what a message turns into before it reaches a producer."""

    key: bytes | None
    value: bytes
    headers: Headers


def _str_header(record: Record, name: str) -> str | None:
    raw = record.header(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord(f"header {name!r} is not UTF-8") from None


def _int_header(record: Record, name: str) -> int | None:
    text = _str_header(record, name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidRecord(f"header {name!r} is not an integer: {text!r}") from None


# --------------------------------------------------------------------------- frames


def frame_to_record(frame: Frame) -> OutRecord:
    headers: Headers = [
        ("frame_id", frame.frame_id.encode()),
        ("stream_id", frame.stream_id.encode()),
        ("seq", str(frame.seq).encode()),
        ("ts_ms", str(frame.timestamp_ms).encode()),
        ("content_type", frame.content_type.encode()),
        ("schema", str(SCHEMA_VERSION).encode()),
    ]
    return OutRecord(key=frame.stream_id.encode(), value=frame.data, headers=headers)


def _bare_frame(record: Record, max_bytes: int) -> Frame:
    """A record with no headers (kcat, a plain client): everything comes from the record."""
    data = record.value or b""
    content_type = sniff_content_type(data) if data else None
    if data and content_type is None:
        raise InvalidRecord(f"record has no headers and its value ({len(data)} bytes) "
                            "is neither JPEG nor PNG")
    check_image_bytes(data, content_type or "", max_bytes)
    stream = record.key.decode("utf-8", "replace") if record.key else record.topic
    return Frame(frame_id=record.source_id, stream_id=stream, seq=record.offset,
                 timestamp_ms=record.timestamp_ms, data=data,
                 content_type=content_type)  # type: ignore[arg-type]


def frame_from_record(record: Record, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    if not record.headers:
        return _bare_frame(record, max_bytes)
    data = record.value or b""
    schema = _int_header(record, "schema")
    if schema is not None and schema > SCHEMA_VERSION:
        raise InvalidRecord(f"schema version {schema} is newer than supported {SCHEMA_VERSION}")
    content_type = _str_header(record, "content_type") or sniff_content_type(data) or "missing"
    if content_type.startswith(RESULT_CONTENT_TYPE_PREFIX):
        raise InvalidRecord(f"wrong content type {content_type!r}: expected a frame (JPEG/PNG)")
    check_image_bytes(data, content_type, max_bytes)
    stream = _str_header(record, "stream_id") or (
        record.key.decode("utf-8", "replace") if record.key else record.topic
    )
    seq = _int_header(record, "seq")
    ts = _int_header(record, "ts_ms")
    return Frame(
        frame_id=_str_header(record, "frame_id") or record.source_id,
        stream_id=stream,
        seq=record.offset if seq is None else seq,
        timestamp_ms=record.timestamp_ms if ts is None else ts,
        data=data,
        content_type=content_type,
    )


# --------------------------------------------------------------------------- results


def result_content_type(kind: str) -> str:
    return RESULT_CONTENT_TYPE_PREFIX + kind


def result_to_bytes(result: Result) -> bytes:
    scalars: dict[str, Any] = {}
    arrays: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for f in dataclasses.fields(result):
        v = getattr(result, f.name)
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            arrays.append({"name": f.name, "dtype": a.dtype.str, "shape": list(a.shape)})
            blobs.append(a.tobytes())
        else:
            scalars[f.name] = v
    head = {"kind": result.kind, "schema": SCHEMA_VERSION, "fields": scalars, "arrays": arrays}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + b"".join(blobs)


def _read_arrays(specs: list[dict[str, Any]], body: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pos = 0
    for spec in specs:
        dtype = np.dtype(spec["dtype"])
        if dtype.hasobject:
            raise InvalidRecord("object arrays are not allowed")
        n = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
        if pos + n > len(body):
            raise InvalidRecord(f"result record truncated in array {spec['name']!r}")
        out[spec["name"]] = np.frombuffer(body, dtype, count=n // max(dtype.itemsize, 1),
                                          offset=pos).reshape(spec["shape"]).copy()
        pos += n
    return out


def result_from_bytes(data: bytes | None) -> Result:
    if not data:
        raise InvalidRecord("empty value: a result record must carry a payload")
    head_raw, sep, body = data.partition(b"\n")
    if not sep:
        raise InvalidRecord("result record has no header line")
    try:
        head = json.loads(head_raw)
        kind = head["kind"]
        cls = result_type(kind)
    except (ValueError, KeyError, TypeError):
        raise InvalidRecord("result record header is not a known vistream result") from None
    try:
        kwargs = dict(head.get("fields", {}))
        kwargs.update(_read_arrays(head.get("arrays", []), body))
        return cls(**kwargs)
    except InvalidRecord:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise InvalidRecord(f"malformed {kind} record: {exc}") from None


def result_to_record(result: Result) -> OutRecord:
    headers: Headers = [
        ("frame_id", result.frame_id.encode()),
        ("stream_id", result.stream_id.encode()),
        ("content_type", result_content_type(result.kind).encode()),
        ("schema", str(SCHEMA_VERSION).encode()),
    ]
    return OutRecord(key=result.stream_id.encode(), value=result_to_bytes(result),
                     headers=headers)


def result_from_record(record: Record, expected: type[Result] = Result) -> Result:
    """The result a record carries; InvalidRecord unless it is an ``expected`` one."""
    ctype = _str_header(record, "content_type")
    if ctype is not None and not ctype.startswith(RESULT_CONTENT_TYPE_PREFIX):
        raise InvalidRecord(f"wrong content type {ctype!r}: expected a vistream result record")
    result = result_from_bytes(record.value)
    if expected is not Result and not isinstance(result, expected):
        raise InvalidRecord(f"expected a {expected.kind} record, got {result.kind}")
    return result


# --------------------------------------------------------------------------- either


def encode_message(msg: Message) -> OutRecord:
    """The record to produce for a frame or a result."""
    if isinstance(msg, Frame):
        return frame_to_record(msg)
    return result_to_record(msg)


def decode_message(record: Record, accept: tuple[str, ...] = ("frame",),
                   max_frame_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Turn a bus record into a Frame or a Result, or raise InvalidRecord with the reason.

    ``accept`` lists the kinds the consuming stage understands ("frame", "tracks", ...,
    or "*" for any).
    """
    ctype = _str_header(record, "content_type") if record.headers else None
    if ctype is not None and ctype.startswith(RESULT_CONTENT_TYPE_PREFIX):
        msg: Message = result_from_record(record)
    else:
        msg = frame_from_record(record, max_frame_bytes)
    if "*" not in accept and msg.kind not in accept:
        raise InvalidRecord(f"unexpected record kind {msg.kind!r}: this stage takes {list(accept)}")
    return msg
