"""``vistream bench index --shards 1,2,4``: the sharded index with one process per shard replica.

Setup
    ``n`` synthetic features (``dim``-d, seeded clusters of a low-rank latent space, the same in
    every process) split over ``partitions`` partitions (frame ``i`` in partition
    ``i % partitions``); the partitions are dealt round-robin to ``s`` shard processes (spawned,
    one :class:`~vistream.models.hashing.shards.ShardedIndex` each). One shared hash model (LSH
    of ``n_bits`` bits, fitted in the parent) is sent to every shard. A partition's "topic" is
    the deterministic list of its rows: the position in it is the offset stored with a shard's
    snapshot. Every process keeps its FAISS searches and BLAS to one thread.

Measured, for each ``s`` in ``shards``
    * **ingest**: every process generates its rows first (not timed), then all start together
      and ``LiveIndex.add`` their partitions in batches of ``batch``; throughput = total rows /
      the slowest process's time. ``ingest_scaling_2`` = rows/s with 2 shards / with 1.
      ``ingest_scaling_2_cpu`` divides by the busiest process's CPU seconds instead of its
      wall time: the scaling with one free core per shard, which a machine shared with other
      work cannot show in wall time.
    * **query**: ``queries`` query vectors, one at a time, through
      :class:`~vistream.pipeline.fanout.FanoutClient` (one pipe per process; each process
      encodes the query with its model and answers its exact top-k); p50/p99 of the whole
      fan-out, and ``merge_ms`` (the merge alone). ``p99_ratio_4`` = p99 with 4 shards / with 1
      (same total rows).
    * **exactness**: every fan-out answer equals the top-k of one index over all rows (the
      parent's own :class:`LiveIndex`, same model), in (distance, frame id) order.

Recovery (the largest ``s`` > 1)
    Each shard is snapshotted (per partition, with its position) at ``snapshot_at`` of its rows;
    the rest is indexed after. One process is SIGKILLed; the parent hands its partitions to a
    survivor, which opens each from its snapshot and replays the partition from the stored
    position; ``recovery_s`` is the time from the kill to the survivor's answer that the
    partitions are searchable (a real deployment adds the group's failure detection, Kafka's
    ``session.timeout.ms``, on top). Then every frame id must be held exactly once (``lost``,
    ``duplicated``).

With ``--bootstrap`` (a Kafka broker), ``recovery_s`` is instead measured through a real
rebalance: :mod:`vistream.bench.shards_kafka` (two ``vistream stage`` replicas of a sharded
config, one SIGKILLed); the figure above is then ``recovery_inprocess_s``.

The last line printed is the JSON with ``exact``, ``ingest_scaling_2``, ``p99_ratio_4`` and
``recovery_s``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vistream.bench.machine import cpu_model
from vistream.bench.shard_data import fid, key, make_data
from vistream.bench.shards_kafka import kafka_recovery
from vistream.models.hashing.base import HashModel
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.registry import make_hash_model
from vistream.models.hashing.shards import ShardedIndex, shard_topk
from vistream.pipeline.fanout import FanoutClient, answer_json, merge_answers

TARGETS = {"ingest_scaling_2": 1.7, "p99_ratio_4": 2.0, "recovery_s": 10.0}


# --------------------------------------------------------------------------- the shard process


def _worker(conn: Any, spec: dict[str, Any]) -> None:
    """One shard replica: answers the parent's commands over ``conn`` until ``stop``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    X = make_data(spec["n"], spec["dim"], spec["seed"])
    P = spec["partitions"]
    model = HashModel.from_bytes(spec["model"])
    index = ShardedIndex(spec["root"], background=False, n_bits=model.n_bits,
                         search_threads=1)
    index.set_model(model)
    pos: dict[int, int] = {}

    def rows(p: int) -> np.ndarray:
        return np.arange(p, spec["n"], P)

    def feed(p: int, upto: int) -> None:
        r = rows(p)
        for s in range(pos[p], upto, spec["batch"]):
            sel = r[s: min(s + spec["batch"], upto)]
            index.add(key(p), [fid(i) for i in sel], X[sel])
        pos[p] = max(pos[p], upto)

    while True:
        cmd, arg = conn.recv()
        if cmd == "ingest":  # arg: (partitions, fraction); reply when done with the time
            parts, frac = arg
            for p in parts:
                index.open_shard(key(p))
                pos[p] = 0
            conn.send("ready")
            conn.recv()  # go
            t0, c0 = time.perf_counter(), time.process_time()
            for p in parts:
                feed(p, int(len(rows(p)) * frac))
            conn.send((time.perf_counter() - t0, time.process_time() - c0))
        elif cmd == "snapshot":
            for p in list(pos):
                index.snapshot_shard(key(p), {"positions": [["features", p, pos[p]]]})
            conn.send(True)
        elif cmd == "finish":  # index the rest of every partition held
            for p in list(pos):
                feed(p, len(rows(p)))
            for s in index.shards.values():
                s.compact()
            conn.send(True)
        elif cmd == "take":  # partitions of a dead replica: snapshot + replay
            t0 = time.perf_counter()
            for p in arg:
                carry = index.open_shard(key(p)) or {}
                pos[p] = int(carry.get("positions", [["", p, 0]])[0][2])
                feed(p, len(rows(p)))
            conn.send(time.perf_counter() - t0)
        elif cmd == "search":
            q = np.asarray(arg["vector"], np.float32)
            conn.send(answer_json(index.search_vector(q, int(arg["k"]))))
        elif cmd == "held":
            conn.send(index.frame_ids())
        elif cmd == "stop":
            conn.send(True)
            return


