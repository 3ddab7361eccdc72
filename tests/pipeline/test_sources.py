"""Tests for pipeline.sources: video/folder round trips, conversions and every SourceError."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from vistream.pipeline.sources import (
    FrameSource,
    ImageFolderSource,
    SourceError,
    SourceFrame,
    ensure_bgr_uint8,
    natural_sort_key,
    open_source,
)
from vistream.models.data import SceneSpec, generate, write_image_folder, write_video

W, H, N = 160, 90, 10


@pytest.fixture(scope="module")
def video():
    return generate(SceneSpec(width=W, height=H, n_frames=N, n_objects=2, object_size=(6, 10),
                              background="chelsea", seed=3))


def solid(value: int, shape=(H, W, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


# --------------------------------------------------------------------------- videos


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_round_trip(tmp_path, video, suffix: str) -> None:
    path = write_video(video, tmp_path / f"clip{suffix}")
    with open_source(path) as src:
        assert isinstance(src, FrameSource)
        assert src.fps == pytest.approx(25.0)
        assert src.length == N
        assert src.name == str(path)
        frames = list(src)
    assert [f.index for f in frames] == list(range(N))
    assert all(isinstance(f, SourceFrame) for f in frames)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    stamps = [f.timestamp for f in frames]
    assert stamps == pytest.approx([i / 25.0 for i in range(N)], abs=1e-3)
    assert np.abs(frames[5].image.astype(int) - video.frames[5].astype(int)).mean() < 12
    assert src.closed


def test_video_source_accepts_str_path_and_partial_iteration(tmp_path, video) -> None:
    path = write_video(video, tmp_path / "clip.avi")
    src = open_source(str(path))
    first = [next(src) for _ in range(3)]
    rest = list(src)  # iterating again continues the stream
    assert [f.index for f in first + rest] == list(range(N))
    src.close()
    src.close()  # idempotent
    with pytest.raises(SourceError, match="closed"):
        next(src)


def test_missing_path(tmp_path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match="does not exist") as info:
        open_source(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_text_file_renamed_mp4(tmp_path) -> None:
    fake = tmp_path / "x.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(SourceError, match=r"cannot open video .*x\.mp4.*could not decode"):
        open_source(fake)


def test_video_without_frames(tmp_path) -> None:
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    assert writer.isOpened()
    writer.release()  # header only, zero frames
    with pytest.raises(SourceError, match=r"empty\.avi.*no decodable frames"):
        open_source(empty)


# --------------------------------------------------------------------------- cameras


@pytest.mark.parametrize("source", [99, "99"])
def test_camera_that_cannot_be_opened(source) -> None:
    with pytest.raises(SourceError, match="cannot open camera 99"):
        open_source(source)


def test_negative_camera_index() -> None:
    with pytest.raises(SourceError, match="camera index"):
        open_source(-1)


def test_camera_source_with_fake_capture(monkeypatch) -> None:
    """A working camera path, with cv2.VideoCapture replaced by a 3-frame fake."""

    class FakeCapture:
        def __init__(self, index):
            assert index == 0
            self.left = 3

        def isOpened(self):
            return True

        def get(self, prop):
            return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            if self.left == 0:
                return False, None
            self.left -= 1
            return True, solid(50 + self.left, (4, 6, 3))

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    with open_source("0") as cam:
        assert cam.name == "camera:0" and cam.fps == 30.0 and cam.length is None
        frames = list(cam)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [int(f.image[0, 0, 0]) for f in frames] == [52, 51, 50]
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and stamps[0] >= 0


def test_bad_source_type() -> None:
    with pytest.raises(TypeError):
        open_source(True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        open_source(1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- image folders


def test_natural_sort_key() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame02.png", "a.png", "frame1b.png"]
    assert sorted(names, key=natural_sort_key) == [
        "a.png", "Frame1.png", "frame1b.png", "frame02.png", "frame2.png", "frame10.png"]


def test_image_folder_natural_order(tmp_path) -> None:
    for i in (10, 2, 1, 33):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), solid(i))
    (tmp_path / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / ".hidden.png"), solid(200))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "frame0.png"), solid(0))
    with open_source(tmp_path, fps=10.0) as src:
        assert src.length == 4 and src.fps == 10.0 and src.name == str(tmp_path)
        frames = list(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 10, 33]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert src.skipped == 0


def test_image_folder_round_trip(tmp_path, video) -> None:
    write_image_folder(video, tmp_path, prefix="img", digits=1)  # img0 .. img9, unpadded
    cv2.imwrite(str(tmp_path / "img10.png"), video.frames[0])
    with open_source(str(tmp_path)) as src:
        frames = list(src)
    assert len(frames) == N + 1
    assert all(f.timestamp is None for f in frames)
    for i in range(N):
        assert np.array_equal(frames[i].image, video.frames[i])
    assert np.array_equal(frames[N].image, video.frames[0])


def test_single_image_file(tmp_path) -> None:
    path = tmp_path / "one.jpg"
    cv2.imwrite(str(path), solid(90))
    with open_source(path) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].image.shape == (H, W, 3)


def test_grayscale_and_alpha_become_bgr(tmp_path) -> None:
    gray = np.arange(H * W, dtype=np.uint32).reshape(H, W).astype(np.uint8)
    bgra = np.dstack([solid(10), np.full((H, W), 7, np.uint8)])
    bgra[..., 1] = 20
    bgra[..., 2] = 30
    cv2.imwrite(str(tmp_path / "1_gray.png"), gray)
    cv2.imwrite(str(tmp_path / "2_alpha.png"), bgra)
    cv2.imwrite(str(tmp_path / "3_gray16.tif"), (gray.astype(np.uint16) * 257))
    with open_source(tmp_path) as src:
        g, a, g16 = list(src)
    for f in (g, a, g16):
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
    assert np.array_equal(g.image, np.dstack([gray] * 3))
    assert tuple(a.image[5, 5]) == (10, 20, 30)
    assert np.array_equal(g16.image, np.dstack([gray] * 3))


def test_ensure_bgr_uint8_conversions() -> None:
    gray = np.full((4, 5), 9, np.uint8)
    assert ensure_bgr_uint8(gray).shape == (4, 5, 3)
    assert ensure_bgr_uint8(gray[..., None]).shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 77, 0
    out = ensure_bgr_uint8(bgra)
    assert out.shape == (4, 5, 3) and out[0, 0, 0] == 77 and out.flags.c_contiguous
    assert ensure_bgr_uint8(np.full((2, 2), 65535, np.uint16))[0, 0, 0] == 255
    assert ensure_bgr_uint8(np.full((2, 2, 3), 0.5))[0, 0, 0] == 128
    with pytest.raises(ValueError):
        ensure_bgr_uint8(np.zeros((2, 2, 2), np.uint8))


def test_empty_folder(tmp_path) -> None:
    with pytest.raises(SourceError, match="contains no images"):
        open_source(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(SourceError, match=r"contains no images") as info:
        open_source(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_corrupt_image_is_skipped_and_counted(tmp_path, caplog) -> None:
    for i in (1, 2, 4):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), solid(i))
    (tmp_path / "f3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "f5.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="vistream.sources"), open_source(tmp_path) as src:
        assert src.length == 5
        frames = list(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 4]
    assert [f.index for f in frames] == [0, 1, 2]
    assert src.skipped == 2
    warned = [r for r in caplog.records if r.name == "vistream.sources"]
    assert len(warned) == 2
    assert "f3.png" in warned[0].getMessage() and "f5.jpg" in warned[1].getMessage()


def test_folder_with_only_unreadable_images(tmp_path, caplog) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "b.jpg").write_bytes(b"nope either")
    src = open_source(tmp_path)
    assert isinstance(src, ImageFolderSource)
    message = r"none of its 2 image file\(s\) could be read"
    with caplog.at_level(logging.WARNING, logger="vistream.sources"), pytest.raises(
        SourceError, match=message
    ) as e:
        list(src)
    assert str(tmp_path) in str(e.value)
    assert src.skipped == 2
    assert list(src) == []  # reported once; afterwards simply exhausted
    src.close()


def test_bad_fps_for_folder(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), solid(1))
    with pytest.raises(SourceError, match="fps"):
        open_source(tmp_path, fps=0.0)


def test_sources_are_context_managers(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), solid(1))
    with open_source(Path(tmp_path)) as src:
        assert not src.closed
        assert "ImageFolderSource" in repr(src)
    assert src.closed
