"""Target discovery: small moving objects in a moving camera (issue 23, item 1).

:class:`MotionDetector` finds objects of a few pixels to ~64 px that move relative to the
scene, in video from a camera that pans, shakes, rotates a little and zooms a little, and
reports them once they have been seen consistently. NumPy and OpenCV only; everything runs
at half resolution (a 640x480 frame is worked on as 320x240), ~1-2 ms a frame.

Choices made, and why
---------------------
* **Registration** (:class:`Registration`): the tracker's own camera-motion estimate
  (:class:`~vistream.models.tracking.motion.GlobalMotion`, phase correlation: robust to jumps
  of 100+ px and to motion blur) gives the translation; it seeds a pyramidal Lucas-Kanade
  flow of a fixed 16x12 grid of points at half resolution, and a RANSAC similarity fit
  (``cv2.estimateAffinePartial2D``) of the flow adds rotation and zoom. The refinement costs
  well under a millisecond; when it fails (flat frames, too few inliers, a fit that
  disagrees with the phase correlation by more than a few pixels) the translation alone is
  used. One estimate per frame, shared with the trackers (:mod:`.multi`), who get the
  displacement at their own position.
* **No running background model**: warping an accumulated background every frame blurs it
  (one bilinear interpolation per frame) until texture edges light up as foreground. Each
  frame is instead compared with two *past frames* (``refs``, default 4 and 10 frames
  back: a target moving 0.5 px a frame needs the longer baseline), each warped once into
  the current frame, and the two differences are combined by their minimum: the object
  where it is now differs from both, while the "ghost" where it was ``k`` frames ago
  appears in one difference only. This is three-frame differencing with camera
  compensation.
* **Misregistration tolerance**: the difference of a pixel is its distance to the *range*
  of the reference's 3x3 neighbourhood (``max(g - dilate(ref), erode(ref) - g, 0)``), so a
  residual registration error of up to 1 px (2 px at full resolution) on textured ground
  does not light up edges. Cheap: one dilation, one erosion a reference.
* **Colour**: the difference is the largest of the three BGR channels' (``color``), since a
  green target on brown ground can have the ground's grey level.
* **Threshold**: ``max(min_threshold, n_sigma * sigma)`` where ``sigma`` is the noise of the
  plain frame difference, estimated robustly (1.48 x median absolute difference on a
  strided subsample): adapts to sensor noise without a tuned constant per video. A frame
  whose foreground share exceeds ``max_foreground`` (a registration failure) or whose
  camera shift jumps by more than ``jump_px`` (the exposure blurred it along the jump) is
  skipped: it reports nothing and does not count as a miss.
* **Blobs**: a 5x5 dilation (``join_px``) joins fragments (a uniform object that overlaps
  its own earlier footprint differs only at its leading and trailing edges), blobs closer
  than half their size are merged; ``cv2.connectedComponentsWithStats``; boxes must lie
  within ``[min_size, max_size]`` px and have ``min_area`` pixels.
  The reported box spans the blob's pixels above half its peak difference (``box_level``):
  blur and the overlap of the two ghosts widen the thresholded blob beyond the object. The
  outer ``border`` pixels are ignored (resampling and content entering the view).
* **Persistence**: detections feed light candidate tracks (position, scene velocity,
  size); a candidate moves with the camera transform plus its own velocity and takes the
  nearest detection within a gate. It is *confirmed* once it was matched in ``k`` of the
  last ``n`` frames (``persist_k`` / ``persist_n``), dropped after ``max_misses`` misses in
  a row. Only confirmed candidates matched in the current frame are reported: noise
  blobs do not recur at consistent positions, movers do. A *strong* blob (peak at least
  ``strong_ratio`` x the threshold) in ``strong_k`` of the last ``persist_n`` frames also
  confirms: a high-contrast mover is reported after 2 frames, a faint one still needs
  ``persist_k`` (issue 23: median frames to track 9 -> 4 on ``eval mot``, with the next two).
* **Whole objects** (``extent_frames``, ``absorb_margin``; off by default, on in the demo):
  a faint object differs in a few strokes a frame, a different few each frame. A
  candidate's reported box is then the union of its blobs of the last ``extent_frames``
  frames, each carried along by the candidate's predicted motion (the second most extreme
  side from 4 blobs on), and unmatched blobs inside its extent are merged into its blob
  (never growing the extent). Blobs closer than ``merge_gap`` x the larger one's size merge
  while their union stays within ``merge_size``.
* **First frames** (``early_refs``): until the nearest of ``refs`` exists, each frame from
  the 3rd on is compared with the oldest frame and the one half-way to it, so a target on
  screen from frame 0 is found in the first frames, not after the 5th.
* **Jumps**: a frame's camera shift is judged against the last frame that was not a jump
  (``settle_after_jump``), so the sharp frame after a re-aim is not skipped too.

What it does not do: it finds *movers*; an object that never moves relative to the scene is
invisible to it (start it by hand: ``vistream track start``). Parallax of near structures
under a translating camera is not modelled (the similarity transform is a far-scene model).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from vistream.models.tracking.blobs import _blank_unseen, _merge_near, refine_box
from vistream.models.tracking.motion import GlobalMotion

__all__ = ["DiscoveryParams", "MotionDetector", "Registration", "displacement", "refine_box"]


@dataclass
class DiscoveryParams:
    """Detector settings. Sizes are full-resolution pixels."""

    #: difference in BGR (max over channels) rather than grey: ~1.5x the cost, finds
    #: targets whose grey level matches the ground
    color: bool = True
    #: refine the phase-correlation translation to a similarity (rotation, zoom) by LK flow
    similarity: bool = True
    #: compare with the frames this many frames back (their minimum difference counts)
    refs: tuple[int, ...] = (4, 10)
    #: before the nearest of ``refs`` exists (the first frames of a stream), compare with the
    #: oldest frame and the one half-way to it, from the 3rd frame on (False: wait for the
    #: nearest ref): a target present from the first frame is found ~3 frames sooner
    early_refs: bool = True
    #: a share of the reference's local 3x3 contrast that a difference must exceed too
    edge_tolerance: float = 0.1
    #: threshold = max(min_threshold, n_sigma * noise sigma), grey levels at half resolution
    min_threshold: float = 10.0
    n_sigma: float = 4.0
    #: a frame with more foreground than this share is skipped (registration failed)
    max_foreground: float = 0.03
    #: a frame whose camera shift differs from the previous one's by more than this (px) is
    #: a jump, blurred by the motion: skipped
    jump_px: float = 12.0
    #: judge a frame's shift against the last frame that was not a jump (False: against the
    #: previous frame, which skipped the sharp frame after every re-aim as well)
    settle_after_jump: bool = True
    #: size filter (full-resolution px) and the fewest foreground pixels (half resolution)
    min_size: float = 3.0
    max_size: float = 64.0
    min_area: int = 2
    #: foreground fragments closer than this (half-resolution px) are one blob
    join_px: int = 2
    #: blobs closer than this share of the larger one's size are one blob, as long as
    #: their union stays within ``merge_size`` px (full resolution)
    merge_gap: float = 0.5
    merge_size: float = 64.0
    #: the box spans the blob's pixels above this share of its peak difference
    box_level: float = 0.5
    #: ignore this many half-resolution pixels at the frame edge
    border: int = 3
    #: persistence: matched in persist_k of the last persist_n frames
    persist_k: int = 3
    persist_n: int = 5
    #: a candidate whose blob was *strong* (peak difference >= strong_ratio x threshold) in
    #: strong_k of the last persist_n frames is confirmed too (0 = off): a high-contrast
    #: mover is reported after 2 frames, a faint one still needs persist_k
    strong_ratio: float = 2.5
    strong_k: int = 2
    #: a candidate is dropped after this many misses in a row
    max_misses: int = 4
    #: association gate: max(gate_px, gate_factor * candidate size), full-resolution px
    gate_px: float = 10.0
    gate_factor: float = 1.5
    #: candidates kept at most (the strongest blobs of a frame first)
    max_candidates: int = 64
    #: a candidate's reported box is the union of its blobs of the last ``extent_frames``
    #: frames, each carried to the current frame by the candidate's predicted motion (0: the
    #: latest blob only): a faint object differs in a different stroke each frame, so one
    #: frame's blob is a fragment of it
    extent_frames: int = 0
    #: blobs not matched to any candidate whose centre lies within a matched candidate's
    #: extent (grown by this share of its size a side) are fragments of it: merged into its
    #: blob instead of starting candidates of their own (< 0: off)
    absorb_margin: float = -1.0
    #: motion estimation downsampling (as the tracker's)
    motion_downsample: int = 8
    motion_min_response: float = 0.08


def displacement(transform: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Where the camera transform (2x3, previous -> current frame) moves point (x, y), as a
    displacement: what a tracker at (x, y) should add to its position."""
    a = transform
    return (float(a[0, 0] * x + a[0, 1] * y + a[0, 2] - x),
            float(a[1, 0] * x + a[1, 1] * y + a[1, 2] - y))


