"""Frame sources for ingest: video files and streams, cameras, and image folders.

:func:`open_source` turns whatever the user passed on the command line into a
:class:`FrameSource`, an iterator of :class:`SourceFrame` objects holding BGR
uint8 images (OpenCV convention) whatever the input looked like: greyscale
images are replicated to three channels, alpha channels are dropped and 16-bit
images are reduced to 8 bits.

Accepted sources:

* an ``int`` or a string of digits (``0``, ``"1"``): a camera index;
* a string containing ``://`` (``rtsp://...``, ``http://...``): a network stream;
* a path to a directory: its image files (``.jpg .jpeg .png .bmp .tif .tiff .webp``,
  case-insensitive, hidden files ignored, not recursive) in natural order, so
  ``frame2.png`` comes before ``frame10.png``;
* a path to a single image file: a one-frame source;
* any other existing path: a video file read with ``cv2.VideoCapture``.

Problems are reported as :class:`SourceError` (a ``ValueError``) naming the
source and what went wrong. Videos and cameras are opened and their first frame
decoded eagerly, so an undecodable or empty video fails in :func:`open_source`
rather than half-way through a pipeline. In an image folder an unreadable file
is skipped with a warning on the ``vistream.sources`` logger and counted in
:attr:`FrameSource.skipped`; only a folder whose images are *all* unreadable
raises, when iteration reaches its end.

A source is a stream, like a file object: iterating consumes it, and a second
``for`` loop continues where the first stopped. Timestamps are seconds since the
start of the stream: the container's presentation time for videos (falling back
to ``index / fps``), time since opening for cameras, and ``index / fps`` for
image folders when an ``fps`` is given (else ``None``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "CameraSource",
    "FrameSource",
    "ImageFolderSource",
    "SourceError",
    "SourceFrame",
    "VideoSource",
    "ensure_bgr_uint8",
    "natural_sort_key",
    "open_source",
]

logger = logging.getLogger("vistream.sources")

#: File extensions (lower case) recognised as images in a folder source.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
)


class SourceError(ValueError):
    """A frame source cannot be opened or read; the message names the source."""


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One frame: running index (0, 1, ...), BGR uint8 image (H, W, 3), timestamp in seconds."""

    index: int
    image: np.ndarray
    timestamp: float | None


def natural_sort_key(name: str) -> tuple:
    """Sort key comparing digit runs numerically (``img2`` < ``img10``), text case-insensitively.

    Ties (``f01`` vs ``f1``) are broken by the original string, so the order is total.
    """
    parts = re.split(r"(\d+)", name)
    # re.split with one capturing group alternates text, digits, text, ...:
    # even positions are always text, odd ones always digits, so no str/int clash.
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key, name


def ensure_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a contiguous BGR uint8 array of shape (H, W, 3).

    Greyscale (H, W) or (H, W, 1) is replicated, BGRA drops alpha, uint16 is
    scaled by 1/257, float images are taken to be in [0, 1], bool to {0, 255}.
    """
    img = np.asarray(image)
    if img.dtype == np.uint8:
        pass
    elif img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.floating):
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(img.dtype, np.integer):
        img = np.clip(img, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"unsupported image shape {img.shape}")
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img)


class FrameSource(ABC):
    """Iterator of :class:`SourceFrame`; use as a context manager or call :meth:`close`.

    Attributes:
        name: human-readable description of the source (path, ``camera:0``, URL).
        fps: frames per second when known, else None.
        length: number of frames when known (for progress bars), else None. For
            image folders this is the number of image files, unreadable ones included.
        skipped: number of unreadable inputs skipped so far (image folders only).
    """

    def __init__(self, name: str, fps: float | None = None, length: int | None = None) -> None:
        self.name = name
        self.fps = fps
        self.length = length
        self.skipped = 0
        self._index = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> Iterator[SourceFrame]:
        return self

    def __next__(self) -> SourceFrame:
        if self._closed:
            raise SourceError(f"source {self.name!r} is closed")
        image, timestamp = self._read()  # raises StopIteration at the end
        frame = SourceFrame(index=self._index, image=image, timestamp=timestamp)
        self._index += 1
        return frame

    @abstractmethod
    def _read(self) -> tuple[np.ndarray, float | None]:
        """Next BGR uint8 image and its timestamp; raise StopIteration at the end."""

    def _release(self) -> None:
        """Free underlying resources (idempotent)."""

    def close(self) -> None:
        """Release the source; further iteration raises SourceError. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # partially built object / interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, fps={self.fps}, "
                f"length={self.length}, closed={self._closed})")


class _CaptureSource(FrameSource):
    """Shared logic of sources backed by ``cv2.VideoCapture``."""

    def __init__(self, name: str, cap: cv2.VideoCapture) -> None:
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if math.isfinite(fps) and fps > 0 else None
        super().__init__(name, fps=fps)
        self._cap = cap
        self._pending: tuple[np.ndarray, float | None] | None = None
        self._exhausted = False

    def _prefetch(self, what_failed: str) -> None:
        """Decode the first frame now so that broken inputs fail at open time."""
        first = self._grab_frame(0)
        if first is None:
            self._cap.release()
            self._closed = True
            raise SourceError(what_failed)
        self._pending = first

    def _grab_frame(self, index: int) -> tuple[np.ndarray, float | None] | None:
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        return ensure_bgr_uint8(image), self._timestamp(index)

    @abstractmethod
    def _timestamp(self, index: int) -> float | None: ...

    def _read(self) -> tuple[np.ndarray, float | None]:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        if self._exhausted:
            raise StopIteration
        item = self._grab_frame(self._index)
        if item is None:
            self._exhausted = True
            self._cap.release()
            raise StopIteration
        return item

    def _release(self) -> None:
        self._pending = None
        self._cap.release()


