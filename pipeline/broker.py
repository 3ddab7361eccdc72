"""Provision and run a real single-node Apache Kafka broker for development and tests.

The broker is plain Apache Kafka started from its Maven Central jars: no Docker, no
ZooKeeper, no tarball download. :func:`ensure_jars` writes a tiny ``pom.xml`` into the cache
folder (``$VISTREAM_CACHE`` or ``~/.cache/vistream``, subfolder ``kafka-<version>/``) and lets
``mvn dependency:copy-dependencies`` fetch ``kafka_2.13`` and its runtime dependencies once.
:func:`start` then writes a KRaft ``server.properties`` (one process acting as broker *and*
controller), formats the storage on first use, launches ``java ... kafka.Kafka`` detached and
waits until the broker really answers a metadata request. :func:`stop` and :func:`status`
find the process again through ``<data_dir>/broker.pid``, so they work from another process
(``vistream broker stop``) too.

Version: Kafka 4.3.1 (Scala 2.13). kafka-python 3.x, the client this project uses, supports
brokers up to 4.3, and 4.x is KRaft-only, which is what makes a one-process broker simple.
log4j2 and slf4j 2 are pinned explicitly; without them Maven resolves slf4j 1.7 and the
broker's logging is silently lost.

Record size limits come from :data:`MAX_MESSAGE_BYTES` (raw frames can be large); clients
must raise their own limits to match (producer ``max_request_size``, consumer
``max_partition_fetch_bytes`` / ``fetch_max_bytes``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# one record cap and one min-ISR rule for broker and clients
from vistream.pipeline.bus.kafka import MAX_MESSAGE_BYTES, min_isr_for

KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"

_EXTRA_DEPS = [  # (groupId, artifactId, version) next to kafka itself
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
    ("org.slf4j", "slf4j-api", "2.0.17"),
]
_HINTS = {
    "java": "install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`",
    "mvn": "install Maven, e.g. `apt-get install maven`",
}
_MARKER = ".complete"
#: A cluster node fences a peer that missed heartbeats for 4 s (Kafka's default: 9 s) and moves
#: its partition leaderships then: the bulk of the pause when a broker dies (docs/reliability.md).
CLUSTER_FAILOVER = {"broker.session.timeout.ms": 4000, "broker.heartbeat.interval.ms": 1000}
_CHILDREN: dict[int, subprocess.Popen] = {}  # brokers started by this process, to reap them

log = logging.getLogger("vistream.broker")


class BrokerError(RuntimeError):
    """The broker could not be provisioned, started or reached."""


@dataclass
class BrokerInfo:
    running: bool
    pid: int | None
    port: int
    bootstrap: str
    data_dir: Path
    log_file: Path
    reused: bool = False


# ----------------------------------------------------------------------------- paths, jars

def cache_dir() -> Path:
    """``$VISTREAM_CACHE/kafka-<version>`` (default ``~/.cache/vistream/kafka-<version>``)."""
    root = os.environ.get("VISTREAM_CACHE") or Path.home() / ".cache" / "vistream"
    return Path(root).expanduser() / f"kafka-{KAFKA_VERSION}"


def bootstrap(port: int = 9092) -> str:
    return f"127.0.0.1:{port}"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` is not on PATH; {_HINTS[tool]} to run a local Kafka broker")
    return path


def _pom() -> str:
    deps = [("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION), *_EXTRA_DEPS]
    body = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>vistream</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{body}
  </dependencies>
</project>
"""


def ensure_jars() -> Path:
    """Return the folder holding the Kafka runtime jars, fetching them with Maven if needed."""
    jars = cache_dir() / "jars"
    kafka_jar = jars / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
    if (jars / _MARKER).exists() and kafka_jar.exists():
        return jars
    mvn = _require("mvn")
    if jars.exists():  # a half-finished copy: start over
        shutil.rmtree(jars)
    jars.parent.mkdir(parents=True, exist_ok=True)
    pom = jars.parent / "pom.xml"
    pom.write_text(_pom())
    log.info("fetching Kafka %s jars from Maven Central into %s (once, ~30 s)", KAFKA_VERSION, jars)
    cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={jars}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, cwd=jars.parent, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not kafka_jar.exists():
        tail = _tail_text(proc.stdout + proc.stderr, 30)
        raise BrokerError(f"mvn could not fetch the Kafka jars (exit {proc.returncode}):\n{tail}")
    (jars / _MARKER).write_text(KAFKA_VERSION + "\n")
    return jars


