"""The web console of ``vistream serve``: one page at ``/console``, plain HTML, JS and CSS from
``console_static/`` (no build step, nothing from a CDN), and the offline API docs at ``/docs``.

What the page shows, and where it comes from:

* **Streams**: the latest frame of each stream with its track boxes, ids and latest caption
  drawn over it, refreshed every second, from the :class:`~vistream.stages.thumbstore.
  ThumbnailStore` the config's ``thumbnail`` stage writes (``params: {store_dir: DIR}``, with
  ``tracks`` and ``captions`` among its inputs); per stage run by this process: records in and
  out, records/s, lag, dead-lettered and errors, from its runner (``GET /console/api/streams``).
* **Search**: an uploaded image, or a box drawn on a stream frame (cropped from its thumbnail
  in the page), goes to ``POST /search/image``; a frame id to ``GET /search/frame``. The hits
  come back with their thumbnails (``GET /console/thumbs/{frame_id}``), distance, stream and
  time; the stream and time-window filters apply to the nearest answers (the page asks for
  up to ``max_k`` of them when a filter is set). Errors of the API (4xx) are shown as they are.
* **Index**: ``GET /stats``: the hash model and its version, codes, labelled rows, the last fit
  and swap.

:func:`mount_console` adds all of this to an app (``create_app`` calls it);
:func:`attach_console` gives it the thumbnail store and the runners of a pipeline that
``vistream serve`` runs. Without them the page still loads and says what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from swagger_ui_bundle import swagger_ui_path

from vistream.pipeline.api_common import error_responses
from vistream.stages.thumbstore import ThumbnailStore

STATIC = Path(__file__).resolve().parent / "console_static"

router = APIRouter(tags=["console"])


# --------------------------------------------------------------------------- what it reads


class _Rates:
    """records/s of each stage, from the growth of its input count over >= 1 s windows."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, float]] = {}

    def rate(self, name: str, count: int, now: float) -> float:
        t, n, rate = self._last.get(name, (now, count, 0.0))
        if now - t >= 1.0 or name not in self._last:
            rate = (count - n) / (now - t) if now > t else 0.0
            self._last[name] = (now, count, rate)
        return rate


@dataclass
class ConsoleSources:
    """What the console reads: the thumbnail store (or None) and the stage runners of this
    process (a callable, so that runners restarted later are seen)."""

    store: ThumbnailStore | None = None
    runners: Callable[[], list[Any]] = list
    rates: _Rates = field(default_factory=_Rates)


def _sources(request: Request) -> ConsoleSources:
    sources = getattr(request.app.state, "console", None)
    if sources is None:
        sources = request.app.state.console = ConsoleSources()
    return sources


def store_from_config(cfg: Any) -> ThumbnailStore | None:
    """The store of the config's first ``thumbnail`` stage with a ``store_dir``."""
    if cfg is None:
        return None
    for s in cfg.stages:
        store_dir = (s.params or {}).get("store_dir") if s.type == "thumbnail" else None
        if store_dir:
            return ThumbnailStore(store_dir)
    return None


def attach_console(app: FastAPI, cfg: Any = None, live: Any = None,
                   store: ThumbnailStore | None = None) -> ConsoleSources:
    """Feed the console of ``app``: ``store`` (default: the config's thumbnail store) and the
    runners of ``live`` (an :class:`~vistream.pipeline.app.InProcessPipeline`)."""
    if store is None:  # (an empty store is falsy: it has a length)
        store = store_from_config(cfg)
    sources = ConsoleSources(store=store,
                             runners=(lambda: list(live.runners)) if live is not None else list)
    app.state.console = sources
    return sources


# --------------------------------------------------------------------------- answers


class TrackBox(BaseModel):
    track_id: int | None = None
    box: list[float] = Field(description="x, y, w, h in the frame's pixels")
    score: float | None = None


class StreamView(BaseModel):
    stream_id: str
    frame_id: str
    timestamp_ms: int | None = None
    width: int | None = Field(None, description="the frame's width in pixels")
    height: int | None = None
    thumb_url: str
    tracks: list[TrackBox] = Field(default_factory=list)
    tracks_frame_id: str | None = Field(None, description="the frame the tracks belong to")
    caption: str | None = None
    caption_frame_id: str | None = None


class StageView(BaseModel):
    stage: str
    replicas: int
    records_in: int
    records_out: int
    records_per_s: float
    lag: int | None
    dead_lettered: int
    errors: int


class StreamsOut(BaseModel):
    store: dict[str, Any] | None = Field(description="the thumbnail store's size and bounds "
                                                    "(null: no store configured)")
    streams: list[StreamView]
    stages: list[StageView]


