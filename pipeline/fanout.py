"""Queries over a sharded index: the fan-out that asks every shard replica, and how it finds
them. The replicas themselves are :mod:`vistream.pipeline.shardhost`.

Fan-out (:class:`FanoutClient`)
    Asks every live shard replica the same query at once, each through an *endpoint* (any
    callable taking the query and returning its JSON answer: in-process, a pipe to another
    process, or HTTP with :func:`http_endpoint` against :func:`shard_app`), and merges the
    answers with :func:`merge_answers`: the exact top-k over every shard that answered (each
    answer is its shards' top-k in (distance, frame id) order, see
    :mod:`vistream.models.hashing.shards`). A replica that fails or does not answer within
    ``timeout_s`` makes the answer ``partial: true`` with the partitions it would have covered
    listed in ``missing``.

Finding the replicas (:func:`announcer`, :class:`ShardDirectory`)
    Each replica announces its name, URL and shard keys on a registry topic (keyed by name, so
    a compacted topic keeps the latest); the directory builds a :class:`FanoutClient` over the
    live ones and keeps expecting the partitions of a silent one.

A shard answer (JSON)
    ``{"hits": [{"frame_id", "distance", ...}, ...], "shards": {<key>: {"model",
    "model_version", "warm_start", "n"}, ...}}``: the keys are the partitions the replica
    searched. The merged answer adds ``partial``, ``missing`` and ``consistent`` (one model
    version across all shards).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from vistream.models.hashing.shards import ShardedIndex, ShardedResult
from vistream.pipeline.bus import Bus, TopicPartition

log = logging.getLogger("vistream.fanout")

Endpoint = Callable[[dict[str, Any]], dict[str, Any]]


def shard_key(tp: TopicPartition) -> str:
    """The shard of a partition: ``<topic>-<partition>``."""
    return f"{tp.topic}-{tp.partition}"


# --------------------------------------------------------------------------- answers


def answer_json(result: ShardedResult) -> dict[str, Any]:
    """A replica's answer to one query, as it goes over the wire."""
    return {"hits": [{"frame_id": h.frame_id, "distance": int(h.distance), "label": h.label,
                      "stream_id": h.stream_id, "timestamp_ms": h.timestamp_ms}
                     for h in result.hits],
            "shards": {k: v.to_json() for k, v in result.shards.items()}}


def _order(hit: Mapping[str, Any]) -> tuple[int, str]:
    return (int(hit["distance"]), str(hit["frame_id"]))