# ----------------------------------------------------------------------------- configuration

def _paths(port: int, data_dir: str | Path | None) -> tuple[Path, Path, Path]:
    d = Path(data_dir) if data_dir is not None else cache_dir() / f"broker-{port}"
    return d.resolve(), d.resolve() / "broker.pid", d.resolve() / "broker.log"


def server_properties(port: int, data_dir: Path, node_id: int = 1,
                      voters: list[tuple[int, int]] | None = None, replicas: int = 1) -> str:
    """The KRaft ``server.properties`` for a combined broker+controller on ``port``/``port+1``.

    ``voters`` (``(node_id, controller_port)`` of every node) makes it one node of a cluster
    with a static controller quorum; ``replicas`` is the replication factor of the internal
    topics and the default for new topics, with ``min.insync.replicas`` from :func:`min_isr_for`.
    """
    ctl = port + 1
    isr = min_isr_for(replicas)
    quorum = ({"controller.quorum.voters": ",".join(f"{n}@127.0.0.1:{c}" for n, c in voters),
               **CLUSTER_FAILOVER}
              if voters else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{ctl}"})
    props = {
        "process.roles": "broker,controller",
        "node.id": node_id,
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctl}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        **quorum,
        "log.dirs": str(data_dir / "data"),
        "num.partitions": 1,
        "default.replication.factor": replicas,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": isr,
        "unclean.leader.election.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
        "socket.request.max.bytes": max(100 * 1024 * 1024, 2 * MAX_MESSAGE_BYTES),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def log4j_properties(log_file: Path) -> str:
    return f"""status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


# ----------------------------------------------------------------------------- process helpers

def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """True when ``pid`` is a live (non-zombie) Kafka JVM."""
    if not pid or pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # our own child, exited: reaped now
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():  # no procfs: trust the signal check
        return True
    try:  # a zombie has an empty cmdline; a recycled pid is not kafka.Kafka
        return b"kafka.Kafka" in cmdline.read_bytes()
    except OSError:
        return False


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _answers(port: int) -> bool:
    """TCP connect and a real metadata round trip through kafka-python."""
    if not _port_open(port):
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap(port), request_timeout_ms=5000,
                                 bootstrap_timeout_ms=5000)
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _tail_text(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def _log_tail(data_dir: Path, n: int = 30) -> str:
    parts = []
    for name in ("broker.log", "broker.out"):
        f = data_dir / name
        if f.exists() and f.stat().st_size:
            text = f.read_text(errors="replace")
            parts.append(f"--- {f} (last lines) ---\n{_tail_text(text, n)}")
    return "\n".join(parts) or "(no broker log written)"


def _java(jars: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([_require("java"), "-cp", str(jars / "*"), *args],
                          capture_output=True, text=True, check=False, **kw)


def new_cluster_id(jars: Path, log4j: Path) -> str:
    """A fresh KRaft cluster id from Kafka's StorageTool."""
    uuid = _java(jars, f"-Dlog4j2.configurationFile={log4j}", "kafka.tools.StorageTool",
                 "random-uuid")
    cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.stdout.strip() else ""
    if uuid.returncode != 0 or not cluster_id:
        raise BrokerError(f"kafka StorageTool random-uuid failed:\n{uuid.stdout}{uuid.stderr}")
    return cluster_id


def _format_storage(jars: Path, data_dir: Path, props: Path, log4j: Path,
                    cluster_id: str | None = None) -> None:
    """Format once: a standalone node gets a fresh id and a one-voter quorum; a cluster node
    gets the cluster's id (its voters are static, in ``props``)."""
    if (data_dir / "data" / "meta.properties").exists():
        return
    log.info("formatting KRaft storage in %s", data_dir / "data")
    l4j = f"-Dlog4j2.configurationFile={log4j}"
    mode = [] if cluster_id else ["--standalone"]
    cluster_id = cluster_id or new_cluster_id(jars, log4j)
    fmt = _java(jars, l4j, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                "-c", str(props), *mode)
    if fmt.returncode != 0:
        raise BrokerError(f"kafka StorageTool format failed:\n{_tail_text(fmt.stdout + fmt.stderr, 30)}")


# ----------------------------------------------------------------------------- public API

def status(port: int = 9092, data_dir: str | Path | None = None) -> BrokerInfo:
    """Is the broker of ``data_dir`` (default ``<cache>/broker-<port>``) running?"""
    d, pid_file, log_file = _paths(port, data_dir)
    pid = _read_pid(pid_file)
    alive = _alive(pid)
    return BrokerInfo(running=alive and _port_open(port), pid=pid if alive else None, port=port,
                      bootstrap=bootstrap(port), data_dir=d, log_file=log_file)


def wait_ready(port: int, pid: int, d: Path, timeout: float,
                proc: subprocess.Popen | None = None) -> None:
    log.info("waiting for the Kafka broker on %s (up to %ds)", bootstrap(port), timeout)
    deadline = time.monotonic() + timeout
    while True:
        died = proc.poll() is not None if proc is not None else not _alive(pid)
        if died:
            raise BrokerError(f"Kafka broker (pid {pid}) exited during startup:\n{_log_tail(d)}")
        if _answers(port):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"Kafka broker (pid {pid}) did not answer on {bootstrap(port)} "
                              f"within {timeout}s:\n{_log_tail(d)}")
        time.sleep(0.5)


