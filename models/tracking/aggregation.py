"""Aggregation-signature tracker for small objects (after arXiv 1910.10859, IEEE TIP 2019).

What the paper says (its abstract and ``research/METHODS.md``; the paper itself is not
available here): small targets (under 1 % of the image) look vague and variable, and camera
shake makes them drift suddenly and far; it proposes a saliency-based descriptor, the
*aggregation signature*, that represents small objects distinctively and "matches the
foreground object more accurately with a high probability"; the group builds on
correlation-filter (KCF-style) trackers. The construction, the base tracker, the
re-detection and every constant are unknown: everything below is our design, for 6-24 px
targets in 640x480 video at several hundred frames per second on one core.

The aggregation signature
-------------------------
Local descriptors are pixel colours quantised to an 8x8x8 BGR cube (32 levels a channel:
coarse enough to be stable under noise, fine enough to separate hues). They are
*aggregated* over the target box into a histogram in which every pixel is weighted by its
**centre-surround saliency** - its colour distance to the mean colour of a surrounding ring,
in units of the ring's spread - times a kernel favouring the box centre. The ring (box grown
``context`` times, minus a margin) gives the local-background histogram. Both are smoothed
over neighbouring bins ([1, 2, 1] per axis: tolerance to noise and slow lighting drift) and
combined into a per-bin foreground likelihood ``L(b) = p_fg(b) / (p_fg(b) + p_bg(b) + eps)``.
A small box always contains background pixels (corners of a disc, blur); saliency weighting
discounts them, so colours shared with the surround get ``L <= ~0.5`` and colours unique to
the target ``L ~ 1``. The signature score of a candidate box is its mean ``L``, relative to
the target's own score in the first frame (``sig_ref``). Why "with high probability": if
the target's colours are rarer around it than on it (the premise of saliency), the true box
scores higher than a background box in expectation, and as the box averages ``n``
independent-ish pixels, the chance that a background box matches it falls off like
``exp(-c n)`` (Hoeffding) - our reading of the paper's claim, not its proof.

The signature also fixes the *appearance channel*: the saliency-weighted mean colour minus
the surround's is the axis along which the target stands out; blended with luminance it
projects BGR onto the single float channel the template is matched on.

The tracker, per frame
----------------------
1. **Camera motion** (:class:`GlobalMotion`): phase correlation of the frame and the
   previous one, 8x downsampled, gives the global shift (~0.1 px error, < 1 px at 30-120 px
   jumps on the benchmark, ~0.2 ms). The prediction is the previous centre + camera shift
   (+ a damped velocity of the target in the scene). This is what keeps the search on the
   target through sudden large drift: it starts where the *scene* went.
2. **Local match** in a window of radius ``max(min_radius, radius_factor * size)`` around
   the prediction, two maps: normalised cross-correlation (``TM_CCOEFF_NORMED``) of the
   template on the projected channel, and the signature score at every position. The
   template is the target box plus a ``margin`` whose value is *not learned*: at match time
   it is set to the mean of the current window (the local background level where the target
   is now). So the template carries the target's contrast to its present surroundings,
   whose polarity flips as it crosses brighter or darker ground, and no background texture,
   which would pull the match towards where the background went. (A correlation filter
   with the usual 2.5x padding would be trained on a window that is ~98 % background for a
   6 px target; that reasoning, not a comparison, is why none is used.)
   Fusion: ``(1 - a) * NCC + a * signature`` where ``a`` starts at ``alpha`` and is
   re-weighted per frame by how sharply each map peaks ((max - mean) / std), minus a mild
   quadratic penalty for distance from the prediction; the arg-max, refined by a parabola,
   is the new centre.
3. **Confidence** ``score = 0.5 * max(NCC, 0) + 0.5 * min(signature, 1)`` at the match, in
   [0, 1]. Thresholds are absolute and relative to ``typical`` (a slow running mean of the
   score on confident frames): lost below ``max(lost_threshold, relative_lost * typical)``;
   model update at or above ``max(update_threshold, relative_update * typical)``, or when
   the NCC alone is as good as usual (it ignores lighting, so the colour signature can
   follow an illumination change that lowers its own score).
4. **Re-detection**, in the same frame, when the local match fails: (a) the match again in
   a window ``wide_factor`` times larger, with both the current and the first template;
   (b) global: the signature likelihood is back-projected over the whole frame
   (``cv2.calcBackProject``), box-filtered at the target size, and its ``n_candidates``
   strongest peaks are verified by a short-radius match. A candidate near the prediction
   needs ``redetect_threshold``; a far one (a jump the motion estimate missed, or a
   look-alike) needs ``relative_redetect * typical`` and must beat any other distinct peak
   by ``ambiguity_margin``. Nothing convincing: *lost* - the reported box is the
   camera-compensated prediction, ``lost=True``, the score is 0, and the search repeats
   every frame.
5. **Routine checks**: while unsure (score below the update level) every
   ``recheck_every``-th frame, and every ``global_every`` frames anyway, the global search
   runs and a clearly better candidate (``switch_margin``, doubled when far) replaces the
   local match: this is how a track that slid onto a look-alike gets back.
6. **Out of view**: when the camera moves the predicted box entirely out of the frame the
   tracker reports it lost there, follows the camera, and looks for the target coming back
   (far rules) every ``recheck_every`` frames instead of matching background at the border.
7. **Update** on confident frames: running averages of the template (``lr_template``) and
   of the signature histograms (``lr_signature``, every ``signature_every`` frames).

Choices the paper leaves open, and what was chosen
---------------------------------------------------
* Base matcher: NCC on a saliency-projected channel fused with the signature
  (Staple-like), not a correlation filter, for the reason in step 2.
* No scale search by default (``scale_step=0``): small targets seldom change size within
  seconds, and a scale search costs IoU on them; ``scale_step=1.05`` enables a three-scale
  search for targets of >= 16 px at the working scale.
* Working scale: targets larger than ``work_size`` px are matched on a resampled window, so
  the cost per frame is bounded whatever the target size (useful on OTB sequences).
* Colour space BGR 8x8x8 (512 bins): one LUT back-projection; illumination is handled by
  the NCC-driven updates rather than by an invariant colour space (normalised chromaticity
  is undefined on dark targets and noisy on grey ones; not evaluated here).
* Camera motion by phase correlation, one estimate per frame shared by all targets of a
  stream (pass ``motion=`` to :meth:`AggregationTracker.update`).
* The constants of :class:`AggregationParams` were set on benchmark seeds other than the
  evaluation suite's (``docs/tracking.md``) and are the defaults of every reported number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vistream.models.tracking.motion import GlobalMotion, Motion
from vistream.models.tracking.signature import BINS, LUMA, backproject, bin_index, lut_as_mat, smooth3

# GlobalMotion and Motion live in models.tracking.motion; callers import them from here too
__all__ = ["AggregationParams", "AggregationTracker", "GlobalMotion", "Motion", "TrackOutput"]


@dataclass
class AggregationParams:
    """Tracker settings. Sizes in working-scale pixels unless said otherwise."""

    #: a target whose larger side exceeds this is matched on a resampled window
    work_size: int = 24
    #: search radius = max(min_radius, radius_factor * target size)
    min_radius: int = 12
    radius_factor: float = 1.0
    #: the window of the first re-detection attempt is this many times the radius
    wide_factor: float = 3.0
    #: template context margin, as a share of the target size (at least 1 px)
    margin: float = 0.15
    #: weight of the signature score in the fused response (prior, before adaptation)
    alpha: float = 0.4
    #: re-weight NCC and signature per frame by how sharply each peaks
    adaptive_fusion: bool = True
    #: quadratic penalty at the edge of the search radius
    motion_penalty: float = 0.1
    #: confidence thresholds
    lost_threshold: float = 0.45
    redetect_threshold: float = 0.55
    update_threshold: float = 0.6
    #: the same, relative to the running mean score of confident frames
    relative_lost: float = 0.5
    relative_update: float = 0.75
    relative_redetect: float = 0.85
    #: a far candidate must beat the runner-up by this much
    ambiguity_margin: float = 0.05
    #: below update_threshold, every recheck_every-th frame a global candidate replaces
    #: the local match if it scores switch_margin higher
    switch_margin: float = 0.1
    recheck_every: int = 4
    #: while tracking, a global check every this many frames (0 = never)
    global_every: int = 10
    #: rate of the running mean of confident scores ("typical")
    lr_typical: float = 0.05
    #: learning rates of the template and of the signature histograms
    lr_template: float = 0.08
    lr_signature: float = 0.06
    #: the signature is re-estimated every this many confident frames
    signature_every: int = 2
    #: ring around the target that defines the local background (box size multiple)
    context: float = 3.0
    #: global re-detection: candidates verified per frame (0 disables global search)
    n_candidates: int = 6
    #: velocity smoothing (0 = no velocity prediction)
    velocity_gain: float = 0.5
    #: three-scale search step (0 = no scale search)
    scale_step: float = 0.0
    #: camera motion estimation: downsampling factor and minimum phase-correlation peak
    motion_downsample: int = 8
    motion_min_response: float = 0.08


@dataclass(frozen=True, slots=True)
class TrackOutput:
    """One frame's result: ``box`` = (x, y, w, h) in pixels, confidence in [0, 1], lost flag."""

    box: tuple[float, float, float, float]
    score: float
    lost: bool


