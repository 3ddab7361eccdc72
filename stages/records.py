"""The typed records stages take and emit: frames and derived results.

A :class:`Frame` is one encoded image of a stream (JPEG by default, PNG for lossless) with its
identity: frame id, stream id, sequence number and capture time. A :class:`Result` (tracks,
captions, features, codes, labels, frame summaries, ...) is a small dataclass that keeps the
frame id, so every result joins back to its frame; its ndarray fields are its bulk data.

Records know nothing about the bus: no topic, partition or offset rides on them, and how they
become bytes on a topic is :mod:`vistream.pipeline.wire`'s business. A stage module may define
its own result kinds by subclassing :class:`Result` with a new ``kind``; the subclass is
registered on import, so the wire format can decode it by name.

Validation raises :class:`InvalidRecord` whose message is the reason that ends up in the
dead-letter topic.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vistream.models.registry import Registry

__all__ = [
    "FRAME_CONTENT_TYPES", "JPEG", "LABEL_SOURCES", "MAX_CLASS_NAME", "MAX_FRAME_BYTES", "PNG",
    "Caption",
    "Codes", "Features", "Frame", "FrameSummary", "InvalidRecord", "Label", "Message", "Result",
    "TrackInit", "Tracks",
    "check_image_bytes", "decode_image", "encode_image", "make_frame_id", "now_ms",
    "result_type", "sniff_content_type",
]

#: Frames larger than this are refused. The bus is sized for 20 MiB records (the Kafka broker,
#: producer and consumer settings), so a 16 MiB frame plus its headers always fits.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Frames with more pixels than this are refused from their header, before decoding: 8K video
#: (33 Mpx) fits; a decompression bomb (a small PNG claiming 60000 x 60000) never allocates.
MAX_FRAME_PIXELS = 40_000_000

JPEG = "image/jpeg"
PNG = "image/png"
FRAME_CONTENT_TYPES = (JPEG, PNG)

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"


class InvalidRecord(ValueError):
    """A record that cannot be accepted; the message says why (it goes to the DLQ)."""


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- image bytes


def sniff_content_type(data: bytes) -> str | None:
    if data.startswith(_JPEG_SOI):
        return JPEG
    if data.startswith(_PNG_MAGIC):
        return PNG
    return None


def check_image_bytes(data: bytes | None, content_type: str, max_bytes: int = MAX_FRAME_BYTES,
                      max_pixels: int = MAX_FRAME_PIXELS) -> None:
    """Cheap structural checks that catch empty, oversized, mislabelled, truncated and
    decompression-bomb images, without decoding them.

    Truncation is checked by the end marker because OpenCV happily decodes the top part of a
    truncated JPEG and fills the rest with grey. The pixel count comes from the header, so a
    reason of ours (``too_many_pixels``) names the refusal rather than an OpenCV assertion.
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
    size = image_size(data)
    if size is None:
        raise InvalidRecord("unreadable_size: the image header gives no width and height")
    w, h = size
    if w == 0 or h == 0:
        raise InvalidRecord(f"no_pixels: the image header says {w} x {h}")
    if w * h > max_pixels:
        raise InvalidRecord(f"too_many_pixels: {w} x {h} = {w * h} pixels > limit {max_pixels}")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if unreadable."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        return None
    if data.startswith(b"\xff\xd8"):
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            seg_len = struct.unpack(">H", data[i + 2: i + 4])[0]
            if seg_len < 2:
                return None
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", data[i + 5: i + 9])
                return w, h
            i += 2 + seg_len
        return None
    return None


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


# --------------------------------------------------------------------------- frames


def make_frame_id(stream_id: str, seq: int) -> str:
    return f"{stream_id}:{seq:08d}"


@dataclass(eq=False)
class Frame:
    """One encoded video frame. ``image`` decodes lazily (and once)."""

    kind: ClassVar[str] = "frame"

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


# --------------------------------------------------------------------------- results

#: Result kinds by name, so the wire format can rebuild a record from the kind it names.
RESULT_KINDS: Registry[type[Result]] = Registry("result kind")


@dataclass(eq=False)
class Result:
    """Base of derived records. Subclasses are dataclasses with a ``kind`` of their own; they
    register themselves under it when their module is imported."""

    kind: ClassVar[str] = "result"

    frame_id: str
    stream_id: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            RESULT_KINDS.register(cls, name=cls.kind)


def result_type(kind: str) -> type[Result]:
    """The result class registered under ``kind``; KeyError when none is."""
    return RESULT_KINDS.get(kind)


