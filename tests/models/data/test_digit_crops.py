"""Tracker crops of digits (the shipped crops backbone's training set): seeded, split-disjoint,
the stage's crop geometry."""

from __future__ import annotations

import numpy as np

from vistream.models.data.digit_crops import render_crop
from vistream.models.data.images import _digits_raw


def _photo():
    return np.random.default_rng(5).uniform(0, 1, (120, 160, 3)).astype(np.float32)


def test_a_crop_is_seeded_and_an_rgb_image_of_the_asked_size():
    imgs, _ = _digits_raw()
    a = render_crop(imgs[0], _photo(), np.random.default_rng(1))
    b = render_crop(imgs[0], _photo(), np.random.default_rng(1))
    c = render_crop(imgs[0], _photo(), np.random.default_rng(2))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert render_crop(imgs[0], _photo(), np.random.default_rng(1), size=24).shape == (3, 24, 24)


def test_the_digit_fills_the_crop():
    """A flat grey photo: the crop is mostly the digit's colour where the digit's ink is, so its
    pixels vary far more than the photo's noise alone would make them."""
    imgs, _ = _digits_raw()
    flat = np.full((120, 160, 3), 0.5, np.float32)
    spread = [render_crop(imgs[i], flat, np.random.default_rng(i), side=(30, 40)).std()
              for i in range(8)]
    assert np.median(spread) > 0.05
