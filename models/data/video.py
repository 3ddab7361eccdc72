"""Seeded synthetic sample videos with exact ground truth, and their writers.

``make demo`` needs a video without downloading anything; :func:`generate` renders one from a
:class:`~vistream.models.data.scene.SceneSpec` (the scene, camera and objects are described in
:mod:`vistream.models.data.scene`). The writers put it on disk as a video file, a folder of
images and a ground-truth file (JSON or CSV).

Run ``python -m vistream.models.data --help`` for a small command-line front end.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vistream.models.data.scene import (
    BACKGROUNDS,
    STREAM_NOISE,
    STREAM_OBJECTS,
    SceneSpec,
    SyntheticObject,
    background_canvas,
    boxes_visible,
    camera_jumps,
    camera_path,
    composite,
    make_object,
    seeded_rng,
    simulate_track,
    view,
)

__all__ = [
    "SyntheticVideo",
    "generate",
    "main",
    "read_ground_truth",
    "write_ground_truth",
    "write_image_folder",
    "write_video",
]

logger = logging.getLogger("vistream.synthetic")


@dataclass
class SyntheticVideo:
    """A generated clip and its ground truth.

    Attributes:
        frames: ``n_frames`` BGR uint8 images of shape (height, width, 3).
        boxes: float64 array (n_frames, n_objects, 4) of x, y, w, h in pixel
            coordinates (pixel (r, c) covers [c, c+1) x [r, r+1)); may extend
            beyond the frame.
        visible: bool array (n_frames, n_objects), true where the box overlaps the frame.
        spec: the :class:`SceneSpec` that produced the clip.
        objects: per-object appearance (shape, BGR colour, size).
        camera: float64 array (n_frames, 2), camera origin x, y relative to frame 0;
            the background at frame t is the frame-0 background shifted by
            ``-camera[t]``.
    """

    frames: list[np.ndarray]
    boxes: np.ndarray
    visible: np.ndarray
    spec: SceneSpec
    objects: list[SyntheticObject] = field(default_factory=list)
    camera: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.spec.width, self.spec.height

    @property
    def fps(self) -> float:
        return self.spec.fps



def generate(spec: SceneSpec) -> SyntheticVideo:
    """Render the clip described by ``spec`` (deterministic in ``spec``)."""
    n, k = spec.n_frames, spec.n_objects
    jumps = camera_jumps(spec)
    camera = camera_path(spec, jumps)
    canvas, offset = background_canvas(spec, camera)

    objects: list[SyntheticObject] = []
    boxes = np.zeros((n, k, 4), np.float64)
    for i in range(k):
        rng = seeded_rng(spec.seed, STREAM_OBJECTS, i)
        obj = make_object(i, spec, rng)
        objects.append(obj)
        boxes[:, i] = simulate_track(obj, spec, jumps, rng)
    visible = boxes_visible(boxes, spec.width, spec.height)

    noise_rng = seeded_rng(spec.seed, STREAM_NOISE)
    frames: list[np.ndarray] = []
    for t in range(n):
        frame = view(canvas, camera[t] + offset, spec.width, spec.height).astype(np.float32)
        for i, obj in enumerate(objects):
            if visible[t, i]:
                composite(frame, obj, boxes[t, i])
        if spec.noise_sigma > 0:
            noise = noise_rng.standard_normal(frame.shape, dtype=np.float32)
            frame += noise * np.float32(spec.noise_sigma)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return SyntheticVideo(
        frames=frames, boxes=boxes, visible=visible, spec=spec, objects=objects, camera=camera
    )


# --------------------------------------------------------------------------- writers


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def _try_write(video: SyntheticVideo, target: Path, fourcc: str) -> str | None:
    """Write with one codec; return None on success or the reason it failed."""
    writer = cv2.VideoWriter(
        str(target), cv2.VideoWriter_fourcc(*fourcc), float(video.fps), video.size
    )
    try:
        if not writer.isOpened():
            target.unlink(missing_ok=True)
            return "cv2.VideoWriter could not be opened"
        for frame in video.frames:
            writer.write(frame)
    finally:
        writer.release()
    count = _count_frames(target)
    if count != video.n_frames:
        target.unlink(missing_ok=True)
        return f"read back {count} of {video.n_frames} frames"
    return None


def write_video(video: SyntheticVideo, path: str | Path) -> Path:
    """Write ``video`` with cv2.VideoWriter and return the path actually written.

    ``.mp4``/``.m4v``/``.mov`` try the 'mp4v' codec first and fall back to MJPG in
    an ``.avi`` next to it (same stem) when that writer cannot be opened or the
    result does not read back; ``.avi`` uses MJPG directly. The file is verified
    by reading it back and counting frames. Raises OSError when nothing worked.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".avi":
        attempts = [("MJPG", path)]
    elif suffix in (".mp4", ".m4v", ".mov"):
        attempts = [("mp4v", path), ("MJPG", path.with_suffix(".avi"))]
    else:
        raise ValueError(f"unsupported video extension {path.suffix!r} for {str(path)!r}: "
                         "use .mp4 or .avi")
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    for fourcc, target in attempts:
        why = _try_write(video, target, fourcc)
        if why is None:
            if target != path:
                logger.warning("could not write %s with %s (%s); wrote MJPG %s instead",
                               path, attempts[0][0], problems[-1], target)
            return target
        problems.append(f"{fourcc} -> {target.name}: {why}")
    raise OSError(f"could not write video {str(path)!r}: " + "; ".join(problems))