@dataclass(eq=False)
class Tracks(Result):
    """Boxes of tracked objects in one frame: ``boxes`` (N, 4) as x, y, w, h in pixels."""

    kind: ClassVar[str] = "tracks"
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass(eq=False)
class TrackInit(Result):
    """Start (or restart) ``target_ids[i]`` at ``boxes[i]`` (x, y, w, h px) in frame
    ``frame_id`` (sequence number ``seq``, -1 when unknown; an empty ``frame_id`` with
    ``seq`` -1 means the stream's next frame); ``drop_ids`` stops targets; ``replace`` stops
    every target not listed. Negative ids let the track stage choose the id:
    :attr:`DETECTION` (-1) is a detection (the ``detect`` stage's): covered by a live target
    it is dropped, else it re-acquires a lost target by signature (which keeps its id) or
    starts a new one; :attr:`NEW` (-2) is a hand-started target with the next free id.
    Produced by the detect stage, ``vistream track start|stop`` and ``POST /tracks``;
    consumed by the track stage."""

    kind: ClassVar[str] = "track_init"
    DETECTION: ClassVar[int] = -1
    NEW: ClassVar[int] = -2
    seq: int = -1
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    target_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    drop_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    replace: bool = False

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.target_ids = np.asarray(self.target_ids, np.int64).reshape(-1)
        self.drop_ids = np.asarray(self.drop_ids, np.int64).reshape(-1)
        if len(self.boxes) != len(self.target_ids):
            raise ValueError(f"track_init has {len(self.boxes)} boxes but "
                             f"{len(self.target_ids)} target ids")


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
    #: the artifact's classifier head: its class for this vector and that class's softmax
    #: probability, set only at or above the features stage's ``pseudo_label_threshold``
    pseudo_class: str | None = None
    pseudo_score: float | None = None
    #: decoupled artifacts with the features stage's ``explain: true``: the vector's calculation
    #: path (hex of its packed 0/1 filter gates, models.decoupling.runtime.path_code) and the
    #: share of filters that ran
    path_code: str | None = None
    path_active: float | None = None


@dataclass(eq=False)
class Codes(Result):
    """Packed binary hash code (uint8, bits = 8 * len) of a frame."""

    kind: ClassVar[str] = "codes"
    code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    model_version: int = 0


#: Longest class name a label may carry.
MAX_CLASS_NAME = 200
#: Where a label comes from: a person, or a classifier head above its confidence threshold.
LABEL_SOURCES = ("user", "pseudo")


@dataclass(eq=False)
class Label(Result):
    """A ground-truth class label (feeds supervised online hashing) for one frame, or for every
    feature of one track.

    Target: ``frame_id`` names a frame, or ``track_id`` names a track of ``stream_id`` (its
    ``frame_id`` is then empty; an empty ``stream_id`` means that track id in any stream).
    Class: ``class_name`` (the index keeps the name <-> id map) or the integer ``label`` (the
    only field of records written before names existed; they still decode). Exactly one of
    each pair. :meth:`check` says what is wrong; the index stage raises it, so the runner
    dead-letters a malformed label with that reason.
    """

    kind: ClassVar[str] = "label"
    label: int | None = None
    track_id: int | None = None
    class_name: str | None = None
    #: who gave it: ``user`` (vistream label, POST /labels) or ``pseudo`` (a classifier head)
    source: str = "user"

    def check(self) -> Label:
        """Raise :class:`InvalidRecord` (the DLQ reason) unless this is a usable label."""
        has_frame, has_track = bool(self.frame_id), self.track_id is not None
        if has_frame == has_track:
            raise InvalidRecord("a label names a frame_id or a track_id (exactly one)")
        if has_track and (isinstance(self.track_id, bool) or not isinstance(self.track_id, int)
                          or self.track_id < 0):
            raise InvalidRecord(f"track_id must be an integer >= 0, got {self.track_id!r}")
        if (self.label is None) == (self.class_name is None):
            raise InvalidRecord("a label carries a class_name or an integer label (exactly one)")
        if self.label is not None and (isinstance(self.label, bool)
                                       or not isinstance(self.label, int)):
            raise InvalidRecord(f"label must be an integer, got {self.label!r}")
        if self.label is not None and self.label < 0:
            raise InvalidRecord(f"label must be >= 0, got {self.label}")
        if self.class_name is not None and (not isinstance(self.class_name, str)
                                            or not self.class_name.strip()
                                            or len(self.class_name) > MAX_CLASS_NAME):
            raise InvalidRecord(f"class_name must be a non-empty string of at most "
                                f"{MAX_CLASS_NAME} characters, got {self.class_name!r}")
        if self.source not in LABEL_SOURCES:
            raise InvalidRecord(f"source must be one of {', '.join(LABEL_SOURCES)}, "
                                f"got {self.source!r}")
        return self


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
