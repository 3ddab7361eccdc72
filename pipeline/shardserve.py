"""``vistream serve --config`` over a sharded index stage: the query API as a fan-out.

The replicas (:mod:`vistream.pipeline.shardrun`) announce themselves on the stage's registry
topic; :class:`ShardedQueries` reads it (:class:`~vistream.pipeline.fanout.ShardDirectory`),
asks every live replica over HTTP at once and merges their top-k exactly
(:class:`~vistream.pipeline.fanout.FanoutClient`). :func:`create_sharded_app` is the API:

* ``POST /search/vector`` JSON ``{"vector": [...], "k": 10}``;
* ``GET  /search/frame?frame_id=ID&k=10``: the frame's vector from the shard that holds it,
  then a vector search over all shards (the frame itself first);
* ``POST /search/image`` multipart ``image``: the config's features stage embeds it;
* ``GET  /stats``: codes, partitions and model version per replica and shard, summed;
* ``GET  /healthz``.

Every search answer carries, besides the hits, ``shards`` (per partition: model name, model
version, warm start, codes), ``consistent`` (one model version made every shard's codes),
``partial`` and ``missing`` (the partitions no replica answered for within
``shards.query_timeout_s``) and ``replicas`` (who answered). Bad input is a 4xx as in the
single-index API (:mod:`vistream.pipeline.service`): 422 a vector of the wrong length, 404 an
unknown frame id, 409 image search without an extractor, 400/413/415 a bad upload; 503 when no
replica is announced at all.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from fastapi import Body, FastAPI, File, HTTPException, Query, UploadFile
from pydantic import BaseModel, Field

from vistream.pipeline.bus import Bus, BusError
from vistream.pipeline.fanout import FanoutClient, QueryRejected, ShardDirectory, http_endpoint
from vistream.pipeline.service import ServiceLimits, check_upload

log = logging.getLogger("vistream.shardserve")


class ShardedQueries:
    """The live replicas of one sharded index stage and a fan-out over them. A thread of its
    own follows the registry topic (a Kafka consumer must be polled with a timeout to join its
    group and keep up); the fan-out is rebuilt only when the set of live replicas changes."""

    def __init__(self, bus: Bus, registry_topic: str, ttl_s: float = 10.0,
                 timeout_s: float = 2.0) -> None:
        self.directory = ShardDirectory(bus, registry_topic, ttl_s)
        self.timeout_s = float(timeout_s)
        self.http = httpx.Client(timeout=timeout_s)
        self.lock = threading.Lock()
        self._client: FanoutClient | None = None
        self._live: tuple[tuple[str, str], ...] = ()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="shard-directory", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                recs = self.directory.consumer.poll(500, 0.2)
            except BusError as exc:  # the runner's way: log, back off, go on
                log.warning("reading the shard registry failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if recs:
                with self.lock:
                    self.directory.absorb(recs)

    def wait_for_replicas(self, timeout: float) -> int:
        """Wait until a replica is announced (at most ``timeout`` s); returns how many are."""
        deadline = time.monotonic() + timeout
        while not self.urls() and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(self.urls())

    def client(self) -> FanoutClient:
        with self.lock:
            live = self.directory.live()
            key = tuple(sorted((n, e["url"]) for n, e in live.items()))
            if self._client is None or key != self._live:
                old, self._live = self._client, key
                self._client = FanoutClient({n: http_endpoint(u, self.http) for n, u in key},
                                            self.timeout_s)
                if old is not None:
                    old.close()
            covers = {n: set(e["partitions"]) for n, e in self.directory.entries.items()}
            self._client.covers = covers
            return self._client

    def urls(self) -> dict[str, str]:
        self.client()
        return dict(self._live)

    def search(self, query: dict[str, Any], k: int) -> dict[str, Any]:
        client = self.client()
        if not client.endpoints:
            raise HTTPException(503, "no shard replica of the index is announced (start "
                                     "`vistream stage` for the index stage)")
        try:
            return client.search(query, k)
        except QueryRejected as exc:
            raise HTTPException(422, str(exc)) from None

    def ask_all(self, path: str, params: dict[str, Any] | None = None
                ) -> dict[str, httpx.Response | None]:
        """GET ``path`` of every live replica at once (None: no answer in time)."""
        urls = self.urls()

        def get(url: str) -> httpx.Response | None:
            try:
                return self.http.get(url.rstrip("/") + path, params=params)
            except httpx.HTTPError:
                return None

        if not urls:
            return {}
        with ThreadPoolExecutor(max_workers=len(urls)) as pool:
            futures = {n: pool.submit(get, u) for n, u in urls.items()}
        return {n: f.result() for n, f in futures.items()}

    def frame_vector(self, frame_id: str) -> np.ndarray | None:
        for r in self.ask_all("/shard/frame", {"frame_id": frame_id}).values():
            if r is not None and r.status_code == 200:
                return np.asarray(r.json()["vector"], np.float32)
        return None

    def stats(self) -> dict[str, Any]:
        replicas: dict[str, Any] = {}
        for name, r in self.ask_all("/shard/info").items():
            replicas[name] = r.json() if r is not None and r.status_code == 200 else None
        shards = {k: v for info in replicas.values() if info
                  for k, v in info.get("shards", {}).items()}
        with self.lock:
            entries = list(self.directory.entries.values())
        expected = {p for e in entries for p in e["partitions"]}
        missing = sorted(expected - set(shards))
        versions = sorted({(v["model"], v["model_version"]) for v in shards.values()
                           if v["codes"]}, key=str)
        return {"codes": sum(v["codes"] for v in shards.values()), "partitions": len(shards),
                "replicas": replicas, "missing": missing, "partial": bool(missing),
                "model_versions": [list(v) for v in versions],
                "consistent": len(versions) <= 1,
                "dim": next((i["dim"] for i in replicas.values() if i and i.get("dim")), None)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self.lock:
            if self._client is not None:
                self._client.close()
        self.http.close()
        self.directory.close()


class ShardedHit(BaseModel):
    frame_id: str
    distance: int
    stream_id: str | None = None
    timestamp_ms: int | None = None
    label: int | None = None


class ShardedSearchResponse(BaseModel):
    query: str = Field(description="image, frame or vector")
    k: int
    model: str | None = Field(description="the newest hash model among the shards searched")
    model_version: int
    consistent: bool = Field(description="one model version made every searched shard's codes")
    partial: bool = Field(description="some partitions did not answer in time")
    missing: list[str] = Field(description="the partitions that did not answer")
    shards: dict[str, dict[str, Any]] = Field(description="per partition: model, model_version, "
                                                          "warm_start, n (codes)")
    replicas: dict[str, bool] = Field(description="replica name -> answered")
    frames_indexed: int
    took_ms: float
    hits: list[ShardedHit]


class ShardedVectorQuery(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=65536, description="a feature vector")
    k: int = Field(10, ge=1, le=1000)


def _response(kind: str, k: int, out: dict[str, Any], t0: float) -> ShardedSearchResponse:
    used = [(s.get("model_version") or 0, s.get("model")) for s in out["shards"].values()
            if s.get("n")]
    version, model = max(used, key=lambda v: (v[0], str(v[1]))) if used else (0, None)
    return ShardedSearchResponse(
        query=kind, k=k, model=model, model_version=int(version),
        consistent=out["consistent"], partial=out["partial"], missing=out["missing"],
        shards=out["shards"], replicas=out["replicas"],
        frames_indexed=sum(int(s.get("n") or 0) for s in out["shards"].values()),
        took_ms=round((time.perf_counter() - t0) * 1000, 3),
        hits=[ShardedHit(**{f: h.get(f) for f in ShardedHit.model_fields}) for h in out["hits"]])


def create_sharded_app(queries: ShardedQueries, extractor: Any | None = None,
                       limits: ServiceLimits | None = None) -> FastAPI:
    """The query API over a sharded index (see the module docstring)."""
    limits = limits or ServiceLimits()
    app = FastAPI(title="vistream retrieval (sharded)", version="1",
                  description="Fan-out queries over the shard replicas of a live index. See "
                              "docs/retrieval.md.")
    app.state.queries = queries
    k_query = Query(10, ge=1, le=limits.max_k, description="how many neighbours")

    def vector_search(kind: str, vec: np.ndarray, k: int, t0: float) -> ShardedSearchResponse:
        if not np.isfinite(vec).all():
            raise HTTPException(422, "vector contains NaN or infinity")
        return _response(kind, k, queries.search({"vector": vec.tolist()}, k), t0)

    @app.post("/search/vector", response_model=ShardedSearchResponse)
    def search_vector(q: ShardedVectorQuery = Body(...)) -> ShardedSearchResponse:
        """Search every shard by a raw feature vector; the exact merged top-k."""
        if q.k > limits.max_k:
            raise HTTPException(422, f"k must be at most {limits.max_k}")
        return vector_search("vector", np.asarray(q.vector, np.float32), q.k,
                             time.perf_counter())

    @app.get("/search/frame", response_model=ShardedSearchResponse)
    def search_frame(frame_id: str = Query(..., min_length=1, description="an indexed frame id"),
                     k: int = k_query) -> ShardedSearchResponse:
        """Neighbours of an indexed frame, over every shard (the frame itself first)."""
        t0 = time.perf_counter()
        vec = queries.frame_vector(frame_id)
        if vec is None:
            raise HTTPException(404, f"unknown frame id {frame_id!r} (no live shard holds it)")
        return vector_search("frame", vec, k, t0)

    @app.post("/search/image", response_model=ShardedSearchResponse)
    def search_image(image: UploadFile = File(..., description="a JPEG or PNG image"),
                     k: int = k_query) -> ShardedSearchResponse:
        """Search by an uploaded image, embedded by the config's features stage."""
        t0 = time.perf_counter()
        img = check_upload(image.file.read(limits.max_upload_bytes + 1), limits)
        if extractor is None:
            raise HTTPException(409, "image search is not configured: the service has no "
                                     "feature extractor")
        return vector_search("image", np.asarray(extractor.extract([img])[0], np.float32), k,
                             t0)

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        """Codes, partitions and model versions, per replica and summed over the shards."""
        return queries.stats()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        live = queries.urls()
        return {"status": "ok" if live else "no replicas", "replicas": sorted(live),
                "extractor": None if extractor is None else extractor.model_id}

    return app
