"""The compose file and the config it mounts agree; a compose client (if any) accepts it."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vistream.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"


def test_stage_services_name_stages_of_the_mounted_config():
    spec = yaml.safe_load(COMPOSE.read_text())
    cfg = load_config(ROOT / "configs" / "pipeline-kafka.yaml")
    stage_services = [s for s in spec["services"].values() if s.get("command", [None])[0] == "stage"]
    assert {s["command"][1] for s in stage_services} == {st.name for st in cfg.stages}
    for s in stage_services:
        config_path = s["command"][s["command"].index("--config") + 1]
        assert config_path == "/app/configs/pipeline-kafka.yaml"
        assert s["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092"
    broker_env = spec["services"]["kafka"]["environment"]
    assert int(broker_env["KAFKA_MESSAGE_MAX_BYTES"]) >= cfg.bus.max_message_bytes


def _compose_command():
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_client_accepts_the_file():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no docker compose client on this machine")
    res = subprocess.run(cmd + ["-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