class ConsoleConfig(BaseModel):
    max_k: int
    max_upload_bytes: int
    image_search: bool
    thumbnails: bool


def thumb_url(frame_id: str) -> str:
    return "/console/thumbs/" + quote(frame_id, safe="")


def _lag(runner: Any) -> int | None:
    metrics = getattr(runner, "metrics", None)
    if metrics is None:
        return None
    value = metrics.registry.get_sample_value("vistream_consumer_lag", {"stage": runner.name})
    return None if value is None else int(value)


def stage_views(sources: ConsoleSources, now: float | None = None) -> list[StageView]:
    """Per stage name (replicas summed): counts, rate, lag from the runners' metrics."""
    now = time.monotonic() if now is None else now
    by_name: dict[str, list[Any]] = {}
    for r in sources.runners():
        by_name.setdefault(r.name, []).append(r)
    out = []
    for name, runners in by_name.items():
        n_in = sum(r.stats.records_in for r in runners)
        lags = [lag for lag in (_lag(r) for r in runners) if lag is not None]
        out.append(StageView(
            stage=name, replicas=len(runners), records_in=n_in,
            records_out=sum(r.stats.records_out for r in runners),
            records_per_s=round(sources.rates.rate(name, n_in, now), 2),
            lag=max(lags) if lags else None,
            dead_lettered=sum(r.stats.dead_lettered for r in runners),
            errors=sum(r.stats.errors for r in runners)))
    return out


def stream_views(store: ThumbnailStore | None) -> list[StreamView]:
    if store is None:
        return []
    out = []
    for stream_id in store.streams():
        f = store.latest(stream_id)
        if f is None:
            continue
        out.append(StreamView(
            stream_id=stream_id, frame_id=f.frame_id, timestamp_ms=f.timestamp_ms,
            width=f.width, height=f.height, thumb_url=thumb_url(f.frame_id),
            tracks=[TrackBox(**t) for t in f.tracks or []],
            tracks_frame_id=f.extra.get("tracks_frame_id"), caption=f.caption,
            caption_frame_id=f.extra.get("caption_frame_id")))
    return out


# --------------------------------------------------------------------------- routes


@router.get("/console", include_in_schema=False)
def console_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/console/api/config", response_model=ConsoleConfig)
def console_config(request: Request) -> ConsoleConfig:
    """What the page may ask: the largest k and upload, whether image search and thumbnails
    are available."""
    limits = getattr(request.app.state, "limits", None)
    return ConsoleConfig(max_k=getattr(limits, "max_k", 1000),
                         max_upload_bytes=getattr(limits, "max_upload_bytes", 8 << 20),
                         image_search=getattr(request.app.state, "extractor", None) is not None,
                         thumbnails=_sources(request).store is not None)


@router.get("/console/api/streams", response_model=StreamsOut)
def console_streams(request: Request) -> StreamsOut:
    """The latest frame of each stream with its tracks and caption; the stages' figures."""
    sources = _sources(request)
    store = sources.store
    return StreamsOut(store=None if store is None else store.totals(),
                      streams=stream_views(store), stages=stage_views(sources))


@router.get("/console/thumbs/{frame_id:path}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "the thumbnail"},
                       **error_responses(404)})
async def console_thumb(frame_id: str, request: Request) -> Response:
    """The thumbnail of a frame id (JPEG); 404 when the store has none (never stored, or
    evicted)."""
    # async: one indexed SQLite read (~10 us) costs less than the hop to a worker thread
    store = _sources(request).store
    if store is None:
        raise HTTPException(404, "no thumbnail store: give the config's thumbnail stage a "
                                 "store_dir")
    jpeg = store.jpeg(frame_id)
    if jpeg is None:
        raise HTTPException(404, f"no thumbnail for frame id {frame_id!r}")
    return Response(jpeg, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=300"})


def mount_console(app: FastAPI) -> None:
    """The console's routes and files, and Swagger UI at ``/docs`` from the local
    ``swagger-ui-bundle`` package when the app was created with ``docs_url=None`` (FastAPI's
    own page loads Swagger UI from a CDN)."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.mount("/console/swagger", StaticFiles(directory=str(swagger_ui_path)),
              name="swagger-ui")
    if app.docs_url is not None:
        return

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json",
                                   title=f"{app.title} - API docs",
                                   swagger_js_url="/console/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/console/swagger/swagger-ui.css",
                                   swagger_favicon_url="/console/swagger/favicon-32x32.png")