def write_ground_truth(video: SyntheticVideo, path: str | Path) -> Path:
    """Write boxes and visibility to ``.json`` (with spec, objects, camera) or ``.csv``.

    CSV columns: ``frame,object_id,x,y,w,h,visible`` with one row per frame and
    object (invisible ones included, visible = 0/1).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        doc = {
            "format": "vistream-synthetic-gt/1",
            "box_format": "xywh",
            "width": video.spec.width,
            "height": video.spec.height,
            "fps": video.spec.fps,
            "n_frames": video.n_frames,
            "spec": video.spec.to_dict(),
            "objects": [
                {"id": o.id, "shape": o.shape, "color_bgr": list(o.color),
                 "width": o.width, "height": o.height}
                for o in video.objects
            ],
            "camera": None if video.camera is None else video.camera.tolist(),
            "boxes": video.boxes.tolist(),
            "visible": video.visible.tolist(),
        }
        path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["frame", "object_id", "x", "y", "w", "h", "visible"])
            for t in range(video.boxes.shape[0]):
                for i in range(video.boxes.shape[1]):
                    x, y, w, h = (repr(float(v)) for v in video.boxes[t, i])
                    out.writerow([t, i, x, y, w, h, int(video.visible[t, i])])
    else:
        raise ValueError(f"unsupported ground-truth extension {path.suffix!r}: use .json or .csv")
    return path


def read_ground_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(boxes, visible)`` back from a file written by :func:`write_ground_truth`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        n = doc["n_frames"]
        k = len(doc["objects"])
        boxes = np.asarray(doc["boxes"], np.float64).reshape(n, k, 4)
        visible = np.asarray(doc["visible"], bool).reshape(n, k)
        return boxes, visible
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        n = 1 + max((int(r["frame"]) for r in rows), default=-1)
        k = 1 + max((int(r["object_id"]) for r in rows), default=-1)
        boxes = np.zeros((n, k, 4), np.float64)
        visible = np.zeros((n, k), bool)
        for r in rows:
            t, i = int(r["frame"]), int(r["object_id"])
            boxes[t, i] = [float(r[c]) for c in ("x", "y", "w", "h")]
            visible[t, i] = r["visible"] == "1"
        return boxes, visible
    raise ValueError(f"unsupported ground-truth extension {path.suffix!r}: use .json or .csv")


def write_image_folder(
    video: SyntheticVideo,
    folder: str | Path,
    *,
    ext: str = ".png",
    prefix: str = "frame_",
    digits: int = 6,
) -> list[Path]:
    """Write each frame as ``<prefix><index zero-padded to digits><ext>`` in ``folder``.

    ``ext`` is ``.png`` (lossless) or ``.jpg``/``.jpeg`` (quality 95). Returns the paths.
    """
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"unsupported image extension {ext!r}: use .png or .jpg")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() != ".png" else []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(video.frames):
        p = folder / f"{prefix}{t:0{digits}d}{ext}"
        if not cv2.imwrite(str(p), frame, params):
            raise OSError(f"could not write image {str(p)!r}")
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line front end: write a sample video, ground truth and optionally frames."""
    d = SceneSpec()
    p = argparse.ArgumentParser(
        prog="python -m vistream.models.data",
        description="Generate a seeded synthetic video with small moving objects and ground truth.",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--name", default="synthetic", help="file stem (default: synthetic)")
    p.add_argument("--background", default=d.background,
                   help=f"one of {', '.join(BACKGROUNDS)} or an image path")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--frames", type=int, default=d.n_frames)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--objects", type=int, default=d.n_objects)
    p.add_argument("--size", type=int, nargs=2, default=d.object_size, metavar=("MIN", "MAX"))
    p.add_argument("--pan-speed", type=float, default=d.pan_speed)
    p.add_argument("--pan-angle", type=float, default=d.pan_angle)
    p.add_argument("--shake", default="", help="comma-separated frame indices of camera jumps")
    p.add_argument("--shake-px", type=float, default=d.shake_px)
    p.add_argument("--noise", type=float, default=d.noise_sigma)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--format", choices=("mp4", "avi"), default="mp4")
    p.add_argument("--images", action="store_true", help="also write a folder of PNG frames")
    args = p.parse_args(argv)

    try:
        spec = SceneSpec(
            width=args.width, height=args.height, n_frames=args.frames, fps=args.fps,
            n_objects=args.objects, object_size=tuple(args.size), background=args.background,
            pan_speed=args.pan_speed, pan_angle=args.pan_angle,
            shake_frames=tuple(int(s) for s in args.shake.split(",") if s.strip()),
            shake_px=args.shake_px, noise_sigma=args.noise, seed=args.seed,
        )
    except ValueError as exc:
        p.error(str(exc))
    video = generate(spec)
    video_path = write_video(video, args.out / f"{args.name}.{args.format}")
    gt_path = write_ground_truth(video, args.out / f"{args.name}_gt.json")
    print(f"video:        {video_path}")
    print(f"ground truth: {gt_path}")
    if args.images:
        paths = write_image_folder(video, args.out / f"{args.name}_frames")
        print(f"frames:       {paths[0].parent} ({len(paths)} files)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
