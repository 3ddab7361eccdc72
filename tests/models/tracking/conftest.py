"""A small hand-made multi-target scene for the discovery and multi-tracker tests: coloured
discs moving on a textured photo under a shaking camera (sub-pixel jitter, one sudden jump,
a slight rotation and zoom drift), with exact centres and the option to hide a target for a
stretch of frames (to test re-acquisition)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vistream.models.data import SyntheticObject, composite, load_background

_BG: dict[str, np.ndarray] = {}


def _canvas(name: str = "coffee") -> np.ndarray:
    if name not in _BG:
        _BG[name] = cv2.resize(load_background(name), (1100, 900), interpolation=cv2.INTER_CUBIC)
    return _BG[name]


def shaky_scene(n=60, seed=0, targets=((200, 150, 1.6, 0.8, 12, (40, 220, 60)),
                                       (420, 300, -1.2, 1.0, 9, (230, 60, 230))),
                hide=None, jump_at=30, jump=(40.0, -25.0), rotate_deg=0.03, zoom=0.0008,
                noise=3.0, background="coffee"):
    """Frames (list of 640x480 BGR uint8) and boxes (n, k, 4) x, y, w, h. ``targets``: (x,
    y, vx, vy, size, colour) in the first frame's coordinates, motion in scene px/frame.
    ``hide``: (target index, first frame, last frame) not drawn. The camera: jitter of
    +-0.7 px, a jump at ``jump_at``, rotation and zoom drifting per frame."""
    rng = np.random.default_rng(seed)
    canvas = _canvas(background).astype(np.float32)
    cam = np.array([230.0, 200.0])
    frames, boxes = [], []
    ang, sc = 0.0, 1.0
    for t in range(n):
        if t == jump_at:
            cam += jump
        jit = rng.uniform(-0.7, 0.7, 2)
        ang += rotate_deg
        sc *= 1.0 + zoom
        # view = rotate/zoom of the canvas around the view centre, then crop at the camera
        cx, cy = cam[0] + jit[0] + 320, cam[1] + jit[1] + 240
        m = cv2.getRotationMatrix2D((cx, cy), ang, sc)
        m[:, 2] += [320 - cx, 240 - cy]
        scene = canvas.copy()
        row = []
        for i, (x, y, vx, vy, size, col) in enumerate(targets):
            # scene position: first-frame coordinates mapped to canvas coordinates
            sx, sy = x + vx * t + 230.0, y + vy * t + 200.0
            drawn = not (hide and hide[0] == i and hide[1] <= t <= hide[2])
            if drawn:
                composite(scene, SyntheticObject(i, "disc", col, size, size),
                          np.array([sx - size / 2, sy - size / 2, size, size]))
            px, py = m @ np.array([sx, sy, 1.0])
            s = size * sc
            row.append((px - s / 2, py - s / 2, s, s))
        img = cv2.warpAffine(scene, m, (640, 480), flags=cv2.INTER_LINEAR)
        img += rng.normal(0, noise, img.shape).astype(np.float32)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        boxes.append(row)
    return frames, np.asarray(boxes)


@pytest.fixture(scope="module")
def scene_factory():
    return shaky_scene
