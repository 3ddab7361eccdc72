"""Pipeline configuration: one YAML file, validated by pydantic.

Example (``configs/demo.yaml``)::

    name: demo
    bus: {backend: memory}            # or: {backend: kafka, bootstrap: 127.0.0.1:9092}
    sources:
      - {source: sample.mp4, topic: frames, stream_id: cam0}
    stages:
      - {name: thumbs, type: thumbnail, inputs: [frames], outputs: {frame_summary: summaries}}
      - {name: sink, type: summary, inputs: [summaries], params: {out_dir: out/demo}}

``${VAR}`` and ``${VAR:-default}`` in the file are replaced from the environment first, so the
same file serves a laptop and a compose deployment (``bootstrap: ${KAFKA:-127.0.0.1:9092}``).
Errors name the offending field by its path, e.g. ``stages[1].batch_size``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vistream.pipeline.bus.kafka import MAX_MESSAGE_BYTES
from vistream.stages.base import stage_types
from vistream.stages.records import MAX_FRAME_BYTES


class ConfigError(ValueError):
    """A config file that cannot be used; the message lists every problem found."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BusSettings(_Strict):
    backend: Literal["memory", "kafka"] = "memory"
    bootstrap: str = "127.0.0.1:9092"
    partitions: int = Field(4, ge=1, le=1024, description="partitions of topics the pipeline creates")
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024)
    replication_factor: int | None = Field(
        None, ge=1, le=16, description="replicas per topic; default: as many as brokers, at most 3")
    min_insync_replicas: int | None = Field(
        None, ge=1, le=16, description="default: 2 with three or more replicas, else 1")
    acks: Literal["all", "1", "0"] = Field("all", description="producer acknowledgements")
    idempotence: bool = Field(True, description="idempotent producer (needs acks: all)")

    @field_validator("acks", mode="before")
    @classmethod
    def _acks_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _durability(self) -> BusSettings:
        if self.idempotence and self.acks != "all":
            raise ValueError(f"bus.idempotence needs bus.acks: all (got acks: {self.acks}); "
                             "set idempotence: false to use weaker acknowledgements")
        if (self.replication_factor is not None and self.min_insync_replicas is not None
                and self.min_insync_replicas > self.replication_factor):
            raise ValueError(f"bus.min_insync_replicas ({self.min_insync_replicas}) cannot exceed "
                             f"bus.replication_factor ({self.replication_factor}): no write "
                             "could ever be acknowledged")
        return self

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~vistream.pipeline.bus.kafka.KafkaBus` from these settings."""
        return {"max_message_bytes": self.max_message_bytes,
                "replication_factor": self.replication_factor,
                "min_insync_replicas": self.min_insync_replicas,
                "acks": "all" if self.acks == "all" else int(self.acks),
                "idempotence": self.idempotence}


class SourceSettings(_Strict):
    source: str = Field(description="video file, camera index or image folder")
    topic: str = "frames"
    stream_id: str | None = None
    fps: float | None = Field(None, gt=0,
                              description="pace frames at this rate (default: as fast as possible)")
    quality: int = Field(90, ge=1, le=100)
    limit: int | None = Field(None, ge=1, description="stop after this many frames")


class StageSettings(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    type: str
    inputs: list[str] = Field(min_length=1)
    outputs: dict[str, str] = Field(default_factory=dict,
                                    description="message kind -> topic, e.g. {frame_summary: summaries}")
    group: str | None = None
    batch_size: int = Field(16, ge=1, le=10_000)
    poll_timeout: float = Field(0.5, gt=0, le=60)
    replicas: int = Field(1, ge=1, le=256, description="processes to start with `vistream run` on Kafka")
    metrics_port: int | None = Field(None, ge=0, le=65535)
    max_frame_bytes: int = Field(MAX_FRAME_BYTES, ge=1024)
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def group_id(self) -> str:
        return self.group or f"vistream-{self.name}"


class MetricsSettings(_Strict):
    port: int = Field(0, ge=0, le=65535, description="0 disables the /metrics endpoint")
    host: str = "127.0.0.1"


class PipelineConfig(_Strict):
    name: str = "pipeline"
    bus: BusSettings = Field(default_factory=BusSettings)
    topics: dict[str, int] = Field(default_factory=dict,
                                   description="partitions per topic, overrides bus.partitions")
    sources: list[SourceSettings] = Field(default_factory=list)
    stages: list[StageSettings] = Field(default_factory=list)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_format: Literal["text", "json"] = "text"

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageSettings]) -> list[StageSettings]:
        seen: set[str] = set()
        for s in stages:
            if s.name in seen:
                raise ValueError(f"stage name {s.name!r} is used twice")
            seen.add(s.name)
        return stages

    @model_validator(mode="after")
    def _stages_exist_and_params_valid(self) -> PipelineConfig:
        types = stage_types()
        problems = []
        for i, s in enumerate(self.stages):
            cls = types.get(s.type)
            if cls is None:
                problems.append(f"stages[{i}].type: unknown stage type {s.type!r} "
                                f"(known: {', '.join(sorted(types))})")
                continue
            try:
                cls.Params.model_validate(s.params)
            except ValidationError as exc:
                problems += [f"stages[{i}].params.{_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]
            missing = [k for k in cls.emits if k not in s.outputs]
            if missing:
                problems.append(f"stages[{i}].outputs: stage type {s.type!r} emits {missing}; "
                                f"give each a topic, e.g. outputs: {{{missing[0]}: {missing[0]}s}}")
            extra = [k for k in s.outputs if k not in cls.emits]
            if extra:
                problems.append(f"stages[{i}].outputs: stage type {s.type!r} never emits {extra}")
        problems += self._sharded_problems()
        if problems:
            raise ValueError("; ".join(problems))
        if self.bus.backend == "memory" and self.stages and not self.sources:
            raise ValueError("the memory bus lives inside one process, so a pipeline on it needs "
                             "at least one entry under `sources` (or use bus.backend: kafka)")
        return self

    def _sharded_problems(self) -> list[str]:
        """A sharded index stage (``params: {sharded: true}``) runs on Kafka and reads one
        topic of features (its partitions are the shards)."""
        out = []
        for i, s in enumerate(self.stages):
            if s.type != "hashing" or not s.params.get("sharded"):
                continue
            if self.bus.backend != "kafka":
                out.append(f"stages[{i}].params.sharded: a sharded index needs bus.backend: "
                           "kafka (its shards follow the partitions of a consumer group)")
            if len(s.inputs) != 1:
                out.append(f"stages[{i}].inputs: a sharded index reads one topic of feature "
                           f"records, got {s.inputs}")
        return out

    def stage(self, name: str) -> StageSettings:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r} in pipeline {self.name!r}; "
                          f"stages: {', '.join(s.name for s in self.stages) or '(none)'}")

    def all_topics(self) -> dict[str, int]:
        """Every topic the pipeline reads or writes, with its partition count."""
        names: list[str] = [s.topic for s in self.sources]
        for s in self.stages:
            names += s.inputs + list(s.outputs.values())
        return {n: self.topics.get(n, self.bus.partitions) for n in dict.fromkeys(names)}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise ConfigError(f"environment variable {m.group(1)} is not set "
                                  f"(write ${{{m.group(1)}:-default}} to give a default)")
            return m.group(2)
        return value

    return _ENV.sub(sub, text)


def parse_config(data: dict[str, Any], origin: str = "<config>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {_loc(e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid pipeline config {origin}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(expand_env(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    cfg = parse_config(data, str(path))
    # Relative paths in sources are relative to the config file, like most tools do.
    for s in cfg.sources:
        if not s.source.isdigit() and not Path(s.source).is_absolute():
            candidate = path.parent / s.source
            if candidate.exists() or not Path(s.source).exists():
                s.source = str(candidate)
    return cfg