def launch(port: int, d: Path, props_text: str, heap: str = "1g",
           cluster_id: str | None = None) -> subprocess.Popen:
    """Write the configuration, format the storage once and start the JVM detached; returns
    without waiting for it to answer (``start`` and the cluster module wait)."""
    for p in (port, port + 1):
        if _port_open(p):
            raise BrokerError(f"port {p} is already in use by another process (not the broker of "
                              f"{d}); stop it or choose another port")
    java = _require("java")
    jars = ensure_jars()
    d.mkdir(parents=True, exist_ok=True)
    log_file = d / "broker.log"
    props, log4j = d / "server.properties", d / "log4j2.properties"
    props.write_text(props_text)
    log4j.write_text(log4j_properties(log_file))
    _format_storage(jars, d, props, log4j, cluster_id)

    cmd = [java, f"-Xmx{heap}", "-Djava.awt.headless=true",
           f"-Dlog4j2.configurationFile={log4j}", "-cp", str(jars / "*"), "kafka.Kafka", str(props)]
    log.info("starting Kafka %s on %s (data in %s)", KAFKA_VERSION, bootstrap(port), d)
    with open(d / "broker.out", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    (d / "broker.pid").write_text(f"{proc.pid}\n")
    return proc


def start(port: int = 9092, data_dir: str | Path | None = None, heap: str = "1g",
          timeout: float = 90) -> BrokerInfo:
    """Start (or reuse) a single-node KRaft broker listening on ``127.0.0.1:port``.

    ``port + 1`` is the controller listener. Raises :class:`BrokerError` when Java/Maven are
    missing, the ports are taken by something else, or the broker does not come up in time.
    """
    d, pid_file, log_file = _paths(port, data_dir)
    pid = _read_pid(pid_file)
    if _alive(pid):  # our broker: already up, or still starting
        if not _answers(port):
            wait_ready(port, pid, d, timeout)
        log.info("reusing the Kafka broker on %s (pid %d)", bootstrap(port), pid)
        return BrokerInfo(True, pid, port, bootstrap(port), d, log_file, reused=True)
    proc = launch(port, d, server_properties(port, d), heap)
    try:
        wait_ready(port, proc.pid, d, timeout, proc)
    except BrokerError:
        stop(port, d, timeout=10)
        raise
    return BrokerInfo(True, proc.pid, port, bootstrap(port), d, log_file)


def stop(port: int = 9092, data_dir: str | Path | None = None, timeout: float = 30) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns False when no broker was running (a stale pid file is removed all the same).
    """
    _, pid_file, _ = _paths(port, data_dir)
    pid = _read_pid(pid_file)
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    log.info("stopping the Kafka broker on %s (pid %d)", bootstrap(port), pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        log.warning("Kafka broker (pid %d) ignored SIGTERM for %ss; killing it", pid, timeout)
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


@contextmanager
def running(port: int = 9092, data_dir: str | Path | None = None, **start_args) -> Iterator[BrokerInfo]:
    """A broker for the length of a ``with`` block, for a command that needs one for itself:
    started if none runs, and then stopped at the end (a 1 GB JVM nobody asked to keep);
    reused, and left running, if one was already up."""
    info = start(port, data_dir, **start_args)
    try:
        yield info
    finally:
        if not info.reused:
            stop(port, data_dir)
