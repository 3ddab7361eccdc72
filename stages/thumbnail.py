"""Thumbnail stage: each frame becomes a small :class:`FrameSummary` (size, mean colour,
thumbnail JPEG). It is the foundation's first real stage and a cheap probe of a stream."""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field

from vistream.stages.records import Frame, FrameSummary, Message, encode_image
from vistream.stages.base import Stage, StageParams, register_stage


class ThumbnailParams(StageParams):
    width: int = Field(160, ge=8, le=4096, description="thumbnail width in pixels")
    quality: int = Field(80, ge=1, le=100, description="JPEG quality of the thumbnail")


@register_stage("thumbnail")
class ThumbnailStage(Stage):
    accepts = ("frame",)
    emits = ("frame_summary",)
    Params = ThumbnailParams

    def process(self, batch: list[Message]) -> list[Message]:
        return [summarize_frame(f, self.params.width, self.params.quality) for f in batch]


def summarize_frame(frame: Message, width: int = 160, quality: int = 80) -> FrameSummary:
    if not isinstance(frame, Frame):
        raise TypeError(f"expected a frame, got {frame.kind}")
    img = frame.image
    h, w = img.shape[:2]
    tw = min(width, w)
    th = max(1, round(h * tw / w))
    small = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
    return FrameSummary(
        frame_id=frame.frame_id, stream_id=frame.stream_id, width=w, height=h,
        timestamp_ms=frame.timestamp_ms,
        mean_bgr=img.reshape(-1, 3).mean(axis=0).astype(np.float32),
        thumbnail=np.frombuffer(encode_image(small, quality=quality), np.uint8),
    )