def _as3(a: np.ndarray) -> np.ndarray:
    return np.vstack([a, [0.0, 0.0, 1.0]])


class Registration:
    """Camera transform between consecutive frames: phase correlation (translation), refined
    to a similarity by LK flow on a point grid when ``similarity``. :meth:`estimate` returns
    the 2x3 full-resolution transform previous -> current (identity on the first frame) and
    keeps the half-resolution grey frame in ``gray`` for the detector."""

    def __init__(self, similarity: bool = True, downsample: int = 8,
                 min_response: float = 0.08) -> None:
        self.similarity = similarity
        self.motion = GlobalMotion(downsample, min_response)
        self.gray: np.ndarray | None = None
        self.half: np.ndarray | None = None
        self._prev: np.ndarray | None = None
        self._grid: np.ndarray | None = None
        self.last_inliers = 0

    def reset(self) -> None:
        self.motion.reset()
        self._prev = None
        self.gray = None

    def estimate(self, frame: np.ndarray) -> np.ndarray:
        m = self.motion.estimate(frame)
        # half resolution once: the detector reuses both (``half`` in colour, ``gray``)
        # a Gaussian pyramid level (area averaging is 5x cheaper but aliases: more false
        # movers on the validation split)
        self.half = cv2.pyrDown(frame)
        g = self.half if frame.ndim == 2 else cv2.cvtColor(self.half, cv2.COLOR_BGR2GRAY)
        prev, self._prev, self.gray = self._prev, g, g
        a = np.array([[1.0, 0.0, m.dx], [0.0, 1.0, m.dy]])
        if prev is None or prev.shape != g.shape or not self.similarity:
            return a
        refined = self._refine(prev, g, m.dx / 2.0, m.dy / 2.0)
        if refined is not None:
            a = refined
            a[:, 2] *= 2.0  # half -> full resolution (the linear part is scale-free)
        return a

    def _refine(self, prev: np.ndarray, cur: np.ndarray, dx: float, dy: float) -> np.ndarray | None:
        h, w = prev.shape
        if self._grid is None or self._grid_shape != (h, w):
            mx, my = max(8, w // 16), max(8, h // 12)
            xs = np.linspace(mx, w - 1 - mx, 16)
            ys = np.linspace(my, h - 1 - my, 12)
            self._grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 1, 2).astype(np.float32)
            self._grid_shape = (h, w)
        p0 = self._grid
        p1 = p0 + np.float32([dx, dy])
        p1, st, _ = cv2.calcOpticalFlowPyrLK(
            prev, cur, p0, p1.copy(), winSize=(11, 11), maxLevel=1,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03),
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
        ok = st.reshape(-1).astype(bool)
        if ok.sum() < 12:
            return None
        a, inl = cv2.estimateAffinePartial2D(p0[ok], p1[ok], method=cv2.RANSAC,
                                             ransacReprojThreshold=1.0, maxIters=200,
                                             refineIters=5)
        self.last_inliers = int(inl.sum()) if inl is not None else 0
        if a is None or self.last_inliers < 12:
            return None
        # The fit must agree with the phase correlation at the frame centre: LK locked on
        # a wrong minimum (after a jump that the pyramid cannot span) would disagree.
        cx, cy = w / 2.0, h / 2.0
        ddx, ddy = displacement(a, cx, cy)
        if math.hypot(ddx - dx, ddy - dy) > 3.0:
            return None
        return a.astype(np.float64)


