"""What a stage that keeps per-stream state answers a redelivered frame.

Delivery is at least once, so a frame may come twice. A stage whose output depends on the
frames before it (a tracker, a detector) must not process a frame twice: it answers a frame
it still remembers with the very outputs it gave the first time, and skips a frame older
than the last one it processed that it no longer remembers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from vistream.stages.records import Frame, Message


class FrameReplay:
    """The outputs of a stream's last ``keep`` frames by frame id, and the last sequence number."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.last_seq = -1
        self.outputs: OrderedDict[str, tuple[Message, ...]] = OrderedDict()

    def answer(self, frame: Frame) -> list[Message] | None:
        """The outputs to give again for an already processed frame ([] for one too old to be
        remembered), or None for a new frame, which the stage processes."""
        if frame.frame_id in self.outputs:
            return list(self.outputs[frame.frame_id])
        if frame.seq <= self.last_seq:
            return []
        return None

    def record(self, frame: Frame, outputs: Sequence[Message]) -> None:
        self.last_seq = frame.seq
        self.outputs[frame.frame_id] = tuple(outputs)
        while len(self.outputs) > self.keep:
            self.outputs.popitem(last=False)
