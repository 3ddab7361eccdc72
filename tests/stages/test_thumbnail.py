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
