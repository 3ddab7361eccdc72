import numpy as np

from vistream.stages.records import Frame, encode_image
from vistream.stages.thumbnail import summarize_frame


def test_summary_holds_the_frames_mean_colour_and_a_scaled_thumbnail():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    img[:, :80, 0] = 255  # a blue left half moves the mean away from grey
    frame = Frame("cam:1", "cam", 1, 0, encode_image(img, content_type="image/png"),
                  content_type="image/png")
    s = summarize_frame(frame, width=40)
    np.testing.assert_allclose(s.mean_bgr, img.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    assert (s.width, s.height) == (160, 90)
    assert s.thumbnail.size > 0


def _scene(h: int = 360, w: int = 640) -> np.ndarray:
    """A smooth picture with edges (what a camera sees), not noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 128) * 2], -1)
    img[h // 4: h // 2, w // 3: w // 2] = (30, 200, 90)
    return img.astype(np.uint8)


def _fresh(f: Frame) -> Frame:
    return Frame(f.frame_id, f.stream_id, f.seq, f.timestamp_ms, f.data, f.content_type)


def test_a_reduced_jpeg_decode_gives_the_summary_of_the_full_decode():
    from vistream.stages.records import decode_image

    frame = Frame.from_image(_scene(), "cam", 3, timestamp_ms=7, quality=90)
    full = _fresh(frame)
    assert full.image.shape == (360, 640, 3)  # decoded already: the summary takes it
    want = summarize_frame(full)
    got = summarize_frame(_fresh(frame))  # not decoded: decoded at 1/4 straight away
    assert (got.frame_id, got.stream_id, got.width, got.height, got.timestamp_ms) == (
        want.frame_id, want.stream_id, want.width, want.height, want.timestamp_ms)
    np.testing.assert_allclose(got.mean_bgr, want.mean_bgr, atol=0.5)
    a, b = decode_image(got.thumbnail.tobytes()), decode_image(want.thumbnail.tobytes())
    assert a.shape == b.shape == (90, 160, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_sizes_no_reduced_decode_fits_and_png_take_the_full_decode():
    for img, ctype, width in [(_scene(100, 150), "image/jpeg", 160),  # thumbnail = frame
                              (_scene(360, 640), "image/jpeg", 400),  # 1/2 is too small
                              (_scene(90, 160), "image/png", 40)]:
        frame = Frame.from_image(img, "cam", 0, timestamp_ms=1, content_type=ctype)
        s = summarize_frame(_fresh(frame), width=width)
        full = _fresh(frame)
        assert full.image is not None
        t = summarize_frame(full, width=width)
        assert (s.width, s.height) == (img.shape[1], img.shape[0])
        np.testing.assert_array_equal(s.mean_bgr, t.mean_bgr)
        assert s.thumbnail.tobytes() == t.thumbnail.tobytes()
