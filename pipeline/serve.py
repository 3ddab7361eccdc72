"""Running the query service (``vistream serve``).

The API of :mod:`pipeline.service` is served by uvicorn over one of two indexes: the live index
of a pipeline's index stage, run here by :meth:`pipeline.app.InProcessPipeline.serving` (the
API shares the stage's object), or a snapshot folder loaded read-only. Image queries must be
embedded like the indexed frames: :class:`StageExtractor` runs the config's own ``features``
stage for that; without one a seeded backbone stands in.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from vistream.models.hashing.live import LiveIndex
from vistream.models.zoo import is_zoo_name
from vistream.pipeline.api_common import TOKEN_ENV, check_listen, check_token
from vistream.pipeline.api_tracks import DEFAULT_TOPIC as TRACK_TOPIC
from vistream.pipeline.api_tracks import attach_producer
from vistream.pipeline.app import InProcessPipeline, bus_from_config
from vistream.pipeline.config import PipelineConfig, load_config
from vistream.pipeline.console import attach_console
from vistream.pipeline.service import ServiceLimits, create_app
from vistream.pipeline.shardrun import create_shard_topics, sharded_params
from vistream.pipeline.shardserve import ShardedQueries, create_sharded_app
from vistream.stages.base import create_stage
from vistream.stages.records import PNG, Frame


class StageExtractor:
    """A :class:`~models.backbones.extractor.FeatureExtractor` that runs a pipeline's own
    ``features`` stage (same artifact or seeded backbone, same preprocessing), so that query
    images land in exactly the feature space of the indexed frames. Images go in through the
    stage's public ``process`` as lossless PNG frame records."""

    def __init__(self, stage) -> None:
        self.stage = stage
        self._lock = threading.Lock()  # a stage is not meant to be called by several threads
        self.dim = 0
        stage.setup()
        self.model_id = str(getattr(stage, "model_id", ""))
        self.dim = int(self.extract([np.zeros((8, 8, 3), np.uint8)]).shape[1])

    @classmethod
    def from_config(cls, cfg, index_stage: str | None = None) -> StageExtractor | None:
        """The ``features`` stage whose output feeds ``index_stage`` (or the only one)."""
        feats = [s for s in cfg.stages if s.type == "features"]
        if index_stage is not None:
            inputs = set(cfg.stage(index_stage).inputs)
            feeding = [s for s in feats if s.outputs.get("features") in inputs]
            feats = feeding or feats
        if not feats:
            return None
        return cls(create_stage(feats[0].type, feats[0].params))

    def extract(self, images) -> np.ndarray:
        frames = [Frame.from_image(np.asarray(im), "query", i, timestamp_ms=0, content_type=PNG)
                  for i, im in enumerate(images)]
        with self._lock:
            out = self.stage.process(frames)
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.asarray(m.vector, np.float32) for m in out])


def index_stage_name(cfg: PipelineConfig, stage: str | None) -> str:
    """``stage``, or the config's only index (``hashing``) stage."""
    if stage is not None:
        return stage
    names = [s.name for s in cfg.stages if s.type == "hashing"]
    if len(names) != 1:
        raise ValueError(f"--stage is needed: index stages in the config: {names}")
    return names[0]


def query_extractor(cfg: PipelineConfig | None, stage: str | None, backbone: str | None,
                    input_size: int = 224, seed: int = 0) -> Any | None:
    """The config's own features stage when it has one; else ``backbone``: a shipped artifact
    (``zoo:NAME``, see ``vistream artifacts list``) or an artifact file (``*.vsa``), run by a
    features stage of its own, or a registered backbone name (seeded random init); None when
    neither is there or backbone is 'none'."""
    extractor = StageExtractor.from_config(cfg, stage) if cfg is not None else None
    if extractor is None and backbone and backbone.lower() != "none":
        if is_zoo_name(backbone) or backbone.endswith(".vsa"):
            return StageExtractor(create_stage("features", {"artifact": backbone}))
        # torch: loaded only when no features stage of the config embeds the queries
        from vistream.models.backbones.extractor import BackboneExtractor

        extractor = BackboneExtractor(backbone, input_size=input_size, seed=seed)
    return extractor


