"""What a stage is, and the registry that names them.

A stage is plain code: it gets a batch of messages (frames or typed results) and returns the
messages it derives from them. It never touches the bus: :class:`pipeline.runner.StageRunner`
polls, decodes, routes outputs, dead-letters, commits and measures.

Rules a stage follows:

* ``accepts`` names the message kinds it takes; anything else is dead-lettered by the runner;
* ``emits`` names the kinds it returns; the pipeline config routes each kind to a topic;
* it is idempotent by frame id: delivery is at least once, so a frame may come twice;
* it may raise: the runner then retries the batch one message at a time and dead-letters
  only the messages that still fail, with the exception as the reason.

Parameters are a pydantic model (``Params``) so a YAML typo is a readable error at start-up.
A new stage is a module in ``stages/`` with a ``@register_stage("name")`` class; it is found
automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

import vistream.stages
from vistream.models.registry import Registry
from vistream.pipeline.bus.base import TopicPartition
from vistream.pipeline.envelope import Message


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    name: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ("frame",)
    emits: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def setup(self) -> None:
        """Load models or open files; called once in the process that runs the stage."""

    def process(self, batch: list[Message]) -> list[Message]:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; called once on shutdown (after the last commit)."""

    def start_offsets(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Where to start reading newly assigned input partitions.

        The default (empty) resumes at the group's committed offsets. A stage that keeps its
        own snapshots returns the offsets its snapshot covers, so a restart replays from there;
        each message carries ``origin`` = (topic, partition, offset) to track them.
        """
        return {}


#: every stage type by name (a :class:`models.registry.Registry`), filled by ``@register_stage``
STAGES: Registry[type[Stage]] = Registry("stage type")
S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator: register a stage class as type ``name`` (which becomes its ``name``)."""

    def deco(cls: S) -> S:
        STAGES.register(cls, name=name)
        cls.name = name
        return cls

    return deco


_NOT_STAGES = {"base", "ingest", "records"}


def _load_builtin_stages() -> None:
    """Import every module of the ``stages`` package: their ``@register_stage`` decorators
    fill the registry. Stage modules therefore keep heavy imports (torch, faiss) inside
    ``setup()`` or functions, so that listing stages and validating configs stays fast."""
    for info in pkgutil.iter_modules(vistream.stages.__path__):
        if info.name not in _NOT_STAGES and not info.name.startswith("_"):
            importlib.import_module(f"vistream.stages.{info.name}")


def stage_types() -> dict[str, type[Stage]]:
    _load_builtin_stages()
    return dict(STAGES.items())


def get_stage_class(type_name: str) -> type[Stage]:
    """The stage class of ``type_name``; an unknown type raises a KeyError listing the known."""
    _load_builtin_stages()
    return STAGES.get(type_name)


def create_stage(type_name: str, params: dict[str, Any] | None = None) -> Stage:
    cls = get_stage_class(type_name)
    return cls(cls.Params.model_validate(params or {}))
