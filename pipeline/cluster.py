"""A local multi-node KRaft cluster (``vistream broker start --nodes 3``), built on the broker
module: the same jars, the same ``server.properties`` writer, the same process handling.

Node ``i`` (1-based) listens for clients on ``port + 2(i-1)`` and for the controller quorum on
the port after it; its data live in ``<data_dir>/node-<i>`` (default data dir:
``<cache>/cluster-<port>``). Every node is broker *and* controller; the quorum is static (all
nodes vote), and every node is formatted with the one cluster id kept in
``<data_dir>/cluster.id``. With three nodes the internal topics and new topics get three
replicas and ``min.insync.replicas`` 2, so an acks=all producer keeps writing, and loses nothing,
while any one node is down. Each JVM gets a small heap (256 MiB by default) so that three fit
on a developer machine.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vistream.pipeline import broker
from vistream.pipeline.broker import BrokerError, BrokerInfo

DEFAULT_HEAP = "256m"


@dataclass
class ClusterInfo:
    nodes: list[BrokerInfo]
    bootstrap: str  # every node's client address, comma separated
    data_dir: Path
    cluster_id: str
    reused: bool = False

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)


def node_ports(n: int, port: int) -> list[tuple[int, int, int]]:
    """``(node_id, client_port, controller_port)`` for each of ``n`` nodes."""
    if n < 1:
        raise BrokerError(f"a cluster needs at least one node, got {n}")
    return [(i + 1, port + 2 * i, port + 2 * i + 1) for i in range(n)]


def _root(port: int, data_dir: str | Path | None) -> Path:
    d = Path(data_dir) if data_dir is not None else broker.cache_dir() / f"cluster-{port}"
    return d.resolve()


def _node_dir(root: Path, node_id: int) -> Path:
    return root / f"node-{node_id}"


def cluster_bootstrap(n: int, port: int) -> str:
    return ",".join(broker.bootstrap(p) for _, p, _ in node_ports(n, port))


def status(n: int = 3, port: int = 9092, data_dir: str | Path | None = None) -> ClusterInfo:
    root = _root(port, data_dir)
    nodes = [broker.status(p, _node_dir(root, i)) for i, p, _ in node_ports(n, port)]
    cid = (root / "cluster.id").read_text().strip() if (root / "cluster.id").exists() else ""
    return ClusterInfo(nodes, cluster_bootstrap(n, port), root, cid)


def _cluster_id(root: Path) -> str:
    f = root / "cluster.id"
    if f.exists():
        return f.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    jars = broker.ensure_jars()
    log4j = root / "log4j2.properties"
    log4j.write_text(broker.log4j_properties(root / "tools.log"))
    cid = broker.new_cluster_id(jars, log4j)
    f.write_text(cid + "\n")
    return cid


def start(n: int = 3, port: int = 9092, data_dir: str | Path | None = None,
          heap: str = DEFAULT_HEAP, timeout: float = 120) -> ClusterInfo:
    """Start (or reuse) an ``n``-node cluster; returns once every node answers clients.

    All JVMs are launched before any is waited for: a node only answers once the controller
    quorum (a majority of the nodes) is up.
    """
    root = _root(port, data_dir)
    now = status(n, port, root)
    if now.running:
        now.reused = True
        return now
    cid = _cluster_id(root)
    ports = node_ports(n, port)
    voters = [(i, c) for i, _, c in ports]
    procs = {}
    try:
        for (i, p, _), info in zip(ports, now.nodes, strict=True):
            if info.running:
                continue
            d = _node_dir(root, i)
            text = broker.server_properties(p, d, node_id=i, voters=voters, replicas=min(n, 3))
            procs[i] = broker.launch(p, d, text, heap, cluster_id=cid)
        for i, p, _ in ports:
            if i in procs:
                broker.wait_ready(p, procs[i].pid, _node_dir(root, i), timeout, procs[i])
    except BrokerError:
        stop(n, port, root, timeout=10)
        raise
    info = status(n, port, root)
    if not info.running:
        raise BrokerError(f"cluster in {root} started but not every node answers")
    return info


def kill_node(node_id: int, n: int, port: int, data_dir: str | Path | None = None) -> int | None:
    """SIGKILL node ``node_id`` (no clean shutdown) and reap it; returns its pid."""
    root = _root(port, data_dir)
    _, p, _ = node_ports(n, port)[node_id - 1]
    d = _node_dir(root, node_id)
    pid = broker.status(p, d).pid
    if pid:
        os.kill(pid, signal.SIGKILL)
    broker.stop(p, d)  # reaps it, removes the pid file
    return pid


def stop(n: int = 3, port: int = 9092, data_dir: str | Path | None = None,
         timeout: float = 30) -> int:
    """Stop every node (SIGTERM, SIGKILL after ``timeout``); returns how many were running."""
    root = _root(port, data_dir)
    # all at once: stopped one by one, the last nodes wait for a controller quorum that is gone
    with ThreadPoolExecutor(max_workers=n) as pool:
        done = pool.map(lambda node: broker.stop(node[1], _node_dir(root, node[0]), timeout),
                        node_ports(n, port))
        return sum(done)


@contextmanager
def running(n: int = 3, port: int = 9092, data_dir: str | Path | None = None,
            **start_args) -> Iterator[ClusterInfo]:
    """A cluster for a ``with`` block: stopped at the end unless it was already running."""
    info = start(n, port, data_dir, **start_args)
    try:
        yield info
    finally:
        if not info.reused:
            stop(n, port, data_dir)
