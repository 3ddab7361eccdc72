"""Envelopes: how frames and derived results travel on the bus.

A *frame record* (DESIGN.md, "Data flow"):

* key    = stream id, so one stream stays ordered on one partition;
* value  = the encoded image (JPEG by default, PNG for lossless);
* headers = ``frame_id``, ``stream_id``, ``seq``, ``ts_ms`` (capture time, ms since the
  epoch), ``content_type`` and ``schema``.

A record with no headers at all (a JPEG sent by kcat or a bare client) is still a valid
frame: its id is ``topic/partition/offset``, its stream is the key (or the topic), its
content type is sniffed from the magic bytes and its time is the record timestamp.

A *result record* (tracks, captions, features, codes, labels, ...) is a small typed record
that keeps the frame id, so every result joins back to its frame. Its value is a compact
self-describing binary: one JSON line (kind, scalar fields, array table) followed by the raw
array bytes. JSON alone would blow a 512-d float vector up ~4x; pickle is unsafe to load.

Validation raises :class:`InvalidRecord` whose message is the reason that ends up in the
dead-letter topic.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

SCHEMA_VERSION = 1
#: Frames larger than this are refused (the Kafka broker, producer and consumer are set to
#: accept 20 MiB records, so a 16 MiB frame plus headers always fits).
MAX_FRAME_BYTES = 16 * 1024 * 1024

JPEG = "image/jpeg"
PNG = "image/png"
FRAME_CONTENT_TYPES = (JPEG, PNG)
RESULT_CONTENT_TYPE_PREFIX = "application/x-vistream-"

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"

Headers = list[tuple[str, bytes]]


class InvalidRecord(ValueError):
    """A record that cannot be accepted; the message says why (it goes to the DLQ)."""


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


def now_ms() -> int:
    return int(time.time() * 1000)


def sniff_content_type(data: bytes) -> str | None:
    if data.startswith(_JPEG_SOI):
        return JPEG
    if data.startswith(_PNG_MAGIC):
        return PNG
    return None


def check_image_bytes(data: bytes | None, content_type: str, max_bytes: int = MAX_FRAME_BYTES) -> None:
    """Cheap structural checks that catch empty, oversized, mislabelled and truncated images.

    Truncation is checked by the end marker because OpenCV happily decodes the top part of a
    truncated JPEG and fills the rest with grey.
    """
    if not data:
        raise InvalidRecord("empty value: a frame record must carry an encoded image")
    if len(data) > max_bytes:
        raise InvalidRecord(f"oversized frame: {len(data)} bytes > limit {max_bytes}")
    if content_type not in FRAME_CONTENT_TYPES:
        raise InvalidRecord(
            f"unsupported content type {content_type!r}: frames must be one of {FRAME_CONTENT_TYPES}"
        )
    actual = sniff_content_type(data)
    if actual != content_type:
        raise InvalidRecord(
            f"content type {content_type!r} does not match the data "
            f"(looks like {actual or 'neither JPEG nor PNG'})"
        )
    if content_type == JPEG and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise InvalidRecord("truncated JPEG: no end-of-image marker")
    if content_type == PNG and not data.endswith(_PNG_IEND):
        raise InvalidRecord("truncated PNG: no IEND chunk")


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes into a BGR uint8 array (OpenCV convention)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidRecord("image data could not be decoded")
    return img


def encode_image(image: np.ndarray, content_type: str = JPEG, quality: int = 90) -> bytes:
    import cv2

    if content_type == JPEG:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif content_type == PNG:
        ok, buf = cv2.imencode(".png", image)
    else:
        raise ValueError(f"cannot encode to {content_type!r}")
    if not ok:
        raise ValueError("OpenCV failed to encode the image")
    return buf.tobytes()


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


@dataclass(eq=False)
class Frame:
    """One encoded video frame. ``image`` decodes lazily (and once)."""

    kind: ClassVar[str] = "frame"
    #: (topic, partition, offset) of the record it was decoded from; set by decode_message.
    origin: ClassVar[tuple[str, int, int] | None] = None

    frame_id: str
    stream_id: str
    seq: int
    timestamp_ms: int
    data: bytes
    content_type: str = JPEG
    _image: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        stream_id: str,
        seq: int,
        timestamp_ms: int | None = None,
        content_type: str = JPEG,
        quality: int = 90,
        frame_id: str | None = None,
    ) -> Frame:
        data = encode_image(image, content_type, quality)
        return cls(
            frame_id=frame_id or make_frame_id(stream_id, seq),
            stream_id=stream_id,
            seq=seq,
            timestamp_ms=now_ms() if timestamp_ms is None else timestamp_ms,
            data=data,
            content_type=content_type,
        )

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = decode_image(self.data)
        return self._image

    def to_record(self) -> OutRecord:
        headers: Headers = [
            ("frame_id", self.frame_id.encode()),
            ("stream_id", self.stream_id.encode()),
            ("seq", str(self.seq).encode()),
            ("ts_ms", str(self.timestamp_ms).encode()),
            ("content_type", self.content_type.encode()),
            ("schema", str(SCHEMA_VERSION).encode()),
        ]
        return OutRecord(key=self.stream_id.encode(), value=self.data, headers=headers)

    @classmethod
    def from_record(cls, record: Record, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
        data = record.value or b""
        if not record.headers:
            # A bare image record (kcat, a plain client): derive everything from the record.
            content_type = sniff_content_type(data) if data else None
            if data and content_type is None:
                raise InvalidRecord(f"record has no headers and its value ({len(data)} bytes) "
                                    "is neither JPEG nor PNG")
            check_image_bytes(data, content_type or "", max_bytes)
            stream = record.key.decode("utf-8", "replace") if record.key else record.topic
            return cls(
                frame_id=record.source_id,
                stream_id=stream,
                seq=record.offset,
                timestamp_ms=record.timestamp_ms,
                data=data,
                content_type=content_type,  # type: ignore[arg-type]
            )
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
        return cls(
            frame_id=_str_header(record, "frame_id") or record.source_id,
            stream_id=stream,
            seq=record.offset if seq is None else seq,
            timestamp_ms=record.timestamp_ms if ts is None else ts,
            data=data,
            content_type=content_type,
        )


def make_frame_id(stream_id: str, seq: int) -> str:
    return f"{stream_id}:{seq:08d}"


# --------------------------------------------------------------------------- results

_RESULT_TYPES: dict[str, type[Result]] = {}


@dataclass(eq=False)
class Result:
    """Base of derived records. Subclasses are dataclasses; ndarray fields travel as raw bytes."""

    kind: ClassVar[str] = "result"
    #: (topic, partition, offset) of the record it was decoded from; set by decode_message.
    origin: ClassVar[tuple[str, int, int] | None] = None

    frame_id: str
    stream_id: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _RESULT_TYPES[cls.kind] = cls

    @property
    def content_type(self) -> str:
        return RESULT_CONTENT_TYPE_PREFIX + self.kind

    def to_bytes(self) -> bytes:
        scalars: dict[str, Any] = {}
        arrays: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                a = np.ascontiguousarray(v)
                arrays.append({"name": f.name, "dtype": a.dtype.str, "shape": list(a.shape)})
                blobs.append(a.tobytes())
            else:
                scalars[f.name] = v
        head = {"kind": self.kind, "schema": SCHEMA_VERSION, "fields": scalars, "arrays": arrays}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + b"".join(blobs)

    def to_record(self) -> OutRecord:
        headers: Headers = [
            ("frame_id", self.frame_id.encode()),
            ("stream_id", self.stream_id.encode()),
            ("content_type", self.content_type.encode()),
            ("schema", str(SCHEMA_VERSION).encode()),
        ]
        return OutRecord(key=self.stream_id.encode(), value=self.to_bytes(), headers=headers)

    @staticmethod
    def from_bytes(data: bytes | None) -> Result:
        if not data:
            raise InvalidRecord("empty value: a result record must carry a payload")
        head_raw, sep, body = data.partition(b"\n")
        if not sep:
            raise InvalidRecord("result record has no header line")
        try:
            head = json.loads(head_raw)
            kind = head["kind"]
            cls = _RESULT_TYPES[kind]
        except (ValueError, KeyError, TypeError):
            raise InvalidRecord("result record header is not a known vistream result") from None
        kwargs = dict(head.get("fields", {}))
        pos = 0
        try:
            for spec in head.get("arrays", []):
                dtype = np.dtype(spec["dtype"])
                if dtype.hasobject:
                    raise InvalidRecord("object arrays are not allowed")
                n = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
                if pos + n > len(body):
                    raise InvalidRecord(f"result record truncated in array {spec['name']!r}")
                kwargs[spec["name"]] = np.frombuffer(body, dtype, count=n // max(dtype.itemsize, 1),
                                                     offset=pos).reshape(spec["shape"]).copy()
                pos += n
            return cls(**kwargs)
        except InvalidRecord:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidRecord(f"malformed {kind} record: {exc}") from None

    @classmethod
    def from_record(cls, record: Record) -> Result:
        ctype = _str_header(record, "content_type")
        if ctype is not None and not ctype.startswith(RESULT_CONTENT_TYPE_PREFIX):
            raise InvalidRecord(f"wrong content type {ctype!r}: expected a vistream result record")
        result = Result.from_bytes(record.value)
        if cls is not Result and not isinstance(result, cls):
            raise InvalidRecord(f"expected a {cls.kind} record, got {result.kind}")
        return result


@dataclass(eq=False)
class Tracks(Result):
    """Boxes of tracked objects in one frame: ``boxes`` (N, 4) as x, y, w, h in pixels."""

    kind: ClassVar[str] = "tracks"
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass(eq=False)
class Caption(Result):
    kind: ClassVar[str] = "caption"
    text: str = ""


@dataclass(eq=False)
class Features(Result):
    """A feature vector of a frame. In crop mode the features stage emits one per tracked box,
    in box order, with ``label`` set to the track id."""

    kind: ClassVar[str] = "features"
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    model_id: str = ""
    label: int | None = None
    #: capture time of the frame (ms since the epoch), so the index can show it without a join
    timestamp_ms: int | None = None


@dataclass(eq=False)
class Codes(Result):
    """Packed binary hash code (uint8, bits = 8 * len) of a frame."""

    kind: ClassVar[str] = "codes"
    code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    model_version: int = 0


@dataclass(eq=False)
class Label(Result):
    """A ground-truth class label for a frame (feeds supervised online hashing)."""

    kind: ClassVar[str] = "label"
    label: int = 0


@dataclass(eq=False)
class FrameSummary(Result):
    """Light per-frame statistics (the foundation's thumbnail/summary stage emits these)."""

    kind: ClassVar[str] = "frame_summary"
    width: int = 0
    height: int = 0
    timestamp_ms: int = 0
    mean_bgr: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    #: JPEG bytes of a small thumbnail, as a uint8 array so it travels in the binary part.
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))


Message = Frame | Result


def decode_message(record: Record, accept: tuple[str, ...] = ("frame",),
                   max_frame_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Turn a bus record into a Frame or a Result, or raise InvalidRecord with the reason.

    ``accept`` lists the kinds the consuming stage understands ("frame", "tracks", ...,
    or "*" for any).
    """
    ctype = _str_header(record, "content_type") if record.headers else None
    is_result = ctype is not None and ctype.startswith(RESULT_CONTENT_TYPE_PREFIX)
    if is_result:
        msg: Message = Result.from_record(record)
    else:
        msg = Frame.from_record(record, max_frame_bytes)
    if "*" not in accept and msg.kind not in accept:
        raise InvalidRecord(f"unexpected record kind {msg.kind!r}: this stage takes {list(accept)}")
    msg.origin = (record.topic, record.partition, record.offset)  # instance value, not a field
    return msg