def serve(config: Path | None = None, stage: str | None = None, snapshot: Path | None = None,
          host: str = "127.0.0.1", port: int = 8080, group: str | None = None,
          backbone: str | None = "resnet18", input_size: int = 224, seed: int = 0,
          limits: ServiceLimits | None = None, threads: int = 1,
          echo: Callable[[str], None] = print, api_token: str | None = None) -> None:
    """Serve the query API until uvicorn stops: over the live index stage of ``config``, or
    over ``snapshot`` read-only (a ``config`` then only names the features stage).

    The write endpoints need ``api_token`` (default: the ``VISTREAM_API_TOKEN`` environment
    variable) as a bearer token when one is set; ValueError, before anything starts, when
    ``host`` is not a loopback address and there is no token."""
    if snapshot is None and config is None:
        raise ValueError("give --config (with --stage) or --snapshot")
    api_token = write_token(host, api_token)
    cfg = load_config(config) if config is not None else None
    if cfg is not None and snapshot is None:
        stage = index_stage_name(cfg, stage)
    extractor = query_extractor(cfg, stage, backbone, input_size, seed)
    if cfg is not None and snapshot is None and sharded_params(cfg.stage(stage)) is not None:
        serve_sharded(cfg, stage, extractor, host, port, limits, echo)
        return
    live = None
    if snapshot is not None:
        index = LiveIndex.load(snapshot, read_only=True, search_threads=threads)
    else:
        live = InProcessPipeline.serving(cfg, stage, group=group).start()
        index = live.index
        index.search_threads = threads
    api = create_app(index, extractor, limits or ServiceLimits(), api_token=api_token)
    attach_console(api, cfg, live)  # /console: the config's thumbnail store, this process's runners
    producer = _attach_track_producer(api, cfg, live)
    echo(f"serving {len(index)} frames on http://{host}:{port} (console: /console, docs: /docs)")
    try:
        uvicorn.run(api, host=host, port=port, log_level="warning")
    finally:
        if producer is not None:
            producer.close()
        if live is not None:
            live.close()


def serve_sharded(cfg: PipelineConfig, stage: str, extractor: Any | None, host: str, port: int,
                  limits: ServiceLimits | None, echo: Callable[[str], None] = print) -> None:
    """The query API over a sharded index stage: fan-out to the replicas its registry topic
    announces (:mod:`vistream.pipeline.shardserve`), until uvicorn stops."""
    settings = cfg.stage(stage)
    params = sharded_params(settings)
    sp = params.shards
    bus = bus_from_config(cfg)
    # made here too: a consumer of a topic not there yet has the broker auto-create it,
    # uncompacted, and the replicas would then find it and leave it so
    create_shard_topics(bus, settings, params)
    queries = ShardedQueries(bus, sp.topics(settings.group_id)[1], ttl_s=sp.ttl_s,
                             timeout_s=sp.query_timeout_s)
    try:
        api = create_sharded_app(queries, extractor, limits)
        found = queries.wait_for_replicas(min(sp.ttl_s, 15.0))
        echo(f"serving the sharded index {stage!r} ({found} replicas announced) "
             f"on http://{host}:{port}")
        uvicorn.run(api, host=host, port=port, log_level="warning")
    finally:
        queries.close()
        bus.close()


def write_token(host: str, token: str | None = None) -> str | None:
    """The write token (``token``, else ``$VISTREAM_API_TOKEN``), checked; ValueError when it
    is too short, or missing while ``host`` is beyond loopback."""
    token = check_token(os.environ.get(TOKEN_ENV) if token is None else token)
    check_listen(host, token)
    return token


def _attach_track_producer(api, cfg: PipelineConfig | None, live: InProcessPipeline | None):
    """``POST /tracks`` writes to the init topic of the config's track stage (the one that
    reads ``track-inits``) on the pipeline's bus; without one it answers 503."""
    if cfg is None or live is None:
        return None
    reads_inits = [s for s in cfg.stages if s.type.startswith("track") and TRACK_TOPIC in s.inputs]
    if not reads_inits:
        return None
    producer = live.bus.producer()
    attach_producer(api, producer, TRACK_TOPIC)
    return producer


@contextmanager
def background_server(app, log_level: str = "warning", startup_timeout: float = 30.0
                      ) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a daemon thread and yield its base URL; the
    server stops when the block ends. For benchmarks and tests that talk HTTP to an app."""
    sock = socket.socket()
    # uvicorn's own sockets have it; without it each keep-alive answer waits a delayed ACK (40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
