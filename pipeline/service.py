"""The query service: a FastAPI app over a :class:`models.hashing.live.LiveIndex`.

``create_app(index, extractor, limits)`` builds the app; :mod:`pipeline.serve` runs it with
uvicorn (``vistream serve``), either next to the live index stage (sharing the index object) or
over a read-only snapshot.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

* ``POST /search/image``  multipart field ``image`` (JPEG or PNG), query ``k`` — runs the
  configured feature extractor, encodes with the current hash model, searches;
* ``GET  /search/frame?frame_id=ID&k=10`` — neighbours of an indexed frame (itself first);
* ``POST /search/vector`` JSON ``{"vector": [...], "k": 10}`` — a raw feature vector;
* ``GET  /healthz`` — liveness plus index state; ``GET /metrics`` — Prometheus text.

Every search answers the top-k frame ids with their Hamming distance, stream id, timestamp,
label and the joined caption and tracks, plus the hash model (name, version, warm start) whose
codes produced the answer: one answer always comes from one model version.

Bad input is a 4xx, never a 5xx, and every error body is one declared model
(:class:`~vistream.pipeline.api_common.ErrorOut`): 400 empty or truncated upload, or a
malformed Content-Length; 401 a write without the bearer token (when the app has one, see
:mod:`pipeline.api_common`); 404 unknown frame id; 411 an image upload without
Content-Length, or any chunked body without one; 413 upload over ``max_upload_bytes``, a JSON
body over ``max_body_bytes``, or an image over ``max_pixels`` (read from the PNG/JPEG header
before anything is decoded, so a decompression bomb never allocates); 415 not a JPEG/PNG (or
undecodable); 422 ``k`` out of ``[1, max_k]``, a vector of the wrong length or with NaN,
malformed JSON; 409 image search without a usable extractor (none configured, or it makes
features of another model or length than the index holds).

The OpenAPI schema tells the truth about these limits: ``k``'s range, the vector's length (the
index's dimension once it is known: the schema is rebuilt when it changes), its float32 range,
the upload's size and media types, the 401 and the bearer scheme of the write endpoints when a
token is set (:func:`~vistream.pipeline.api_common.patch_openapi`).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, Field, StrictFloat

from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.store import SearchResult
from vistream.pipeline.api_common import (
    ErrorOut,
    check_token,
    error_responses,
    truthful_errors,
)
from vistream.pipeline.api_labels import router as labels_router
from vistream.pipeline.api_tracks import router as tracks_router
from vistream.pipeline.console import mount_console
from vistream.stages.records import (
    JPEG,
    PNG,
    InvalidRecord,
    check_image_bytes,
    decode_image,
    image_size,
    sniff_content_type,
)

log = logging.getLogger("vistream.service")

#: Room for the multipart framing around the image part.
MULTIPART_OVERHEAD = 64 * 1024
#: The largest finite float32: a vector component beyond it cannot be searched with.
F32_MAX = 3.4e38
__all__ = ["ErrorOut", "ServiceLimits", "check_upload", "create_app"]


class ServiceLimits(BaseModel):
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1, description="largest image upload")
    max_pixels: int = Field(4096 * 4096, ge=1, description="largest image, width x height")
    max_k: int = Field(1000, ge=1, description="largest k a search may ask for")
    max_vector_dims: int = Field(65536, ge=1)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1, description="largest JSON request body")


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


#: the errors each search can answer (a body's 400/411/413 are added to every operation that
#: takes one: pipeline.api_common)
_IMAGE_ERRORS = error_responses(400, 409, 411, 413, 415, 422)
_FRAME_ERRORS = error_responses(404, 422)
_VECTOR_ERRORS = error_responses(422)


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
        check_image_bytes(data, ctype, limits.max_upload_bytes, limits.max_pixels)
        return decode_image(data)
    except InvalidRecord as exc:
        code = 415 if "could not be decoded" in str(exc) else 400
        raise HTTPException(code, str(exc)) from None


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
               limits: ServiceLimits | None = None, title: str = "vistream retrieval",
               api_token: str | None = None) -> FastAPI:
    """The query API over ``index``; ``extractor`` (a FeatureExtractor) enables image search;
    ``api_token`` (at least 16 characters) guards the write endpoints (bearer token)."""
    limits = limits or ServiceLimits()
    app = FastAPI(title=title, version="1", docs_url=None, redoc_url=None,  # console: offline /docs
                  description="Live retrieval over a FAISS binary index of online-hashed frame "
                              "features (SDOH). See docs/retrieval.md.")
    app.state.index = index
    app.state.extractor = extractor
    app.state.limits = limits
    app.state.api_token = check_token(api_token)
    truthful_errors(app, lambda: index.dim, lambda spec: _declare_limits(spec, index, limits))
    registry = _instrument(app, index, limits)
    _add_status_routes(app, index, extractor, registry)
    _add_search_routes(app, index, extractor, limits)
    app.include_router(labels_router)  # POST /labels, GET /stats
    app.include_router(tracks_router)  # POST /tracks, DELETE /tracks/{id} (api_tracks)
    mount_console(app)  # /console (web console), /docs (Swagger UI from local files)
    return app


def _body_guard(request: Request, limits: ServiceLimits) -> JSONResponse | None:
    """A 4xx for a body over its limit or of unknown length, before it is read; else None."""
    if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
        return None
    upload = request.url.path == "/search/image"
    length = request.headers.get("content-length")
    if length is None:
        if upload:
            return JSONResponse({"detail": "an image upload needs a Content-Length"}, 411)
        if "transfer-encoding" in request.headers:
            return JSONResponse({"detail": "a request body needs a Content-Length"}, 411)
        return None
    if not length.isdigit():
        return JSONResponse({"detail": "invalid Content-Length"}, 400)
    limit = limits.max_upload_bytes + MULTIPART_OVERHEAD if upload else limits.max_body_bytes
    if int(length) > limit:
        what = "upload" if upload else "request body"
        shown = limits.max_upload_bytes if upload else limit
        return JSONResponse({"detail": f"{what} of {length} bytes exceeds the limit of "
                                       f"{shown} bytes"}, 413)
    return None


def _instrument(app: FastAPI, index: LiveIndex, limits: ServiceLimits) -> CollectorRegistry:
    """Per-app request counts, latencies and index gauges; bodies over their limit (or of
    unknown length) are refused here, before they are read."""
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
        response = _body_guard(request, limits)
        if response is None:
            response = await call_next(request)
        requests.labels(endpoint, str(response.status_code)).inc()
        latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    return registry


def _add_status_routes(app: FastAPI, index: LiveIndex, extractor: Any | None,
                       registry: CollectorRegistry) -> None:
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


def _check_extractor(extractor: Any | None, index: LiveIndex) -> None:
    """409 unless ``extractor`` makes features of the model and length the index holds."""
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


def _vector_query(limits: ServiceLimits) -> type[BaseModel]:
    """The body of ``POST /search/vector`` with this app's limits in its schema."""
    component = Annotated[StrictFloat, Field(ge=-F32_MAX, le=F32_MAX)]

    class VectorQuery(BaseModel):
        vector: list[component] = Field(  # type: ignore[valid-type]
            min_length=1, max_length=limits.max_vector_dims,
            description="a feature vector of the index's dimension (float32 range)")
        k: int = Field(10, ge=1, le=limits.max_k, description="how many neighbours")

    return VectorQuery


