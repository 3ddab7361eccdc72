"""The query service: a FastAPI app over a :class:`models.hashing.live.LiveIndex`.

``create_app(index, extractor, limits)`` builds the app; ``vistream serve`` runs it with uvicorn,
either next to the live index stage (sharing the index object) or over a read-only snapshot.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /search/image``  multipart field ``image`` (JPEG or PNG), query ``k`` — runs the
  configured feature extractor, encodes with the current hash model, searches;
* ``GET  /search/frame?frame_id=ID&k=10`` — neighbours of an indexed frame (itself first);
* ``POST /search/vector`` JSON ``{"vector": [...], "k": 10}`` — a raw feature vector;
* ``GET  /healthz`` — liveness plus index state; ``GET /metrics`` — Prometheus text.

Every search answers the top-k frame ids with their Hamming distance, stream id, timestamp,
label and the joined caption and tracks, plus the hash model (name, version, warm start) whose
codes produced the answer: one answer always comes from one model version.

Bad input is a 4xx, never a 5xx: 400 empty or truncated upload; 404 unknown frame id; 411 an
image upload without Content-Length; 413 upload over ``max_upload_bytes`` or image over
``max_pixels`` (read from the PNG/JPEG header before anything is decoded, so a decompression
bomb never allocates); 415 not a JPEG/PNG (or undecodable); 422 ``k`` out of ``[1, max_k]``,
a vector of the wrong length or with NaN, malformed JSON; 409 image search without a usable
extractor (none configured, or it makes features of another model or length than the index
holds).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field

from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.store import SearchResult
from vistream.stages.records import (
    JPEG,
    PNG,
    InvalidRecord,
    check_image_bytes,
    decode_image,
    sniff_content_type,
)

log = logging.getLogger("vistream.service")

#: Room for the multipart framing around the image part.
MULTIPART_OVERHEAD = 64 * 1024


class ServiceLimits(BaseModel):
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1, description="largest image upload")
    max_pixels: int = Field(4096 * 4096, ge=1, description="largest image, width x height")
    max_k: int = Field(1000, ge=1, description="largest k a search may ask for")
    max_vector_dims: int = Field(65536, ge=1)


# --------------------------------------------------------------------------- responses


class TrackOut(BaseModel):
    track_id: int | None = None
    box: list[float] = Field(description="x, y, w, h in pixels")
    score: float | None = None


class HitOut(BaseModel):
    frame_id: str
    id: int = Field(description="the index's stable integer id of the frame")
    distance: int = Field(description="Hamming distance to the query code")
    stream_id: str | None = None
    timestamp_ms: int | None = Field(None, description="capture time, ms since the epoch")
    label: int | None = None
    caption: str | None = None
    tracks: list[TrackOut] | None = None


class SearchResponse(BaseModel):
    query: str = Field(description="image, frame or vector")
    k: int
    model: str | None = Field(description="hash model whose codes answered (lsh during warm start)")
    model_version: int
    warm_start: bool = Field(description="true while the codes come from the warm-start LSH")
    frames_indexed: int
    took_ms: float
    hits: list[HitOut]


class VectorQuery(BaseModel):
    vector: list[float] = Field(min_length=1)
    k: int = 10


class Health(BaseModel):
    status: str
    frames: int
    dim: int | None
    n_bits: int
    model: str | None
    model_version: int
    warm_start: bool
    updating: bool
    pending_labels: int
    read_only: bool
    feature_model_id: str
    extractor: str | None


class ErrorOut(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 404, 409, 411, 413, 415, 422)}


def _hit(h) -> HitOut:
    tracks = None if h.tracks is None else [TrackOut(**t) for t in h.tracks]
    return HitOut(frame_id=h.frame_id, id=h.id, distance=h.distance, stream_id=h.stream_id,
                  timestamp_ms=h.timestamp_ms, label=h.label, caption=h.caption, tracks=tracks)


def _response(kind: str, k: int, r: SearchResult, t0: float) -> SearchResponse:
    return SearchResponse(query=kind, k=k, model=r.model, model_version=r.model_version,
                          warm_start=r.warm_start, frames_indexed=r.n_indexed,
                          took_ms=round((time.perf_counter() - t0) * 1000, 3),
                          hits=[_hit(h) for h in r.hits])


# --------------------------------------------------------------------------- image checks


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header without decoding; None if unreadable."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        return None
    if data.startswith(b"\xff\xd8"):
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
                i += 2
                continue
            seg_len = struct.unpack(">H", data[i + 2: i + 4])[0]
            if seg_len < 2:
                return None
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                if i + 9 > n:
                    return None
                h, w = struct.unpack(">HH", data[i + 5: i + 9])
                return w, h
            i += 2 + seg_len
        return None
    return None


def check_upload(data: bytes, limits: ServiceLimits) -> np.ndarray:
    """Validate an uploaded image and decode it (BGR), or raise HTTPException (4xx)."""
    if not data:
        raise HTTPException(400, "empty upload: send a JPEG or PNG image in the 'image' field")
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"upload of {len(data)} bytes exceeds the limit of "
                                 f"{limits.max_upload_bytes} bytes")
    ctype = sniff_content_type(data)
    if ctype not in (JPEG, PNG):
        raise HTTPException(415, "not a JPEG or PNG image")
    size = image_size(data)
    if size is None:
        raise HTTPException(415, f"cannot read the size of this {ctype.split('/')[1].upper()} image")
    w, h = size
    if w == 0 or h == 0:
        raise HTTPException(400, f"image has no pixels ({w} x {h})")
    if w * h > limits.max_pixels:
        raise HTTPException(413, f"image of {w} x {h} = {w * h} pixels exceeds the limit of "
                                 f"{limits.max_pixels} pixels")
    try:
        check_image_bytes(data, ctype, limits.max_upload_bytes)
        return decode_image(data)
    except InvalidRecord as exc:
        code = 415 if "could not be decoded" in str(exc) else 400
        raise HTTPException(code, str(exc)) from None


# --------------------------------------------------------------------------- extractors


class StageExtractor:
    """A :class:`~models.backbones.extractor.FeatureExtractor` that runs a pipeline's own
    ``features`` stage (same artifact or seeded backbone, same preprocessing), so that query
    images land in exactly the feature space of the indexed frames. Images go in through the
    stage's public ``process`` as lossless PNG frame records."""

    def __init__(self, stage) -> None:
        import threading

        self.stage = stage
        self._lock = threading.Lock()  # a stage is not meant to be called by several threads
        self.dim = 0
        stage.setup()
        self.model_id = str(getattr(stage, "model_id", ""))
        self.dim = int(self.extract([np.zeros((8, 8, 3), np.uint8)]).shape[1])

    @classmethod
    def from_config(cls, cfg, index_stage: str | None = None) -> StageExtractor | None:
        """The ``features`` stage whose output feeds ``index_stage`` (or the only one)."""
        from vistream.stages.base import create_stage

        feats = [s for s in cfg.stages if s.type == "features"]
        if index_stage is not None:
            inputs = set(cfg.stage(index_stage).inputs)
            feeding = [s for s in feats if s.outputs.get("features") in inputs]
            feats = feeding or feats
        if not feats:
            return None
        return cls(create_stage(feats[0].type, feats[0].params))

    def extract(self, images) -> np.ndarray:
        from vistream.stages.records import Frame

        frames = [Frame.from_image(np.asarray(im), "query", i, timestamp_ms=0, content_type=PNG)
                  for i, im in enumerate(images)]
        with self._lock:
            out = self.stage.process(frames)
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([np.asarray(m.vector, np.float32) for m in out])