# --------------------------------------------------------------------------- helpers


def _crop(image: np.ndarray, cx: float, cy: float, w: int, h: int, k: float) -> np.ndarray:
    """Window of w x h working pixels centred on (cx, cy) (continuous image coordinates,
    pixel c spans [c, c+1)), sampled every k image pixels; borders replicate."""
    ix, iy = cx - 0.5, cy - 0.5  # index coordinates: the centre of pixel c is c
    m = np.array([[k, 0.0, ix - k * (w - 1) / 2.0], [0.0, k, iy - k * (h - 1) / 2.0]])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _parabola(left: float, mid: float, right: float) -> float:
    den = left - 2.0 * mid + right
    if den >= 0 or not math.isfinite(den):
        return 0.0
    return float(np.clip(0.5 * (left - right) / den, -0.5, 0.5))


def _sharpness(x: np.ndarray) -> float:
    """How clearly a response map peaks: (max - mean) / (std + 0.05)."""
    mean, std = cv2.meanStdDev(x)
    return (cv2.minMaxLoc(x)[1] - float(mean[0, 0])) / (float(std[0, 0]) + 0.05)


@dataclass
class _Match:
    cx: float
    cy: float
    ncc: float
    sig: float
    score: float
    scale: float = 1.0


class AggregationTracker:
    """Single-target tracker. ``init(image, box)`` then ``update(image)`` per frame.

    ``motion``: ``True`` (default) gives the tracker its own :class:`GlobalMotion`; ``False``
    means the caller passes ``motion=`` to :meth:`update` (one estimate per frame shared by
    all targets of a stream) or that no camera motion is compensated.
    """

    name = "aggregation"

    def __init__(self, params: AggregationParams | None = None, motion: bool = True) -> None:
        self.p = params or AggregationParams()
        self.motion = (GlobalMotion(self.p.motion_downsample, self.p.motion_min_response)
                       if motion else None)
        self.initialized = False
        self.lost = False
        self.score = 0.0
        self.frames_lost = 0

    # -- geometry ---------------------------------------------------------------------
    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.w / 2.0, self.cy - self.h / 2.0, self.w, self.h)

    def _geometry(self) -> None:
        """Working scale, template and search sizes, and the signature's sampling masks."""
        p = self.p
        self.k = max(1.0, max(self.w, self.h) / p.work_size)
        tw, th = self.w / self.k, self.h / self.k
        self.bw, self.bh = max(1, round(tw)), max(1, round(th))
        size = max(tw, th)
        self.m = max(1, round(p.margin * size))
        self.tw, self.th = self.bw + 2 * self.m, self.bh + 2 * self.m
        self.radius = max(p.min_radius, round(p.radius_factor * size))
        self.wide = int(round(self.radius * p.wide_factor))
        # signature window: the box, a margin, and a ring of background around it
        ctx = p.context
        self.cw = max(self.tw + 4, round(ctx * self.bw)) | 1
        self.ch = max(self.th + 4, round(ctx * self.bh)) | 1
        yy, xx = np.mgrid[0:self.ch, 0:self.cw].astype(np.float32)
        dx = (xx - (self.cw - 1) / 2.0) / (self.bw / 2.0)
        dy = (yy - (self.ch - 1) / 2.0) / (self.bh / 2.0)
        inside = (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)
        ring = (np.abs(dx) > 1.0 + 2.0 * self.m / self.bw) | (np.abs(dy) > 1.0 + 2.0 * self.m / self.bh)
        self._inside = np.flatnonzero(inside)
        self._ring = np.flatnonzero(ring)
        self._kernel = (1.0 - 0.5 * np.minimum(dx ** 2 + dy ** 2, 1.0)).ravel()[self._inside]
        tmask = np.ones((self.th, self.tw), bool)
        tmask[self.m:self.m + self.bh, self.m:self.m + self.bw] = False
        self._tmargin = tmask

    # -- model ------------------------------------------------------------------------
    def _project(self, win: np.ndarray) -> np.ndarray:
        """One float channel: the colour axis along which the target stands out."""
        return cv2.transform(win, self.proj).astype(np.float32, copy=False)

    def _template(self, image: np.ndarray, cx: float, cy: float) -> np.ndarray:
        """Appearance template on the projected channel: the target box as seen. Its context
        margin is *not* learned: at match time it is set to the mean of the current search
        window, i.e. the local background level where the target is now. The template then
        carries the target's contrast to its present surroundings (whose polarity changes
        as the target crosses brighter or darker background) but no background texture,
        which would pull the match towards where the background went instead of where the
        target went."""
        return self._project(_crop(image, cx, cy, self.tw, self.th, self.k).astype(np.float32))

    def _histograms(self, image: np.ndarray, cx: float, cy: float,
                    set_projection: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The aggregation signature's two halves: the saliency-weighted foreground colour
        histogram and the ring (local background) histogram, both normalised."""
        win = _crop(image, cx, cy, self.cw, self.ch, self.k)
        pix = win.reshape(-1, 3)
        ring = pix[self._ring].astype(np.float32)
        fgp = pix[self._inside].astype(np.float32)
        mu = ring.mean(axis=0)
        sd = float(np.sqrt(((ring - mu) ** 2).sum(axis=1).mean())) + 8.0
        saliency = np.sqrt(((fgp - mu) ** 2).sum(axis=1)) / sd  # centre-surround contrast
        weights = saliency * self._kernel
        if weights.sum() <= 1e-6:
            weights = self._kernel
        if set_projection:
            # Saliency-weighted mean colour minus the surround: the target's contrast axis,
            # blended with luminance so that structure inside the target is kept.
            diff = (weights[:, None] * fgp).sum(axis=0) / weights.sum() - mu
            n = float(np.linalg.norm(diff))
            d = LUMA / np.linalg.norm(LUMA) + (diff / n if n > 1e-3 else 0.0)
            self.proj = (d / np.linalg.norm(d)).reshape(1, 3).astype(np.float32)
        n3 = BINS ** 3
        fg = np.bincount(bin_index(fgp.astype(np.uint8)), weights=weights, minlength=n3)
        bg = np.bincount(bin_index(pix[self._ring]), minlength=n3).astype(np.float64)
        fg = smooth3(fg.reshape(BINS, BINS, BINS))
        bg = smooth3(bg.reshape(BINS, BINS, BINS))
        return fg / max(fg.sum(), 1e-9), bg / max(bg.sum(), 1e-9)

    def _likelihood(self) -> None:
        lk = self.h_fg / (self.h_fg + self.h_bg + 1e-3)
        self.lut = np.ascontiguousarray(255.0 * lk, dtype=np.float32)
        self.lut_mat = lut_as_mat(self.lut)

    def _sig_map(self, win: np.ndarray) -> np.ndarray:
        """Mean likelihood over the target box at each template position of ``win``."""
        bp = backproject(win, self.lut, self.lut_mat)
        ii = cv2.integral(bp, sdepth=cv2.CV_32F)
        H, W = win.shape[:2]
        nr, nc = H - self.th + 1, W - self.tw + 1
        o, bw, bh = self.m, self.bw, self.bh
        s = (ii[o + bh:o + bh + nr, o + bw:o + bw + nc] - ii[o:o + nr, o + bw:o + bw + nc]
             - ii[o + bh:o + bh + nr, o:o + nc] + ii[o:o + nr, o:o + nc])
        return s * (1.0 / (255.0 * bw * bh))

    def init(self, image: np.ndarray, box) -> None:
        """Start tracking ``box`` = (x, y, w, h) in ``image`` (BGR uint8)."""
        x, y, w, h = (float(v) for v in box)
        if not (w > 0 and h > 0) or not all(map(math.isfinite, (x, y, w, h))):
            raise ValueError(f"box must be finite with a positive size, got {box!r}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("image must be BGR uint8 (H, W, 3)")
        self.w, self.h = w, h
        self.cx, self.cy = x + w / 2.0, y + h / 2.0
        self._geometry()
        self.h_fg, self.h_bg = self._histograms(image, self.cx, self.cy, set_projection=True)
        self._likelihood()
        self.template = self._template(image, self.cx, self.cy)
        self.template0 = self.template.copy()
        win = _crop(image, self.cx, self.cy, self.tw, self.th, self.k)
        self.sig_ref = max(float(self._sig_map(win)[0, 0]), 0.05)
        self.vx = self.vy = 0.0
        self.lost = False
        self.score = 1.0
        self.typical = 1.0
        self.typical_ncc = 1.0
        self.frames_lost = 0
        self.unsure = 0
        self.updates = 0
        self.frames_out = 0
        self.since_check = 0
        self.initialized = True
        if self.motion is not None:
            self.motion.reset()
            self.motion.estimate(image)

    # -- matching ---------------------------------------------------------------------
    def _match(self, image: np.ndarray, cx: float, cy: float, radius: int,
               penalty: float, templates: tuple[np.ndarray, ...], scale: float = 1.0) -> _Match:
        k = self.k * scale
        win = _crop(image, cx, cy, self.tw + 2 * radius, self.th + 2 * radius, k)
        proj = self._project(win.astype(np.float32))
        level = cv2.mean(proj)[0]
        ncc = None
        for t in templates:
            t = t.copy()
            t[self._tmargin] = level
            r = cv2.matchTemplate(proj, t, cv2.TM_CCOEFF_NORMED)
            ncc = r if ncc is None else np.maximum(ncc, r)
        cv2.patchNaNs(ncc, 0.0)
        sig = self._sig_map(win) * (1.0 / self.sig_ref)
        # Reliability-weighted fusion: each map counts by how clearly it peaks.
        a = self.p.alpha
        if self.p.adaptive_fusion:
            sharp_n = _sharpness(ncc)
            sharp_s = _sharpness(sig)
            a = min(0.85, max(0.15, a * sharp_s / (a * sharp_s + (1 - a) * sharp_n + 1e-6)))
        fused = (1.0 - a) * ncc + a * np.minimum(sig, 1.2)
        if penalty > 0:
            d = np.arange(-radius, radius + 1, dtype=np.float32) * (1.0 / max(radius, 1))
            d2 = d * d
            fused -= penalty * (d2[:, None] + d2[None, :])
        r, c = np.unravel_index(int(np.argmax(fused)), fused.shape)
        nr, nc = fused.shape
        ox = _parabola(fused[r, c - 1], fused[r, c], fused[r, c + 1]) if 0 < c < nc - 1 else 0.0
        oy = _parabola(fused[r - 1, c], fused[r, c], fused[r + 1, c]) if 0 < r < nr - 1 else 0.0
        n, s = float(ncc[r, c]), float(sig[r, c])
        score = 0.5 * max(n, 0.0) + 0.5 * min(s, 1.0)
        return _Match(cx + (c + ox - radius) * k, cy + (r + oy - radius) * k, n, s, score, scale)

    def _local(self, image: np.ndarray, cx: float, cy: float, radius: int) -> _Match:
        best = self._match(image, cx, cy, radius, self.p.motion_penalty, (self.template,))
        if self.p.scale_step > 1.0 and max(self.bw, self.bh) >= 16:
            for sc in (1.0 / self.p.scale_step, self.p.scale_step):
                m = self._match(image, cx, cy, radius, self.p.motion_penalty,
                                (self.template,), sc)
                if m.score > best.score + 0.01:
                    best = m
        return best

    def _candidates(self, image: np.ndarray) -> list[tuple[float, float]]:
        """Centres of the strongest signature responses over the whole frame."""
        img = image
        if self.k > 1.0:
            H, W = image.shape[:2]
            img = cv2.resize(image, (max(1, round(W / self.k)), max(1, round(H / self.k))),
                             interpolation=cv2.INTER_AREA)
        bp = backproject(img, self.lut, self.lut_mat)
        s = cv2.boxFilter(bp, cv2.CV_32F, (self.bw, self.bh))
        floor = 0.5 * 255.0 * self.sig_ref
        out: list[tuple[float, float]] = []
        # strongest peaks, suppressing a target-sized neighbourhood around each one
        sx, sy = max(2, self.bw), max(2, self.bh)
        for _ in range(self.p.n_candidates):
            _, val, _, (x, y) = cv2.minMaxLoc(s)
            if val < floor:
                break
            out.append(((x + 0.5) * self.k, (y + 0.5) * self.k))
            s[max(0, y - sy):y + sy + 1, max(0, x - sx):x + sx + 1] = 0.0
        return out

    def _redetect(self, image: np.ndarray, cx: float, cy: float, far_only: bool = False,
                  wide: bool = True) -> _Match | None:
        """Wide local search plus verified global candidates; None if nothing convincing.
        ``far_only``: the prediction is outside the frame, every candidate must convince on
        its own. ``wide=False`` skips the wide local search (routine checks, where the local
        match already covers the neighbourhood)."""
        p = self.p
        templates = (self.template, self.template0)
        cands = ([self._match(image, cx, cy, self.wide, 0.05, templates)]
                 if wide and not far_only else [])
        if p.n_candidates > 0:
            small_r = max(3, max(self.bw, self.bh) // 2)
            for ccx, ccy in self._candidates(image):
                cands.append(self._match(image, ccx, ccy, small_r, 0.0, templates))
        # Near the camera-compensated prediction a plain threshold; far from it (a jump the
        # motion estimate missed, or a look-alike elsewhere) the candidate must score close
        # to the target's usual score.
        diag = math.hypot(*image.shape[:2])
        near = -1.0 if far_only else self.wide * self.k
        far_need = max(p.redetect_threshold, p.relative_redetect * self.typical)
        ok = []
        for m in cands:
            d = math.hypot(m.cx - cx, m.cy - cy)
            m_near = d <= near
            if m.score >= (p.redetect_threshold if m_near else far_need):
                ok.append((m, m_near, d))
        if not ok:
            return None
        best, best_near, _ = max(ok, key=lambda o: o[0].score - 0.05 * o[2] / diag)
        if not best_near:
            # Far from where the target should be: only an unambiguous winner. Candidates
            # closer than the target size to the winner are the same peak, not rivals.
            size = max(self.w, self.h)
            rivals = [m.score for m in cands if m is not best
                      and math.hypot(m.cx - best.cx, m.cy - best.cy) > size]
            if rivals and best.score - max(rivals) < p.ambiguity_margin:
                return None
        return best

    # -- per frame --------------------------------------------------------------------
    def _out_of_view(self, image: np.ndarray, cx: float, cy: float) -> bool:
        H, W = image.shape[:2]
        return (cx + self.w / 2 <= 0 or cx - self.w / 2 >= W
                or cy + self.h / 2 <= 0 or cy - self.h / 2 >= H)

    def update(self, image: np.ndarray, motion: Motion | None = None) -> TrackOutput:
        """Track into the next frame. ``motion``: the camera shift of this frame if the
        caller estimated it (see :class:`GlobalMotion`); otherwise the tracker's own."""
        if not self.initialized:
            raise RuntimeError("call init(image, box) before update(image)")
        p = self.p
        if motion is None and self.motion is not None:
            motion = self.motion.estimate(image)
        dx, dy = (motion.dx, motion.dy) if motion is not None else (0.0, 0.0)
        px, py = self.cx + dx, self.cy + dy
        if not self.lost:
            px, py = px + self.vx, py + self.vy

        m: _Match | None = None
        local_match = False
        if self._out_of_view(image, px, py):
            # The camera moved the target out of the frame: follow the camera, and look for
            # the target coming back every few frames (anywhere: strict threshold).
            self.frames_out += 1
            if self.frames_out % p.recheck_every == 0:
                m = self._redetect(image, px, py, far_only=True)
        elif not self.lost:
            m = self._local(image, px, py, self.radius)
            local_match = True
            if m.score < max(p.lost_threshold, p.relative_lost * self.typical):
                m = self._redetect(image, px, py)
                local_match = False
            else:
                # Unsure (every few frames) or routinely (every ``global_every`` frames):
                # does something elsewhere match clearly better? The local match may have
                # slid onto a look-alike, or latched onto one after a re-detection.
                unsure = m.score < max(p.update_threshold, p.relative_update * self.typical)
                self.unsure = self.unsure + 1 if unsure else 0
                self.since_check += 1
                if (unsure and self.unsure % p.recheck_every == 1) or (
                        p.global_every and self.since_check >= p.global_every):
                    self.since_check = 0
                    alt = self._redetect(image, px, py, wide=unsure)
                    if alt is not None:
                        far = math.hypot(alt.cx - m.cx, alt.cy - m.cy) > self.wide * self.k
                        margin = p.switch_margin * (2.0 if far else 1.0)
                        if alt.score > m.score + margin:
                            m = alt
                            local_match = False
        else:
            m = self._redetect(image, px, py)

        if m is None:
            self.lost = True
            self.frames_lost += 1
            self.cx, self.cy = px, py
            self.vx = self.vy = 0.0
            self.score = 0.0 if self.frames_lost > 1 else self.score * 0.5
            return TrackOutput(self.box, float(min(self.score, p.lost_threshold * 0.99)), True)

        # Confident enough to learn from: a good fused score, or - for a local match - a
        # template match as good as usual (NCC ignores illumination, so the colour
        # signature can follow a lighting change that lowers its own score).
        confident = m.score >= max(p.update_threshold, p.relative_update * self.typical) or (
            local_match and m.ncc >= max(p.update_threshold, p.relative_update * self.typical_ncc))
        g = p.velocity_gain
        vmax = 0.5 * self.radius * self.k
        if not self.lost and confident and g > 0:
            # velocity of the target in the scene (camera shift removed)
            self.vx = float(np.clip((1 - g) * self.vx + g * (m.cx - self.cx - dx), -vmax, vmax))
            self.vy = float(np.clip((1 - g) * self.vy + g * (m.cy - self.cy - dy), -vmax, vmax))
        else:
            self.vx *= 0.5
            self.vy *= 0.5
        self.frames_out = 0
        self.cx, self.cy = m.cx, m.cy
        if m.scale != 1.0:
            f = 1.0 + 0.5 * (m.scale - 1.0)
            self.w, self.h = self.w * f, self.h * f
            old = (self.tw, self.th)
            self._geometry()
            if (self.tw, self.th) != old:
                self.template = self._template(image, self.cx, self.cy)
                self.template0 = cv2.resize(self.template0, (self.tw, self.th))
        self.lost = False
        self.frames_lost = 0
        self.score = float(m.score)
        if confident:
            self.typical += p.lr_typical * (m.score - self.typical)
            self.typical_ncc += p.lr_typical * (m.ncc - self.typical_ncc)
            cv2.accumulateWeighted(self._template(image, self.cx, self.cy), self.template,
                                   p.lr_template)
            self.updates += 1
            if p.lr_signature > 0 and self.updates % p.signature_every == 0:
                fg, bg = self._histograms(image, self.cx, self.cy)
                a = p.lr_signature
                self.h_fg = (1 - a) * self.h_fg + a * fg
                self.h_bg = (1 - a) * self.h_bg + a * bg
                self._likelihood()
        return TrackOutput(self.box, self.score, False)