#: the upload's media types, declared so that a client (or a fuzzer) knows what to send
IMAGE_ENCODING = {"requestBody": {"content": {"multipart/form-data": {
    "encoding": {"image": {"contentType": "image/jpeg, image/png"}}}}}}


def _declare_limits(spec: dict, index: LiveIndex, limits: ServiceLimits) -> None:
    """What the handlers check beyond FastAPI's models: the vector's length is the index's
    dimension once it holds features; the upload is a non-empty JPEG or PNG within the limit."""
    paths = spec["paths"]
    schemas = spec["components"]["schemas"]

    def body(path: str, media: str) -> dict | None:
        ref = (paths.get(path, {}).get("post", {}).get("requestBody", {}).get("content", {})
               .get(media, {}).get("schema", {}).get("$ref", ""))
        return schemas.get(ref.rsplit("/", 1)[-1])

    vq = body("/search/vector", "application/json")
    if vq is not None and index.dim is not None:
        vq["properties"]["vector"].update(minItems=index.dim, maxItems=index.dim)
    upload = body("/search/image", "multipart/form-data")
    if upload is not None:
        upload["properties"]["image"].update(
            minLength=1, maxLength=limits.max_upload_bytes,
            description=f"a JPEG or PNG image, 1 to {limits.max_upload_bytes} bytes, at most "
                        f"{limits.max_pixels} pixels")


def _add_search_routes(app: FastAPI, index: LiveIndex, extractor: Any | None,
                       limits: ServiceLimits) -> None:
    k_query = Query(10, ge=1, le=limits.max_k, description="how many neighbours")
    VectorQuery = _vector_query(limits)  # noqa: N806 (a class)

    @app.post("/search/image", response_model=SearchResponse, responses=_IMAGE_ERRORS,
              openapi_extra=IMAGE_ENCODING)
    def search_image(image: UploadFile = File(..., description="a JPEG or PNG image"),
                     k: int = k_query) -> SearchResponse:
        """Search by an uploaded image: backbone features -> hash code -> top-k."""
        t0 = time.perf_counter()
        data = image.file.read(limits.max_upload_bytes + 1)
        img = check_upload(data, limits)
        _check_extractor(extractor, index)
        vec = extractor.extract([img])[0]
        try:
            result = index.search_vector(vec, k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _response("image", k, result, t0)

    @app.get("/search/frame", response_model=SearchResponse, responses=_FRAME_ERRORS)
    def search_frame(frame_id: str = Query(..., min_length=1, description="an indexed frame id"),
                     k: int = k_query) -> SearchResponse:
        """Neighbours of an indexed frame (the frame itself comes first, at distance 0)."""
        t0 = time.perf_counter()
        try:
            result = index.search_frame(frame_id, k)
        except KeyError:
            raise HTTPException(404, f"unknown frame id {frame_id!r}") from None
        return _response("frame", k, result, t0)

    def search_vector(q: VectorQuery = Body(...)) -> SearchResponse:
        """Search by a raw feature vector (same feature space as the indexed frames)."""
        t0 = time.perf_counter()
        try:
            result = index.search_vector(np.asarray(q.vector, np.float32), q.k)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return _response("vector", q.k, result, t0)

    # the body's model is made here, with this app's limits: FastAPI reads it from the
    # annotation, which must then be the class itself rather than its (postponed) name
    search_vector.__annotations__["q"] = VectorQuery
    app.post("/search/vector", response_model=SearchResponse,
             responses=_VECTOR_ERRORS)(search_vector)
