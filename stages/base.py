"""What a stage is, and the registry that names them.

A stage is plain code: it gets a batch of messages (frames or typed results, see
:mod:`vistream.stages.records`) and returns the messages it derives from them. It never touches
the bus and never sees a position on it: :class:`vistream.pipeline.runner.StageRunner` polls,
decodes, routes outputs, dead-letters, commits, measures and keeps the offsets.

Rules a stage follows:

* ``accepts`` names the message kinds it takes; anything else is dead-lettered by the runner;
* ``emits`` names the kinds it returns; the pipeline config routes each kind to a topic;
* it is idempotent by frame id: delivery is at least once, so a frame may come twice;
* it may raise: the runner then retries the batch one message at a time and dead-letters
  only the messages that still fail, with the exception as the reason.

State. A stage whose state lives only in its own memory and snapshots (not in what it emits)
sets ``stateful = True`` and implements :meth:`Stage.snapshot` / :meth:`Stage.restore`. The
runner then owns the positions the state covers: it hands them to ``snapshot`` as an opaque,
JSON-serialisable *carry* that the stage stores verbatim with its state, gets them back from
``restore`` at start-up and starts reading there; a partition no snapshot covers starts at its
oldest record, since the group's committed offsets say nothing about the stage's memory.

Parameters are a pydantic model (``Params``) so a YAML typo is a readable error at start-up.
A new stage is a module in ``stages/`` with a ``@register_stage("name")`` class; it is found
automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

import vistream.stages
from vistream.models.registry import Registry
from vistream.stages.records import Message


class StageParams(BaseModel):
    """Base of every stage's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Stage:
    name: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ("frame",)
    emits: ClassVar[tuple[str, ...]] = ()
    Params: ClassVar[type[StageParams]] = StageParams
    #: True when the stage keeps state outside the group's committed offsets: the runner then
    #: restores it at start-up, snapshots it when :meth:`snapshot_due` says so, and replays a
    #: partition without a snapshot from its start.
    stateful: ClassVar[bool] = False

    def __init__(self, params: StageParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def setup(self) -> None:
        """Load models or open files; called once in the process that runs the stage."""

    def process(self, batch: list[Message]) -> list[Message]:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release; called once on shutdown (after the last commit and, for a
        stateful stage, after the last snapshot)."""

    # -- state (stateful stages only) --------------------------------------------------
    def snapshot_due(self, closing: bool) -> bool:
        """The stage's own snapshot policy, asked after every batch (``closing`` False) and
        once on shutdown (``closing`` True): every N records, every T seconds, on close..."""
        return False

    def snapshot(self, carry: Mapping[str, Any]) -> None:
        """Persist the state together with ``carry``, atomically: a snapshot either holds
        both or is not there. ``carry`` is the runner's, JSON-serialisable, stored verbatim."""
        raise NotImplementedError(f"stage {self.name!r} is stateful but cannot snapshot")

    def restore(self) -> Mapping[str, Any] | None:
        """Load the last snapshot, if any, and return the carry stored with it (None when
        there is none: the stage starts empty). Called once, after :meth:`setup`."""
        return None


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


_NOT_STAGES = {"base", "records"}


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
