"""Relay stage: re-emits each frame unchanged after the runner has validated it.

Useful to copy or re-partition a stream, to filter bad records into the DLQ, and as the
no-work stage of ``vistream bench bus`` (which measures the bus, not a model)."""

from __future__ import annotations

from vistream.stages.records import Message
from vistream.stages.base import Stage, register_stage


@register_stage("relay")
class RelayStage(Stage):
    accepts = ("frame",)
    emits = ("frame",)

    def process(self, batch: list[Message]) -> list[Message]:
        return list(batch)
