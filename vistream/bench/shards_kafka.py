"""``vistream bench index --shards ... --bootstrap HOST:PORT``: the recovery of a SIGKILLed
shard replica through a real Kafka rebalance.

Setup
    A sharded index config (``configs/index-sharded.yaml``'s shape) on a fresh features topic
    of ``partitions`` partitions holding ``n`` rows (the bench's seeded clusters; the first
    ``labelled`` carry their cluster as label, so the learner publishes SDOH versions), and
    two ``vistream stage index`` processes of it: one consumer group, snapshots per partition
    in a temporary folder, learner elected through Kafka.

Measured
    Once both replicas announce their shards and the fan-out holds all ``n`` codes on one model
    version, one replica is SIGKILLed. ``recovery_s`` is the time from the kill to the first
    fan-out answer (:class:`~vistream.pipeline.shardserve.ShardedQueries`, the path of
    ``vistream serve``) that is not partial and covers all ``n`` codes: Kafka's failure
    detection (``session_timeout_s``), the rebalance, the survivor opening the dead replica's
    partitions from their snapshots and replaying the rest. Then the survivor's frame ids:
    ``lost`` (expected, not held) and ``duplicated`` (held twice) must both be 0, and the answer
    must equal one index over all rows with the same model (``exact``). ``reassigned_s`` is the
    part of ``recovery_s`` until the survivor announced every partition (detection and
    rebalance); the rest is opening snapshots and replaying.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vistream.bench.shard_data import fid, make_labelled
from vistream.models.hashing.live import LiveIndex
from vistream.models.hashing.shards import shard_topk
from vistream.pipeline.app import create_topics
from vistream.pipeline.config import load_config
from vistream.pipeline.shardhost import ModelFollower
from vistream.pipeline.shardrun import create_shard_topics, shard_bus, sharded_params
from vistream.pipeline.shardserve import ShardedQueries
from vistream.pipeline.processes import stop_processes
from vistream.pipeline.wire import encode_message
from vistream.stages.records import Features


def _config(folder: Path, bootstrap: str, partitions: int, n_bits: int,
            session_timeout_s: float) -> tuple[Path, str]:
    tag = uuid.uuid4().hex[:10]
    topic = f"bench-features-{tag}"
    cfg = {"name": "bench-sharded", "bus": {"backend": "kafka", "bootstrap": bootstrap},
           "topics": {topic: partitions},
           "stages": [{"name": "index", "type": "hashing", "inputs": [topic],
                       "group": f"bench-index-{tag}", "batch_size": 1000,
                       "params": {"sharded": True, "model": "sdoh", "n_bits": n_bits,
                                  "train_chunk": 2000, "background": False,
                                  "snapshot_dir": str(folder / "shards"),
                                  "snapshot_every_records": 5000,
                                  "shards": {"heartbeat_s": 0.5, "ttl_s": 120,
                                             "query_timeout_s": 5,
                                             "session_timeout_s": session_timeout_s}}}]}
    path = folder / "sharded.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, topic


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def kafka_recovery(bootstrap: str, n: int = 40_000, dim: int = 64, n_bits: int = 64,
                   partitions: int = 4, labelled: int = 4000, seed: int = 0,
                   session_timeout_s: float = 6.0, settle_timeout: float = 300.0,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the measurement of the module docstring; returns its figures."""
    if not 2000 <= labelled <= n:
        raise ValueError(f"labelled must be between 2000 (one train_chunk) and n, got {labelled}")
    folder = Path(tempfile.mkdtemp(prefix="vistream-kafka-shards-"))
    X, y = make_labelled(n, dim, seed)
    config, topic = _config(folder, bootstrap, partitions, n_bits, session_timeout_s)
    cfg = load_config(config)
    st = cfg.stage("index")
    params = sharded_params(st)
    model_topic, registry_topic, _ = params.shards.topics(st.group_id)
    bus = shard_bus(cfg, params)
    procs: list[subprocess.Popen] = []
    queries = None
    try:
        create_topics(cfg, bus)
        create_shard_topics(bus, st, params)
        producer = bus.producer()
        for i in range(n):
            out = encode_message(Features(frame_id=fid(i), stream_id="bench", vector=X[i],
                                          label=int(y[i]) if i < labelled else None))
            producer.send(topic, out.value, key=fid(i).encode(), headers=out.headers)
        producer.flush()
        producer.close()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for r in range(2):
            with open(folder / f"replica-{r}.log", "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "vistream", "stage", "index", "-c", str(config)],
                    env=env, stdout=log, stderr=subprocess.STDOUT))
        echo(f"kafka recovery: {n} rows on {partitions} partitions, 2 replica processes")
        queries = ShardedQueries(bus, registry_topic, ttl_s=120, timeout_s=5)
        q = X[0]
        last_version = labelled // 2000  # one version per train_chunk of labelled rows

        def settled() -> dict[str, Any] | None:
            if len(queries.urls()) < 2:
                return None
            out = queries.client().search({"vector": q.tolist()}, 10)
            full = sum(int(s.get("n") or 0) for s in out["shards"].values()) == n
            ok = (full and not out["partial"] and out["consistent"]
                  and len([a for a in out["replicas"].values() if a]) == 2
                  and {(s["model"], s["model_version"]) for s in out["shards"].values()}
                  == {("sdoh", last_version)})
            return out if ok else None

        t_settle = time.monotonic()
        _wait(settled, settle_timeout, "both replicas holding every row on one model")
        settle_s = time.monotonic() - t_settle
        victim = procs[1]
        victim.send_signal(signal.SIGKILL)
        t0 = time.monotonic()

        moved: list[float] = []  # when one replica first announced every partition

        def back() -> dict[str, Any] | None:
            if not moved and any(len(e["partitions"]) == partitions
                                 for e in list(queries.directory.entries.values())):
                moved.append(time.monotonic() - t0)
            out = queries.client().search({"vector": q.tolist()}, 10)
            full = sum(int(s.get("n") or 0) for s in out["shards"].values()) == n
            return out if full and not out["partial"] else None

        after = _wait(back, 120, "the killed replica's partitions back")
        recovery_s = time.monotonic() - t0
        victim.wait(10)
        (survivor,) = [name for name, ok in after["replicas"].items() if ok]
        held_by = queries.http.get(queries.urls()[survivor] + "/shard/frames").json()
        held = [f for ids in held_by.values() for f in ids]
        want = {fid(i) for i in range(n)}
        follower = ModelFollower(bus, model_topic)
        model = _wait(lambda: follower.poll(1.0), 30, "the published model")
        follower.close()
        one = LiveIndex(model, background=False)
        one.add([fid(i) for i in range(n)], X)
        top = shard_topk(one, one.store.view, model.encode(q.reshape(1, -1))[0], 10)
        exact = ([(h["distance"], h["frame_id"]) for h in after["hits"]]
                 == [(h.distance, h.frame_id) for h in top]
                 and {s["model_version"] for s in after["shards"].values()} == {model.version})
        echo(f"  SIGKILL -> searchable again in {recovery_s:.2f} s")
        return {"recovery_s": round(recovery_s, 3), "session_timeout_s": session_timeout_s,
                # kill -> the survivor holds every partition (failure detection + rebalance);
                # the rest of recovery_s is opening snapshots and replaying
                "reassigned_s": round(moved[0], 3) if moved else None,
                "settle_s": round(settle_s, 3), "n": n, "partitions": partitions,
                "lost": len(want - set(held)), "duplicated": len(held) - len(set(held)),
                "extra": len(set(held) - want), "exact": exact,
                "model_version": int(model.version)}
    finally:
        if queries is not None:
            queries.close()
        stop_processes(procs, timeout=60)
        bus.close()
        shutil.rmtree(folder, ignore_errors=True)