def merge_answers(answers: Mapping[str, Mapping[str, Any] | None], k: int,
                  expected: Iterable[str] = (),
                  covers: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """The exact top-k of replica answers (None: that replica did not answer). ``expected``
    names every partition the answer should cover; the ones no answer covers are ``missing``
    (and the answer ``partial``). A replica that did not answer makes the answer partial too,
    unless ``covers`` says which partitions it held (then only partitions nobody answered
    for count: a dead replica whose partitions moved to a live one leaves nothing out). A
    frame id in two answers counts once, at its nearer distance."""
    best: dict[str, Mapping[str, Any]] = {}
    shards: dict[str, Any] = {}
    for ans in answers.values():
        if ans is None:
            continue
        shards.update(ans.get("shards", {}))
        for h in ans.get("hits", []):
            old = best.get(h["frame_id"])
            if old is None or _order(h) < _order(old):
                best[h["frame_id"]] = h
    hits = sorted(best.values(), key=_order)[: max(int(k), 0)]
    missing = sorted(set(expected) - set(shards))
    versions = {(s.get("model"), s.get("model_version")) for s in shards.values() if s.get("n")}
    unknown = any(a is None and not (covers or {}).get(n) for n, a in answers.items())
    return {"hits": [dict(h) for h in hits], "shards": dict(sorted(shards.items())),
            "partial": bool(missing) or unknown,
            "missing": missing, "consistent": len(versions) <= 1}


# --------------------------------------------------------------------------- the client


class FanoutClient:
    """Asks every endpoint at once and merges (see the module docstring). ``endpoints`` maps a
    replica name to its endpoint; ``covers`` maps it to the partitions (shard keys) it last
    announced, so a silent replica's partitions can be named in ``missing``."""

    def __init__(self, endpoints: Mapping[str, Endpoint], timeout_s: float = 1.0,
                 covers: Mapping[str, Iterable[str]] | None = None) -> None:
        self.endpoints = dict(endpoints)
        self.timeout_s = float(timeout_s)
        self.covers = {k: set(v) for k, v in (covers or {}).items()}
        self._failing: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(len(self.endpoints), 1),
                                        thread_name_prefix="fanout")

    def search(self, query: Mapping[str, Any], k: int = 10) -> dict[str, Any]:
        """``query`` is what each endpoint takes, e.g. ``{"vector": [...]}`` or ``{"code":
        [...]}``; ``k`` is added to it. Returns the merged answer plus ``merge_ms`` (the time
        the merge itself took) and ``replicas`` (who answered)."""
        q = {**query, "k": int(k)}
        futures = {name: self._pool.submit(ep, q) for name, ep in self.endpoints.items()}
        done, _ = wait(futures.values(), timeout=self.timeout_s)
        for fut in done:
            if isinstance(fut.exception(), QueryRejected):  # the query's fault, not a shard's
                raise fut.exception()
        answers: dict[str, Mapping[str, Any] | None] = {}
        for name, fut in futures.items():
            if fut in done and fut.exception() is None:
                answers[name] = fut.result()
                self.covers[name] = set(answers[name].get("shards", {}))
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("shard replica %s answers again", name)
            else:
                answers[name] = None
                why = fut.exception() if fut in done else f"no answer in {self.timeout_s} s"
                if fut not in done:
                    fut.cancel()
                if name not in self._failing:  # once per failure, not once per query
                    self._failing.add(name)
                    log.warning("shard replica %s failed: %s", name, why)
        expected = set().union(*self.covers.values()) if self.covers else set()
        t0 = time.perf_counter()
        out = merge_answers(answers, k, expected, self.covers)
        out["merge_ms"] = (time.perf_counter() - t0) * 1000
        out["replicas"] = {n: a is not None for n, a in answers.items()}
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class QueryRejected(ValueError):
    """A replica refused the query itself (HTTP 4xx: wrong length, bad code...): every replica
    would, so the fan-out raises it instead of calling the answer partial."""


def local_endpoint(index: ShardedIndex) -> Endpoint:
    """An endpoint that searches a :class:`ShardedIndex` in this process."""

    def ask(q: dict[str, Any]) -> dict[str, Any]:
        k = int(q.get("k", 10))
        if "code" in q:
            return answer_json(index.search_codes(np.asarray(q["code"], np.uint8), k))
        return answer_json(index.search_vector(np.asarray(q["vector"], np.float32), k))

    return ask


def http_endpoint(url: str, client: Any, path: str = "/shard/search") -> Endpoint:
    """An endpoint behind HTTP: POSTs the query as JSON to ``url + path`` with ``client``
    (an ``httpx.Client``), expects a shard answer back."""

    def ask(q: dict[str, Any]) -> dict[str, Any]:
        r = client.post(url.rstrip("/") + path, json=q)
        if 400 <= r.status_code < 500:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            raise QueryRejected(str(detail))
        r.raise_for_status()
        return r.json()

    return ask


# --------------------------------------------------------------------------- the registry


def announcer(bus: Bus, topic: str, name: str, url: str) -> Callable[[list[str]], None]:
    """What a replica calls with the shard keys it holds: one record of the registry topic
    keyed by the replica's ``name`` (compactable), with its ``url`` and the time."""
    producer = bus.producer()

    def announce(keys: list[str]) -> None:
        body = {"name": name, "url": url, "partitions": list(keys),
                "at_ms": int(time.time() * 1000)}
        producer.send(topic, json.dumps(body).encode(), key=name.encode())
        producer.flush()

    return announce