# --------------------------------------------------------------------------- metrics


class _IndexCollector:
    def __init__(self, index: LiveIndex) -> None:
        self.index = index

    def collect(self):
        info = self.index.info()
        for name, doc, key in (
                ("vistream_index_frames", "Frames in the live index", "frames"),
                ("vistream_index_model_version", "Version of the hash model answering searches",
                 "model_version"),
                ("vistream_index_pending_labels", "Labelled features not yet learned from",
                 "pending_labels"),
                ("vistream_index_updating", "1 while a model update (fit + re-encode) runs",
                 "updating"),
                ("vistream_index_last_reencode_seconds", "Duration of the last re-encode and swap",
                 "last_reencode_s"),
                ("vistream_index_last_fit_seconds", "Duration of the last model fit",
                 "last_fit_s")):
            yield GaugeMetricFamily(name, doc, value=float(info[key] or 0))
        for name, doc, key in (
                ("vistream_index_swaps", "Model swaps (re-encodes) so far", "swaps"),
                ("vistream_index_duplicates", "Redelivered feature records ignored", "duplicates"),
                ("vistream_index_train_errors", "Model updates that failed", "train_errors")):
            yield CounterMetricFamily(name, doc, value=float(info[key]))


# --------------------------------------------------------------------------- the app


def create_app(index: LiveIndex, extractor: Any | None = None,
               limits: ServiceLimits | None = None, title: str = "vistream retrieval") -> FastAPI:
    """The query API over ``index``; ``extractor`` (a FeatureExtractor) enables image search."""
    limits = limits or ServiceLimits()
    app = FastAPI(title=title, version="1",
                  description="Live retrieval over a FAISS binary index of online-hashed frame "
                              "features (SDOH). See docs/retrieval.md.")
    app.state.index = index
    app.state.extractor = extractor
    app.state.limits = limits
    registry = CollectorRegistry()
    registry.register(_IndexCollector(index))
    requests = Counter("vistream_api_requests", "API requests", ["endpoint", "status"],
                       registry=registry)
    latency = Histogram("vistream_api_latency_seconds", "API request latency", ["endpoint"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                 1, 2.5), registry=registry)
    known = {"/search/image", "/search/frame", "/search/vector", "/healthz", "/metrics"}

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        path = request.url.path
        endpoint = path if path in known else "other"
        t0 = time.perf_counter()
        if path == "/search/image" and request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                response = JSONResponse({"detail": "an image upload needs a Content-Length"}, 411)
            elif not length.isdigit():
                response = JSONResponse({"detail": "invalid Content-Length"}, 400)
            elif int(length) > limits.max_upload_bytes + MULTIPART_OVERHEAD:
                response = JSONResponse(
                    {"detail": f"upload of {length} bytes exceeds the limit of "
                               f"{limits.max_upload_bytes} bytes"}, 413)
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    def check_k(k: int) -> int:
        if not 1 <= k <= limits.max_k:
            raise HTTPException(422, f"k must be between 1 and {limits.max_k}, got {k}")
        return k

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        info = index.info()
        return Health(status="ok", frames=info["frames"], dim=info["dim"], n_bits=info["n_bits"],
                      model=info["model"], model_version=info["model_version"],
                      warm_start=info["warm_start"], updating=info["updating"],
                      pending_labels=info["pending_labels"], read_only=info["read_only"],
                      feature_model_id=info["feature_model_id"],
                      extractor=None if extractor is None else extractor.model_id)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        body = generate_latest(REGISTRY) + generate_latest(registry)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/search/image", response_model=SearchResponse, responses=_ERRORS)
    def search_image(image: UploadFile = File(..., description="a JPEG or PNG image"),
                     k: int = Query(10, description="how many neighbours")) -> SearchResponse:
        """Search by an uploaded image: backbone features -> hash code -> top-k."""
        t0 = time.perf_counter()
        check_k(k)
        data = image.file.read(limits.max_upload_bytes + 1)
        img = check_upload(data, limits)
        if extractor is None:
            raise HTTPException(409, "image search is not configured: the service has no "
                                     "feature extractor (start it with --backbone)")
        if index.dim is not None and extractor.dim != index.dim:
            raise HTTPException(409, f"the extractor makes {extractor.dim}-d features but the "
                                     f"index holds {index.dim}-d features")
        if index.feature_model_id and extractor.model_id != index.feature_model_id:
            raise HTTPException(409, f"the index holds features of {index.feature_model_id!r} "
                                     f"but this service extracts {extractor.model_id!r}: image "
                                     "queries would land in another feature space (serve with "
                                     "the pipeline config that holds the features stage)")
        vec = extractor.extract([img])[0]
        try:
            result = index.search_vector(vec, k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _response("image", k, result, t0)

    @app.get("/search/frame", response_model=SearchResponse, responses=_ERRORS)
    def search_frame(frame_id: str = Query(..., min_length=1, description="an indexed frame id"),
                     k: int = Query(10, description="how many neighbours")) -> SearchResponse:
        """Neighbours of an indexed frame (the frame itself comes first, at distance 0)."""
        t0 = time.perf_counter()
        check_k(k)
        try:
            result = index.search_frame(frame_id, k)
        except KeyError:
            raise HTTPException(404, f"unknown frame id {frame_id!r}") from None
        return _response("frame", k, result, t0)

    @app.post("/search/vector", response_model=SearchResponse, responses=_ERRORS)
    def search_vector(q: VectorQuery = Body(...)) -> SearchResponse:
        """Search by a raw feature vector (same feature space as the indexed frames)."""
        t0 = time.perf_counter()
        check_k(q.k)
        if len(q.vector) > limits.max_vector_dims:
            raise HTTPException(422, f"vector has {len(q.vector)} dims; at most "
                                     f"{limits.max_vector_dims}")
        try:
            result = index.search_vector(np.asarray(q.vector, np.float32), q.k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _response("vector", q.k, result, t0)

    return app


# --------------------------------------------------------------------------- serving next to the stage


class LivePipeline:
    """The index stage of a pipeline config, run by its StageRunner in background threads, so
    that the query API shares its :class:`LiveIndex`.

    On Kafka only the named stage runs here (the other stages run as their own processes). On
    the memory bus (one process) every stage of the config runs here and its sources are fed
    once; the API keeps serving after they are exhausted.
    """

    def __init__(self, cfg, stage_name: str, group: str | None = None) -> None:
        import threading

        from vistream.pipeline.app import build_runner, bus_from_config, create_topics
        from vistream.stages.base import create_stage

        settings = cfg.stage(stage_name)
        if settings.type != "hashing":
            raise ValueError(f"stage {stage_name!r} is a {settings.type!r} stage; `serve` needs a "
                             "'hashing' (index) stage")
        if group:
            settings = settings.model_copy(update={"group": group})
        self.cfg = cfg
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.bus = bus_from_config(cfg)
        create_topics(cfg, self.bus)
        others = [s for s in cfg.stages if s.name != stage_name] if cfg.bus.backend == "memory" else []
        stage = create_stage(settings.type, settings.params)
        self.runner = build_runner(cfg, settings, self.bus, stage=stage)
        self.runners = [self.runner] + [build_runner(cfg, s, self.bus) for s in others
                                        for _ in range(s.replicas)]
        for r in self.runners:
            r.open()  # the index stage loads its snapshot here
        self.index: LiveIndex = stage.index
        self.threads = [threading.Thread(target=self._guard(r.run, self.stop),
                                         name=f"stage-{r.name}", daemon=True)
                        for r in self.runners]
        if cfg.bus.backend == "memory" and cfg.sources:
            self.threads.append(threading.Thread(target=self._guard(self._feed), name="sources",
                                                 daemon=True))

    def _guard(self, fn, *args):
        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported by close()
                log.exception("%s failed", fn)
                self.errors.append(exc)
        return target

    def _feed(self) -> None:
        from vistream.pipeline.ingest import ingest

        with self.bus.producer() as producer:
            for src in self.cfg.sources:
                ingest(src.source, producer, src.topic, src.stream_id, src.fps, src.quality,
                       src.limit, False, self.stop)

    def start(self) -> LivePipeline:
        for t in self.threads:
            t.start()
        return self

    def close(self, timeout: float = 60) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=timeout)
        self.bus.close()