class ShardProcess:
    def __init__(self, ctx: Any, spec: dict[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, spec), daemon=True)
        self.proc.start()
        self.lock = threading.Lock()

    def call(self, cmd: str, arg: Any = None) -> Any:
        with self.lock:
            self.conn.send((cmd, arg))
            return self.conn.recv()

    def endpoint(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda q: self.call("search", q)

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.call("stop")
            except (EOFError, OSError, BrokenPipeError):
                pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- one setting


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000, q)), 3)


def _run_shards(s: int, spec: dict[str, Any], one: LiveIndex, Q: np.ndarray, k: int,
                recovery: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    P = spec["partitions"]
    owned = {w: [p for p in range(P) if p % s == w] for w in range(s)}
    procs = [ShardProcess(ctx, spec) for _ in range(s)]
    out: dict[str, Any] = {"shards": s}
    try:
        frac = spec["snapshot_at"] if recovery else 1.0
        for w, pr in enumerate(procs):
            pr.conn.send(("ingest", (owned[w], frac)))
        for pr in procs:
            assert pr.conn.recv() == "ready"
        t0 = time.perf_counter()
        for pr in procs:
            pr.conn.send(("go", None))
        done = [pr.conn.recv() for pr in procs]
        wall = time.perf_counter() - t0
        times, cpu = [d[0] for d in done], [d[1] for d in done]
        rows_in = int(sum(len(range(p, spec["n"], P)) * frac for p in range(P)))
        out["ingest_rows"] = rows_in
        out["ingest_rows_per_s"] = round(rows_in / max(max(times), 1e-9))
        out["ingest_wall_s"] = round(wall, 3)
        # CPU seconds of the busiest shard: the ingest rate with one free core per shard
        out["ingest_cpu_s"] = [round(c, 3) for c in cpu]
        out["ingest_rows_per_cpu_s"] = round(rows_in / max(max(cpu), 1e-9))
        if recovery:
            for pr in procs:
                pr.call("snapshot")
        for pr in procs:
            pr.call("finish")
        client = FanoutClient({f"r{w}": pr.endpoint() for w, pr in enumerate(procs)},
                              timeout_s=30)
        lat, merge, mismatched = [], [], 0
        for q in Q:
            t1 = time.perf_counter()
            ans = client.search({"vector": q.tolist()}, k)
            lat.append(time.perf_counter() - t1)
            merge.append(ans["merge_ms"])
            want = shard_topk(one, one.store.view, one.model.encode(q.reshape(1, -1))[0], k)
            got = [(h["distance"], h["frame_id"]) for h in ans["hits"]]
            mismatched += int(got != [(h.distance, h.frame_id) for h in want]
                              or ans["partial"])
        client.close()
        out.update({"query_p50_ms": _pct(lat, 50), "query_p99_ms": _pct(lat, 99),
                    "merge_p50_ms": round(float(np.median(merge)), 4),
                    "merge_p99_ms": round(float(np.percentile(merge, 99)), 4),
                    "queries": len(Q), "mismatched": mismatched})
        if recovery and s > 1:
            out["recovery"] = _recover(procs, owned, spec, echo)
    finally:
        for pr in procs:
            pr.stop()
    return out


def _recover(procs: list[ShardProcess], owned: dict[int, list[int]], spec: dict[str, Any],
             echo: Callable[[str], None]) -> dict[str, Any]:
    victim, heir = len(procs) - 1, 0
    t0 = time.perf_counter()
    os.kill(procs[victim].proc.pid, signal.SIGKILL)
    procs[victim].proc.join(10)
    replay_s = procs[heir].call("take", owned[victim])
    recovery_s = time.perf_counter() - t0
    held: list[str] = []
    for w, pr in enumerate(procs):
        if w != victim:
            for ids in pr.call("held").values():
                held += ids
    want = {fid(i) for i in range(spec["n"])}
    got = set(held)
    echo(f"  recovery: {len(owned[victim])} partitions back in {recovery_s:.2f} s")
    return {"recovery_s": round(recovery_s, 3), "take_s": round(replay_s, 3),
            "partitions_moved": len(owned[victim]), "lost": len(want - got),
            "duplicated": len(held) - len(got), "extra": len(got - want)}


# --------------------------------------------------------------------------- cost model


def _median_s(fn: Callable[[], Any], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cost_model(one: LiveIndex, Q: np.ndarray, k: int, rpc_ms: float) -> dict[str, Any]:
    """The parts of a fan-out query, measured here, and what they add up to at 100 shards:
    the exact scan of one shard (per million codes, from the parent's single index), the merge
    per shard answer (``merge_answers`` over 10 and 100 synthetic answers of k hits), and the
    fixed cost of asking one replica (``rpc_ms``: 1-shard fan-out p50 minus its scan)."""
    view = one.store.view
    codes = one.model.encode(Q[:50])
    scan = _median_s(lambda: [one.store.knn(view, c.reshape(1, -1), k) for c in codes], 5)
    scan_ms_per_m = scan / len(codes) * 1000 / (view.n / 1e6)
    rng = np.random.default_rng(0)

    def answers(s: int) -> dict[str, Any]:
        return {f"r{i}": {"hits": [{"frame_id": f"s{i}-{j}", "distance": int(d)}
                                   for j, d in enumerate(np.sort(rng.integers(0, 20, k)))],
                          "shards": {f"p{i}": {"n": 1, "model": "m", "model_version": 1}}}
                for i in range(s)}

    a10, a100 = answers(10), answers(100)
    m10 = _median_s(lambda: merge_answers(a10, k), 50) * 1000
    m100 = _median_s(lambda: merge_answers(a100, k), 20) * 1000
    per_shard = (m100 - m10) / 90
    out = {"scan_ms_per_million_codes": round(scan_ms_per_m, 3),
           "merge_ms_per_shard": round(per_shard, 5), "merge_ms_100": round(m100, 4),
           "rpc_ms": round(rpc_ms, 3)}
    for total in (10**8, 10**9):
        per = total / 100
        out[f"p50_ms_100_shards_{total:.0e}_codes"] = round(
            rpc_ms + scan_ms_per_m * per / 1e6 + m100, 2)
    return out


# --------------------------------------------------------------------------- the bench


def bench_shards(shards: tuple[int, ...] = (1, 2, 4), n: int = 200_000, dim: int = 64,
                 n_bits: int = 64, partitions: int = 4, queries: int = 300, k: int = 10,
                 batch: int = 1000, snapshot_at: float = 0.8, seed: int = 0,
                 bootstrap: str | None = None, kafka_n: int = 40_000,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the measurements of the module docstring; returns the summary (printed last).
    With ``bootstrap`` (a Kafka broker), ``recovery_s`` comes from a real rebalance instead
    (:mod:`vistream.bench.shards_kafka`, ``kafka_n`` rows)."""
    if any(s < 1 or s > partitions for s in shards):
        raise ValueError(f"--shards must be between 1 and the partitions ({partitions})")
    X = make_data(n, dim, seed)
    model = make_hash_model("lsh", n_bits=n_bits, seed=seed)
    model.partial_fit(X[: min(n, 10_000)])
    model.bias = -(X[: min(n, 10_000)].mean(0) @ model.W).astype(np.float32)
    one = LiveIndex(model, background=False, search_threads=1)
    for s0 in range(0, n, 65536):
        one.add([fid(i) for i in range(s0, min(s0 + 65536, n))], X[s0: s0 + 65536])
    one.compact()
    Q = make_data(queries, dim, seed + 7)
    root = Path(tempfile.mkdtemp(prefix="vistream-shards-"))
    spec = {"n": n, "dim": dim, "seed": seed, "partitions": partitions, "batch": batch,
            "model": model.to_bytes(), "snapshot_at": snapshot_at}
    runs: dict[int, dict[str, Any]] = {}
    try:
        biggest = max(shards)
        for s in sorted(set(shards)):
            spec["root"] = str(root / f"s{s}")
            echo(f"{s} shard process(es): ingest {n} rows, {queries} fan-out queries")
            runs[s] = _run_shards(s, spec, one, Q, k, recovery=(s == biggest and s > 1),
                                  echo=echo)
            echo(f"  {runs[s]}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    model_costs = None
    if 1 in runs:
        scan1 = _median_s(lambda: [one.store.knn(one.store.view, c.reshape(1, -1), k)
                                   for c in one.model.encode(Q[:50])], 3) / 50 * 1000
        model_costs = cost_model(one, Q, k, max(runs[1]["query_p50_ms"] - scan1, 0.0))
    kafka = None
    if bootstrap:
        kafka = kafka_recovery(bootstrap, n=kafka_n, dim=dim, n_bits=n_bits,
                               partitions=partitions, seed=seed, echo=echo)
    summary: dict[str, Any] = {
        "exact": all(r["mismatched"] == 0 for r in runs.values()),
        "ingest_scaling_2": (round(runs[2]["ingest_rows_per_s"] / runs[1]["ingest_rows_per_s"],
                                   3) if 1 in runs and 2 in runs else None),
        "ingest_scaling_2_cpu": (round(runs[2]["ingest_rows_per_cpu_s"]
                                       / runs[1]["ingest_rows_per_cpu_s"], 3)
                                 if 1 in runs and 2 in runs else None),
        "p99_ratio_4": (round(runs[4]["query_p99_ms"] / runs[1]["query_p99_ms"], 3)
                        if 1 in runs and 4 in runs else None),
        "recovery_s": (kafka["recovery_s"] if kafka else
                       next((r["recovery"]["recovery_s"] for r in runs.values()
                             if "recovery" in r), None)),
        "lost": _total("lost", runs, kafka),
        "duplicated": _total("duplicated", runs, kafka),
        "recovery_via": ("kafka rebalance after SIGKILL (kafka_recovery)" if kafka else
                         "in-process handover after SIGKILL (no failure detection)"),
        "recovery_inprocess_s": next((r["recovery"]["recovery_s"] for r in runs.values()
                                      if "recovery" in r), None),
        "kafka_recovery": kafka,
        "targets": TARGETS, "n": n, "dim": dim, "n_bits": n_bits, "partitions": partitions,
        "k": k, "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)), "cost_model": model_costs,
        "runs": {str(s): r for s, r in runs.items()},
    }
    return summary


def _total(what: str, runs: dict[int, dict[str, Any]], kafka: dict[str, Any] | None
           ) -> int | None:
    """``lost`` or ``duplicated`` over the recovery runs (in-process, Kafka)."""
    got = [r["recovery"][what] for r in runs.values() if "recovery" in r]
    got += [kafka[what]] if kafka else []
    return sum(got) if got else None