class ShardDirectory:
    """The live shard replicas, read from the registry topic (from its start, in a group of its
    own): the latest announcement per replica. A replica not heard of for ``ttl_s`` is taken
    for dead: it gets no query, but the partitions it last held stay *expected*, so an answer
    without them says ``partial`` and names them until another replica announces them."""

    def __init__(self, bus: Bus, topic: str, ttl_s: float = 15.0) -> None:
        self.consumer = bus.consumer([topic], f"shard-directory-{uuid.uuid4().hex}")
        self.ttl_s = float(ttl_s)
        self.entries: dict[str, dict[str, Any]] = {}

    def refresh(self, timeout: float = 0.0) -> None:
        while True:
            recs = self.consumer.poll(500, timeout)
            self.absorb(recs)
            if not recs:
                return
            timeout = 0.0

    def absorb(self, recs: Iterable[Any]) -> None:
        """Take announcements polled from the registry topic (by :meth:`refresh`, or by a
        caller that polls :attr:`consumer` itself, e.g. in a thread of its own)."""
        for rec in recs:
            try:
                body = json.loads(rec.value or b"{}")
                name = str(body["name"])
                body["partitions"] = [str(p) for p in body["partitions"]]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipped registry record %s: %s", rec.source_id, exc)
                continue
            self.entries[name] = body

    def live(self, now_ms: int | None = None) -> dict[str, dict[str, Any]]:
        """The replicas heard of within ``ttl_s`` that hold shards, less those *superseded*:
        every partition they last announced has since been announced by another live one
        (a replica that died and whose partitions moved on)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        fresh = {n: e for n, e in self.entries.items()
                 if e["partitions"] and now_ms - int(e.get("at_ms", 0)) <= self.ttl_s * 1000}

        def superseded(name: str, e: dict[str, Any]) -> bool:
            newer = [o for m, o in fresh.items() if m != name
                     and (int(o.get("at_ms", 0)), m) > (int(e.get("at_ms", 0)), name)]
            return set(e["partitions"]) <= {p for o in newer for p in o["partitions"]}

        return {n: e for n, e in fresh.items() if not superseded(n, e)}

    def client(self, make_endpoint: Callable[[str], Endpoint], timeout_s: float = 1.0,
               now_ms: int | None = None) -> FanoutClient:
        """A fan-out over the live replicas (``make_endpoint(url)``), expecting every partition
        any replica last announced."""
        self.refresh()
        live = self.live(now_ms)
        covers = {n: e["partitions"] for n, e in self.entries.items()}
        return FanoutClient({n: make_endpoint(e["url"]) for n, e in live.items()}, timeout_s,
                            covers=covers)

    def close(self) -> None:
        self.consumer.close()


class ShardQuery(BaseModel):
    vector: list[float] | None = Field(None, description="a feature vector")
    code: list[int] | None = Field(None, description="a packed code (uint8 values)")
    k: int = Field(10, ge=1, le=1000)


def shard_app(index: ShardedIndex) -> FastAPI:
    """The HTTP face of one replica: ``POST /shard/search`` with a :class:`ShardQuery` answers
    its shards' part (see "A shard answer"); a bad query is a 400/422 with the reason."""
    app = FastAPI(title="vistream index shard")
    ask = local_endpoint(index)

    @app.post("/shard/search")
    def search(q: ShardQuery) -> dict[str, Any]:
        if (q.vector is None) == (q.code is None):
            raise HTTPException(422, "give a vector or a code (exactly one)")
        if q.code is not None and any(not 0 <= c <= 255 for c in q.code):
            raise HTTPException(422, "a code is packed bytes: values 0..255")
        try:
            return ask(q.model_dump(exclude_none=True))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/shard/frame")
    def frame(frame_id: str = Query(..., min_length=1)) -> dict[str, Any]:
        """The feature vector of an indexed frame (404 when no shard here holds it)."""
        vec = index.frame_vector(frame_id)
        if vec is None:
            raise HTTPException(404, f"no shard here holds frame {frame_id!r}")
        return {"frame_id": frame_id, "vector": vec.tolist()}

    @app.get("/shard/frames")
    def frames() -> dict[str, list[str]]:
        """The frame ids each shard holds."""
        return index.frame_ids()

    @app.get("/shard/info")
    def info() -> dict[str, Any]:
        shards = {k: {"codes": len(s), "model": s.model_name, "model_version": s.model_version,
                      "warm_start": s.warm_start} for k, s in sorted(index.shards.items())}
        return {"partitions": index.keys(), "codes": len(index), "dim": index.dim,
                "model": None if index.model is None else index.model.name,
                "model_version": None if index.model is None else index.model.version,
                "shards": shards}

    return app