@dataclass
class _Candidate:
    cid: int
    cx: float
    cy: float
    w: float
    h: float
    vx: float = 0.0
    vy: float = 0.0
    hits: deque = field(default_factory=deque)
    strong: deque = field(default_factory=deque)
    misses: int = 0
    matched: bool = False
    confirmed: bool = False
    #: recent blobs (frame number, x0, y0, x1, y1 in the current frame's coordinates)
    parts: list = field(default_factory=list)

    def extent(self) -> tuple[float, float, float, float] | None:
        """x0, y0, x1, y1 of the union of the recent blobs (None: none kept)."""
        if not self.parts:
            return None
        a = np.asarray([p[1:] for p in self.parts], np.float64)
        # the second most extreme side when there are 4 blobs or more: one stray blob (a
        # neighbour's, a misregistered edge) does not stretch the box
        k = 1 if len(a) >= 4 else 0
        lo, hi = np.sort(a[:, :2], axis=0), np.sort(a[:, 2:], axis=0)
        return (float(lo[k, 0]), float(lo[k, 1]), float(hi[-1 - k, 0]), float(hi[-1 - k, 1]))


class MotionDetector:
    """Small moving objects in a moving camera; see the module docstring.

    ``update(frame_bgr)`` -> (N, 4) float32 boxes x, y, w, h (full resolution) of the
    confirmed movers seen in this frame; ``ids`` then holds their candidate ids (stable
    while the detector keeps seeing the object) and ``transform`` the camera transform of
    this frame (2x3, previous -> current, full resolution).
    """

    def __init__(self, params: DiscoveryParams | None = None,
                 registration: Registration | None = None) -> None:
        self.p = params or DiscoveryParams()
        self.registration = registration or Registration(
            self.p.similarity, self.p.motion_downsample, self.p.motion_min_response)
        self._own_registration = registration is None
        self.reset()

    def reset(self) -> None:
        if self._own_registration:
            self.registration.reset()
        depth = max(self.p.refs) + 1
        self._hist: deque = deque(maxlen=depth)  # (half-res float frame, 3x3 to current)
        self.candidates: list[_Candidate] = []
        self._next_id = 1
        self.transform = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.ids = np.zeros(0, np.int64)
        self.frames = 0
        self.skipped = 0
        self._last_shift = np.zeros(2)
        self.threshold = 0.0

    # -- foreground -----------------------------------------------------------------------
    def _foreground(self, g: np.ndarray) -> np.ndarray | None:
        """Tolerant minimum difference to the reference frames; None when no reference."""
        h, w = g.shape[:2]
        kern = np.ones((3, 3), np.uint8)
        diff = None
        sigma = 0.0
        n = len(self._hist)
        refs = [k for k in self.p.refs if n > k]
        if not refs and self.p.early_refs and n >= 2:
            # the first frames: the oldest frame and the one half-way (the minimum of the two
            # differences still drops each ghost once the target moved its own size)
            refs = sorted({n - 1, (n - 1) // 2})
        for k in refs:
            ref_img, a3 = self._hist[n - 1 - k]
            a = a3[:2].astype(np.float32)
            ref = cv2.warpAffine(ref_img, a, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE).reshape(g.shape)
            hi = cv2.dilate(ref, kern)
            lo = cv2.erode(ref, kern)
            d = cv2.max(cv2.subtract(g, hi), cv2.subtract(lo, g))
            if self.p.edge_tolerance > 0:
                # sharp edges change with the sub-pixel phase of the view (interpolation,
                # blur): allow a share of the reference's local contrast
                d = cv2.scaleAdd(cv2.subtract(hi, lo), -self.p.edge_tolerance, d)
            if d.ndim == 3:  # the channel that differs most (numpy's max over the last
                # axis is ~10x slower than two element-wise maxima)
                c0, c1, c2 = cv2.split(d)
                d = cv2.max(cv2.max(c0, c1), c2)
            d = cv2.max(d, 0.0)
            # pixels the reference did not see (the camera moved) cannot be foreground: the
            # bands inside the reference's mapped edges, plus the 3x3 tolerance
            _blank_unseen(d, a)
            diff = d if diff is None else cv2.min(diff, d)
            plain = np.abs(g[::4, ::4, 1] - ref[::4, ::4, 1]) if g.ndim == 3 else np.abs(
                g[::4, ::4] - ref[::4, ::4])
            sigma = max(sigma, 1.4826 * float(np.median(plain)) / math.sqrt(2.0))
        if diff is None:
            return None
        self.threshold = max(self.p.min_threshold, self.p.n_sigma * sigma)
        return diff

    def _blobs(self, diff: np.ndarray) -> np.ndarray | None:
        """(M, 5) full-resolution x, y, w, h, strength of the blobs; None: frame skipped."""
        mask = (diff > self.threshold).astype(np.uint8)
        if mask.mean() > self.p.max_foreground:
            return None
        b = self.p.border
        if b > 0:  # resampling and new content at the frame edge are not movers
            mask[:b] = 0
            mask[-b:] = 0
            mask[:, :b] = 0
            mask[:, -b:] = 0
        r = self.p.join_px
        joined = cv2.dilate(mask, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        if n <= 1:
            return np.zeros((0, 5), np.float32)
        st = stats[1:].astype(np.float32)
        # undo the dilation (r px a side), then half -> full resolution
        x, y = st[:, 0] + r, st[:, 1] + r
        bw, bh = np.maximum(st[:, 2] - 2 * r, 1), np.maximum(st[:, 3] - 2 * r, 1)
        area = np.bincount(labels[mask > 0], minlength=n)[1:]  # foreground pixels
        boxes = np.stack([2 * x, 2 * y, 2 * bw, 2 * bh], 1)
        size = np.maximum(boxes[:, 2], boxes[:, 3])
        keep = ((size >= self.p.min_size) & (size <= self.p.max_size)
                & (area >= self.p.min_area))
        strength = np.zeros(len(st), np.float32)
        for i in np.flatnonzero(keep):
            x0, y0, ww, hh = (int(v) for v in stats[i + 1, :4])
            patch = diff[y0:y0 + hh, x0:x0 + ww]
            peak = float(patch.max())
            strength[i] = peak / self.threshold
            # tight box: the pixels above half the blob's peak (blur and the overlap of the
            # two ghosts make the thresholded blob larger than the object)
            ys, xs = np.nonzero((patch > max(self.threshold, self.p.box_level * peak))
                                & (labels[y0:y0 + hh, x0:x0 + ww] == i + 1))
            if len(xs):
                boxes[i] = (2 * (x0 + xs.min()), 2 * (y0 + ys.min()),
                            2 * (xs.max() - xs.min() + 1), 2 * (ys.max() - ys.min() + 1))
        out = _merge_near(np.concatenate([boxes, strength[:, None]], 1)[keep],
                          self.p.merge_gap, self.p.merge_size)
        order = np.argsort(-out[:, 4], kind="stable")
        return out[order][: self.p.max_candidates]

    # -- persistence ----------------------------------------------------------------------
    def _associate(self, blobs: np.ndarray | None, a: np.ndarray) -> None:
        p = self.p
        for c in self.candidates:  # predict: camera transform plus the candidate's own motion
            dx, dy = displacement(a, c.cx, c.cy)
            c.cx += dx + c.vx
            c.cy += dy + c.vy
            c.matched = False
            sx, sy = dx + c.vx, dy + c.vy
            c.parts = [(f, x0 + sx, y0 + sy, x1 + sx, y1 + sy) for f, x0, y0, x1, y1 in c.parts
                       if self.frames - f < p.extent_frames]
        if blobs is None:  # skipped frame: nothing seen, nothing missed
            return
        centres = blobs[:, :2] + blobs[:, 2:4] / 2.0
        used = np.zeros(len(blobs), bool)
        pairs = []
        for ci, c in enumerate(self.candidates):
            if len(centres):
                d = np.hypot(centres[:, 0] - c.cx, centres[:, 1] - c.cy)
                gate = max(p.gate_px, p.gate_factor * max(c.w, c.h))
                for bi in np.flatnonzero(d <= gate):
                    pairs.append((float(d[bi]) - (1000.0 if c.confirmed else 0.0), ci, int(bi)))
        pairs.sort()
        match: dict[int, int] = {}
        for _, ci, bi in pairs:  # greedy nearest-first; confirmed candidates choose first
            c = self.candidates[ci]
            if c.matched or used[bi]:
                continue
            used[bi] = c.matched = True
            match[ci] = bi
        boxes = self._absorb(blobs, used, match)
        for ci, bi in match.items():
            c = self.candidates[ci]
            c.strong.append(bool(blobs[bi, 4] >= p.strong_ratio))
            x, y, w, h = boxes[ci]
            if p.extent_frames > 0:
                c.parts.append((self.frames, x, y, x + w, y + h))
            nx, ny = x + w / 2.0, y + h / 2.0
            # scene velocity: the innovation against the camera-compensated prediction
            c.vx = float(np.clip(0.5 * c.vx + 0.5 * (nx - c.cx + c.vx), -p.gate_px, p.gate_px))
            c.vy = float(np.clip(0.5 * c.vy + 0.5 * (ny - c.cy + c.vy), -p.gate_px, p.gate_px))
            c.cx, c.cy = nx, ny
            c.w, c.h = 0.5 * (c.w + w), 0.5 * (c.h + h)
        for c in self.candidates:
            c.hits.append(c.matched)
            if not c.matched:
                c.strong.append(False)
            c.misses = 0 if c.matched else c.misses + 1
            if sum(c.hits) >= p.persist_k or (p.strong_k and sum(c.strong) >= p.strong_k):
                c.confirmed = True
        self.candidates = [c for c in self.candidates if c.misses < p.max_misses]
        for bi in np.flatnonzero(~used):
            if len(self.candidates) >= p.max_candidates:
                break
            x, y, w, h = (float(v) for v in blobs[bi, :4])
            strong = bool(blobs[bi, 4] >= p.strong_ratio)
            c = _Candidate(self._next_id, x + w / 2.0, y + h / 2.0, w, h,
                           hits=deque([True], maxlen=p.persist_n),
                           strong=deque([strong], maxlen=p.persist_n), matched=True)
            if p.extent_frames > 0:
                c.parts.append((self.frames, x, y, x + w, y + h))
            self._next_id += 1
            c.confirmed = p.persist_k <= 1 or (0 < p.strong_k <= 1 and strong)
            self.candidates.append(c)

    def _absorb(self, blobs: np.ndarray, used: np.ndarray, match: dict[int, int]
                ) -> dict[int, tuple[float, float, float, float]]:
        """The box (x, y, w, h) each matched candidate takes this frame: its blob, merged with
        the unmatched blobs whose centres lie within the candidate's extent (fragments of the
        same object: they move with it); those are marked used."""
        out = {ci: tuple(float(v) for v in blobs[bi, :4]) for ci, bi in match.items()}
        m = self.p.absorb_margin
        if m < 0 or used.all():
            return out
        centres = blobs[:, :2] + blobs[:, 2:4] / 2.0
        for ci in match:
            c = self.candidates[ci]
            ext = c.extent()
            if ext is None:
                continue
            x, y, w, h = out[ci]
            x0, y0 = min(ext[0], x), min(ext[1], y)
            x1, y1 = max(ext[2], x + w), max(ext[3], y + h)
            g = m * max(x1 - x0, y1 - y0)
            inside = (~used & (centres[:, 0] >= x0 - g) & (centres[:, 0] <= x1 + g)
                      & (centres[:, 1] >= y0 - g) & (centres[:, 1] <= y1 + g))
            if not inside.any():
                continue
            b = blobs[inside, :4]
            bx0, by0 = min(x, float(b[:, 0].min())), min(y, float(b[:, 1].min()))
            bx1 = max(x + w, float((b[:, 0] + b[:, 2]).max()))
            by1 = max(y + h, float((b[:, 1] + b[:, 3]).max()))
            # fragments within what the candidate already spans; the extent does not grow
            # by absorbing (that would run away over the background's clutter)
            if (bx1 - bx0 > max(x1 - x0, w) + 2 * g or by1 - by0 > max(y1 - y0, h) + 2 * g
                    or max(bx1 - bx0, by1 - by0) > self.p.max_size):
                continue
            used |= inside
            out[ci] = (bx0, by0, bx1 - bx0, by1 - by0)
        return out

    # -- per frame ------------------------------------------------------------------------
    def update(self, frame_bgr: np.ndarray, transform: np.ndarray | None = None) -> np.ndarray:
        """Boxes (N, 4) float32 x, y, w, h of the confirmed movers seen in ``frame_bgr``.
        ``transform``: the camera transform of this frame if the caller's
        :class:`Registration` (shared with this detector) already estimated it."""
        if transform is None:
            transform = self.registration.estimate(frame_bgr)
        self.transform = np.asarray(transform, np.float64)
        self.frames += 1
        if self.p.color and frame_bgr.ndim == 3:
            # colour: a target can match its ground in grey (green on brown) but not in BGR
            src = self.registration.half
        else:
            src = self.registration.gray
        g = cv2.GaussianBlur(src, (3, 3), 0).astype(np.float32)
        # half-resolution transform (translation halves; the linear part is scale-free)
        a_half = self.transform.copy()
        a_half[:, 2] /= 2.0
        step = _as3(a_half)
        for i, (img, a3) in enumerate(self._hist):
            self._hist[i] = (img, step @ a3)
        diff = self._foreground(g)
        self._hist.append((g, np.eye(3)))
        # A camera jump blurs its frame along the jump (the exposure saw the motion): its
        # differences are unreliable, so it is skipped like a registration failure.
        shift = np.asarray(self.transform[:, 2])
        jumped = float(np.hypot(*(shift - self._last_shift))) > self.p.jump_px
        if not jumped or not self.p.settle_after_jump:
            # the shift a jump is judged against is the last *steady* one: the frame after a
            # re-aim moves like the frames before it and is not blurred, so it is used
            self._last_shift = shift
        blobs = None if diff is None or jumped else self._blobs(diff)
        if diff is not None and blobs is None:
            self.skipped += 1
        self._associate(blobs if diff is not None else np.zeros((0, 5), np.float32),
                        self.transform)
        out = [c for c in self.candidates if c.confirmed and c.matched]
        self.ids = np.asarray([c.cid for c in out], np.int64)
        if not out:
            return np.zeros((0, 4), np.float32)
        return np.asarray([self._box(c) for c in out], np.float32).reshape(-1, 4)

    def _box(self, c: _Candidate) -> tuple[float, float, float, float]:
        """The reported box: the union of the candidate's recent blobs when it stays within
        ``max_size`` (else the smoothed latest one)."""
        ext = c.extent()
        if ext is not None and max(ext[2] - ext[0], ext[3] - ext[1]) <= self.p.max_size:
            return (ext[0], ext[1], ext[2] - ext[0], ext[3] - ext[1])
        return (c.cx - c.w / 2.0, c.cy - c.h / 2.0, c.w, c.h)
