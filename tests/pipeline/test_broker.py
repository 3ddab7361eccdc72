"""Tests for pipeline.broker: config generation and error paths offline, plus one real broker."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from vistream.pipeline import broker
from vistream.pipeline.broker import MAX_MESSAGE_BYTES, BrokerError


def _free_port_pair() -> int:
    """A port p such that p and p+1 are both free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1 > 65535 or port in (19092, 19093) or port + 1 in (19092, 19093):
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair found")


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and "=" in line)


def test_server_properties_listeners_and_limits(tmp_path):
    props = _props(broker.server_properties(29100, tmp_path))
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29100,CONTROLLER://127.0.0.1:29101"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29100"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29101"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr",
                "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    for key in ("message.max.bytes", "replica.fetch.max.bytes", "socket.request.max.bytes"):
        assert int(props[key]) >= MAX_MESSAGE_BYTES, key


def test_log4j_properties_point_at_log_file(tmp_path):
    text = broker.log4j_properties(tmp_path / "broker.log")
    assert f"fileName = {tmp_path / 'broker.log'}" in text
    assert "rootLogger.level = INFO" in text


def test_pom_pins_kafka_and_logging():
    pom = broker._pom()
    assert "<artifactId>kafka_2.13</artifactId><version>4.3.1</version>" in pom
    assert "<artifactId>slf4j-api</artifactId><version>2.0.17</version>" in pom
    assert "log4j-slf4j2-impl" in pom and "log4j-core" in pom
    assert "<packaging>pom</packaging>" in pom


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VISTREAM_CACHE", str(tmp_path))
    assert broker.cache_dir() == tmp_path / "kafka-4.3.1"
    assert broker.bootstrap(1234) == "127.0.0.1:1234"


def test_missing_mvn_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("VISTREAM_CACHE", str(tmp_path))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t, *a, **k: None if t == "mvn" else real_which(t))
    with pytest.raises(BrokerError, match="apt-get install maven"):
        broker.ensure_jars()


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t, *a, **k: None if t == "java" else real_which(t))
    with pytest.raises(BrokerError, match="openjdk-17"):
        broker.start(port=_free_port_pair(), data_dir=tmp_path / "b")


def test_mvn_failure_includes_its_output(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mvn"
    fake.write_text("#!/bin/sh\necho 'ERROR Could not resolve kafka_2.13 (offline?)'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VISTREAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BrokerError, match="Could not resolve kafka_2.13") as err:
        broker.ensure_jars()
    assert "exit 1" in str(err.value)
    assert not (tmp_path / "cache" / "kafka-4.3.1" / "jars" / ".complete").exists()


def test_stop_without_pid_file_returns_false(tmp_path):
    assert broker.stop(port=29100, data_dir=tmp_path) is False
    info = broker.status(port=29100, data_dir=tmp_path)
    assert not info.running and info.pid is None
    assert info.bootstrap == "127.0.0.1:29100"
    assert info.log_file == tmp_path.resolve() / "broker.log"


def test_stale_pid_file_of_dead_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pid_file = tmp_path / "broker.pid"
    pid_file.write_text(f"{proc.pid}\n")
    assert broker.status(port=29100, data_dir=tmp_path).running is False
    assert broker.stop(port=29100, data_dir=tmp_path) is False
    assert not pid_file.exists()


def test_pid_file_of_unrelated_live_process_is_not_killed(tmp_path):
    (tmp_path / "broker.pid").write_text(f"{os.getpid()}\n")  # this pytest process
    assert broker.status(port=29100, data_dir=tmp_path).running is False
    assert broker.stop(port=29100, data_dir=tmp_path) is False  # and we are still alive
    (tmp_path / "broker.pid").write_text("not a pid\n")
    assert broker.stop(port=29100, data_dir=tmp_path) is False


def test_port_held_by_something_else(tmp_path):
    port = _free_port_pair()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(BrokerError, match=f"port {port} is already in use"):
            broker.start(port=port, data_dir=tmp_path)


@pytest.mark.kafka
@pytest.mark.slow
def test_real_broker_roundtrip_17mib(tmp_path):
    if not (shutil.which("java") and shutil.which("mvn")):
        pytest.skip("java and mvn are needed to run a real Kafka broker")
    from kafka import KafkaConsumer, KafkaProducer

    port = _free_port_pair()
    data_dir = tmp_path / "broker"
    info = broker.start(port=port, data_dir=data_dir, heap="512m", timeout=120)
    try:
        assert info.running and not info.reused and info.pid
        assert broker.status(port, data_dir).running
        again = broker.start(port=port, data_dir=data_dir)
        assert again.reused and again.pid == info.pid

        topic = f"big-{uuid.uuid4().hex[:8]}"
        payload = os.urandom(17 * 1024 * 1024)
        producer = KafkaProducer(bootstrap_servers=info.bootstrap,
                                 max_request_size=MAX_MESSAGE_BYTES)
        try:
            producer.send(topic, key=b"k", value=payload).get(timeout=60)
        finally:
            producer.close()
        consumer = KafkaConsumer(topic, bootstrap_servers=info.bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=30000,
                                 max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                                 fetch_max_bytes=MAX_MESSAGE_BYTES)
        try:
            record = next(iter(consumer))
        finally:
            consumer.close()
        assert record.key == b"k"
        assert record.value == payload
    finally:
        stopped = broker.stop(port=port, data_dir=data_dir)
    assert stopped is True
    assert broker.status(port, data_dir).running is False
    assert not (data_dir / "broker.pid").exists()


@pytest.mark.parametrize("reused", [False, True])
def test_running_stops_only_a_broker_it_started(monkeypatch, tmp_path, reused):
    calls: list[tuple] = []

    def fake_start(port, data_dir, **kw):
        calls.append(("start", port))
        return broker.BrokerInfo(True, 1, port, broker.bootstrap(port), tmp_path, tmp_path / "log",
                                 reused=reused)

    monkeypatch.setattr(broker, "start", fake_start)
    monkeypatch.setattr(broker, "stop", lambda port, data_dir=None, **kw: calls.append(("stop", port)))
    with pytest.raises(RuntimeError), broker.running(port=19500) as info:
        assert info.bootstrap.endswith(":19500")
        raise RuntimeError("the command failed")  # the broker is handled all the same
    assert calls == ([("start", 19500)] if reused else [("start", 19500), ("stop", 19500)])
