"""A three-node KRaft cluster (pipeline/cluster.py, ``vistream outage --nodes 3 --kill-one``):
configuration without Kafka; with Kafka, one broker SIGKILLed mid-stream loses nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vistream.cli.main import app
from vistream.pipeline import broker, cluster
from vistream.pipeline.bus.kafka import KafkaBus, min_isr_for
from vistream.pipeline.config import BusSettings
from tests.conftest import kafka_bootstrap


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_nodes_get_distinct_ports_and_data_dirs(tmp_path):
    ports = cluster.node_ports(3, 30000)
    assert ports == [(1, 30000, 30001), (2, 30002, 30003), (3, 30004, 30005)]
    assert cluster.cluster_bootstrap(3, 30000) == "127.0.0.1:30000,127.0.0.1:30002,127.0.0.1:30004"
    info = cluster.status(3, 30000, tmp_path)
    assert len({n.data_dir for n in info.nodes}) == 3 and not info.running
    with pytest.raises(broker.BrokerError):
        cluster.node_ports(0, 30000)


def test_cluster_node_properties_share_one_quorum_and_replicate(tmp_path):
    voters = [(i, c) for i, _, c in cluster.node_ports(3, 30000)]
    props = [_props(broker.server_properties(p, tmp_path / f"n{i}", node_id=i, voters=voters,
                                             replicas=3))
             for i, p, _ in cluster.node_ports(3, 30000)]
    assert {p["controller.quorum.voters"] for p in props} == {
        "1@127.0.0.1:30001,2@127.0.0.1:30003,3@127.0.0.1:30005"}
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert len({p["log.dirs"] for p in props}) == 3
    for p in props:
        assert "controller.quorum.bootstrap.servers" not in p
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["unclean.leader.election.enable"] == "false"


def test_a_single_node_keeps_its_standalone_settings(tmp_path):
    p = _props(broker.server_properties(9092, tmp_path))
    assert p["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert p["offsets.topic.replication.factor"] == "1" and p["min.insync.replicas"] == "1"


def test_replication_follows_the_cluster_size_unless_set():
    assert [min_isr_for(r) for r in (1, 2, 3, 5)] == [1, 1, 2, 2]

    class Admin:
        def __init__(self, n):
            self.n = n

        def describe_cluster(self):
            return {"brokers": [{"broker_id": i} for i in range(self.n)]}

    bus = KafkaBus("127.0.0.1:1")
    assert bus.replication(Admin(1)) == (1, 1)
    assert bus.replication(Admin(3)) == (3, 2)
    assert bus.replication(Admin(5)) == (3, 2)
    assert KafkaBus("127.0.0.1:1", replication_factor=2).replication(Admin(3)) == (2, 1)
    assert KafkaBus("127.0.0.1:1", replication_factor=3,
                    min_insync_replicas=3).replication(Admin(3)) == (3, 3)


def test_bus_settings_validate_durability():
    s = BusSettings(backend="kafka")
    assert s.kafka_options()["acks"] == "all" and s.kafka_options()["idempotence"] is True
    assert BusSettings(acks=1, idempotence=False).kafka_options()["acks"] == 1
    with pytest.raises(ValueError, match="idempotence needs bus.acks: all"):
        BusSettings(acks="1")
    with pytest.raises(ValueError, match="cannot exceed"):
        BusSettings(replication_factor=1, min_insync_replicas=2)
    with pytest.raises(ValueError):
        BusSettings(acks="2")


def test_kill_one_needs_a_cluster():
    result = CliRunner().invoke(app, ["outage", "--kill-one"])
    assert result.exit_code != 0 and "--nodes 3" in result.output


@pytest.mark.kafka
def test_one_of_three_brokers_sigkilled_mid_stream_loses_nothing(tmp_path):
    """Its own 3-node cluster (not the shared broker): a thumbnail stage and an idempotent
    sink (separate processes) while the node leading the most partitions is SIGKILLed
    mid-stream and stays dead (about 100 s)."""
    kafka_bootstrap()  # the broker jars and Java are there when the shared broker is
    from vistream.pipeline.chaos import free_port
    from vistream.pipeline.outage import outage_run

    report = outage_run([], frames=90, port=free_port(count=6), work_dir=tmp_path / "run",
                        nodes=3, kill_one=True, feed_seconds=20)
    assert report["lost"] == 0
    assert report["sink_missing"] == 0 and report["sink_duplicates"] == 0
    assert report["sink_entries"] == 90
    assert report["exits"] == []
    assert report["log_lines"]["tracebacks"] == 0
    kill = report["kill"]
    assert kill["pid"] and kill["led"], kill  # it led partitions: leadership had to move
    assert set(kill["pause_s"]) == {"thumbs#0", "sink#0"}
    assert kill["pause_max_s"] is not None and kill["pause_max_s"] > 0


def test_broker_status_of_a_cluster_that_is_not_running(tmp_path):
    result = CliRunner().invoke(app, ["broker", "status", "--nodes", "3", "--port", "30100",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.count("not running") == 3 and "node-3" in result.output