class VideoSource(_CaptureSource):
    """A video file or network stream read with ``cv2.VideoCapture``."""

    def __init__(self, location: str | Path, *, is_stream: bool = False) -> None:
        name = str(location)
        kind = "stream" if is_stream else "video"
        cap = cv2.VideoCapture(name)
        if not cap.isOpened():
            cap.release()
            why = ("OpenCV could not connect to it or decode it" if is_stream
                   else "OpenCV could not decode it (is it a video file?)")
            raise SourceError(f"cannot open {kind} {name!r}: {why}")
        super().__init__(name, cap)
        if not is_stream:
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            if math.isfinite(count) and count > 0:
                self.length = int(count)
        self._prefetch(f"{kind} {name!r} opened but contains no decodable frames")

    def _timestamp(self, index: int) -> float | None:
        msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
        if math.isfinite(msec) and msec >= 0 and (index == 0 or msec > 0):
            return msec / 1000.0
        return index / self.fps if self.fps else None


class CameraSource(_CaptureSource):
    """A local camera by index (``cv2.VideoCapture(index)``); timestamps are seconds since open."""

    def __init__(self, index: int) -> None:
        name = f"camera:{index}"
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open camera {index}: no such device, or it is busy or not permitted"
            )
        self._t0 = time.monotonic()
        super().__init__(name, cap)
        self._prefetch(f"camera {index} opened but returned no frame")

    def _timestamp(self, index: int) -> float | None:
        return time.monotonic() - self._t0


class ImageFolderSource(FrameSource):
    """Images read one by one from a list of files (a folder in natural order, or one file).

    Unreadable files are skipped with a warning and counted in :attr:`skipped`;
    if none of the files could be read, the end of iteration raises SourceError.
    """

    def __init__(
        self, files: Sequence[Path], *, name: str, fps: float | None = None
    ) -> None:
        if fps is not None and not fps > 0:
            raise SourceError(f"fps for {name!r} must be > 0, got {fps}")
        super().__init__(name, fps=fps, length=len(files))
        self.files: list[Path] = list(files)
        self._cursor = 0
        self._done = False

    @classmethod
    def from_folder(cls, folder: Path, *, fps: float | None = None) -> ImageFolderSource:
        """All image files directly inside ``folder``, naturally sorted."""
        try:
            entries = list(folder.iterdir())
        except OSError as exc:
            raise SourceError(f"cannot list image folder {str(folder)!r}: {exc}") from exc
        files = [
            p for p in entries
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        ]
        if not files:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise SourceError(f"image folder {str(folder)!r} contains no images (looked for {exts})")
        files.sort(key=lambda p: natural_sort_key(p.name))
        return cls(files, name=str(folder), fps=fps)

    def _decode(self, path: Path) -> np.ndarray | None:
        try:
            data = np.fromfile(path, dtype=np.uint8)  # handles non-ASCII paths everywhere
        except OSError as exc:
            logger.warning("skipping %s: cannot read file (%s)", path, exc)
            return None
        if data.size == 0:
            logger.warning("skipping %s: file is empty", path)
            return None
        try:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as exc:
            logger.warning("skipping %s: OpenCV failed to decode it (%s)", path, exc)
            return None
        if image is None:
            logger.warning("skipping %s: not a decodable image", path)
            return None
        return ensure_bgr_uint8(image)

    def _read(self) -> tuple[np.ndarray, float | None]:
        while self._cursor < len(self.files):
            path = self.files[self._cursor]
            self._cursor += 1
            image = self._decode(path)
            if image is None:
                self.skipped += 1
                continue
            return image, (self._index / self.fps if self.fps else None)
        if not self._done:
            self._done = True
            if self._index == 0:
                raise SourceError(
                    f"image source {self.name!r}: none of its {len(self.files)} image file(s) "
                    "could be read"
                )
        raise StopIteration


def _camera_index(source: object) -> int | None:
    if isinstance(source, bool):
        raise TypeError("source must be a path, a URL or a camera index, not a bool")
    if isinstance(source, (int, np.integer)):
        return int(source)
    if isinstance(source, str) and source.strip().isdigit():
        return int(source.strip())
    return None


def open_source(source: str | Path | int, *, fps: float | None = None) -> FrameSource:
    """Open a video file, network stream, camera index or image folder (see module docs).

    Args:
        source: camera index (``int`` or digit string), URL, or path to a video
            file, an image folder or a single image.
        fps: frame rate to assume for image folders/files (gives timestamps);
            ignored for videos and cameras, which report their own.

    Raises:
        SourceError: the source does not exist, cannot be opened or decoded, a
            video has no frames, or a folder has no image files.
    """
    index = _camera_index(source)
    if index is not None:
        if index < 0:
            raise SourceError(f"invalid camera index {index}: must be >= 0")
        return CameraSource(index)
    if isinstance(source, str) and "://" in source:
        return VideoSource(source, is_stream=True)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a path, a URL or a camera index, got {type(source).__name__}")
    if isinstance(source, str) and not source.strip():
        raise SourceError("empty source: expected a video file, an image folder or a camera index")

    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"source {str(path)!r} does not exist "
            "(expected a video file, an image folder or a camera index)"
        )
    if path.is_dir():
        return ImageFolderSource.from_folder(path, fps=fps)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource([path], name=str(path), fps=fps)
    return VideoSource(path)
