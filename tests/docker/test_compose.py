"""The compose file, the config it mounts and the image agree: every container names a stage of
the config, the query API runs its index stage, the image gets every package folder and the
data files the install must carry. A compose client, where one exists, accepts the file."""

import fnmatch
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from vistream.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SPEC = yaml.safe_load(COMPOSE.read_text())
SERVICES = SPEC["services"]
IN_IMAGE = "/app/docker/pipeline.yaml"


def _config():
    return load_config(DOCKER / "pipeline.yaml")


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


# Keys of the Compose specification that this file may use (a typo would be ignored by nothing
# here, but refused by `docker compose`, which this machine may not have).
TOP_KEYS = {"services", "volumes", "networks", "configs", "secrets", "name"}
SERVICE_KEYS = {"build", "image", "command", "entrypoint", "environment", "volumes", "ports",
                "depends_on", "restart", "healthcheck", "profiles", "networks", "user",
                "working_dir", "deploy", "expose", "labels", "logging", "stop_grace_period"}


def test_only_compose_specification_keys():
    assert {k for k in SPEC if not k.startswith("x-")} <= TOP_KEYS
    for name, s in SERVICES.items():
        assert set(s) <= SERVICE_KEYS, (name, set(s) - SERVICE_KEYS)
        assert "image" in s or "build" in s
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in SERVICES and cond["condition"] in ("service_started", "service_healthy")
            assert cond["condition"] != "service_healthy" or "healthcheck" in SERVICES[dep]
        if "healthcheck" in s:
            assert s["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_stage_containers_are_the_config_stages_and_the_api_runs_the_index():
    cfg = _config()
    stage_cmds = [s["command"] for s in SERVICES.values() if s.get("command", [""])[0] == "stage"]
    (serve,) = [s for s in SERVICES.values() if s.get("command", [""])[0] == "serve"]
    index = _arg(serve["command"], "--stage")
    assert cfg.stage(index).type == "hashing"
    assert sorted(c[1] for c in stage_cmds) == sorted(s.name for s in cfg.stages if s.name != index)
    for cmd in stage_cmds + [serve["command"]]:
        assert _arg(cmd, "--config") == IN_IMAGE
    assert _arg(serve["command"], "--host") == "0.0.0.0"
    port = _arg(serve["command"], "--port")
    assert any(str(p).endswith(f":{port}") for p in serve["ports"])
    assert f"{port}/healthz" in " ".join(serve["healthcheck"]["test"])


def test_every_container_mounts_the_config_and_reaches_the_broker():
    for name, s in SERVICES.items():
        if name == "kafka":
            continue
        assert f"./pipeline.yaml:{IN_IMAGE}:ro" in s["volumes"], name
        assert s["environment"]["KAFKA_BOOTSTRAP"] == "kafka:9092", name
    cfg = _config()
    assert cfg.bus.bootstrap == "kafka:9092"  # the default inside compose, without the env too
    broker_env = SERVICES["kafka"]["environment"]
    assert int(broker_env["KAFKA_MESSAGE_MAX_BYTES"]) >= cfg.bus.max_message_bytes
    assert {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", [])
            if not v.startswith(".")} <= set(SPEC["volumes"])


def test_the_tools_feed_the_topic_the_stages_read():
    cfg = _config()
    sample, ingest = SERVICES["sample"]["command"], SERVICES["ingest"]["command"]
    video = f"{_arg(sample, '--out')}/{_arg(sample, '--name')}.mp4"
    assert ingest[1] == video
    assert any(_arg(ingest, "--topic") in s.inputs for s in cfg.stages)
    assert _arg(ingest, "--bootstrap") == "kafka:9092"


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_image_copies_every_package_folder_and_the_compose_config():
    copied = [src for line in _dockerfile().splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]]
    links = [p.name for p in (ROOT / "vistream").iterdir() if p.is_symlink()]
    assert links and set(links) <= set(copied)
    assert {"vistream", "pyproject.toml", "setup.py", "docker/pipeline.yaml"} <= set(copied)


def test_install_carries_the_data_files_the_runtime_reads():
    """Console page, shipped weights and zoo artifacts must be package data (the image installs
    a wheel, not the checkout)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = [p for pats in data.values() for p in pats]
    needed = _tracked([*(ROOT / "pipeline" / "console_static").glob("*"),
                       *(ROOT / "models" / "deblur" / "weights").glob("*.safetensors"),
                       *(ROOT / "models" / "zoo").glob("*.vsa")])
    assert needed
    for f in needed:
        assert any(fnmatch.fnmatch(f.name, p) for p in patterns), f"{f} is not package data"


def _tracked(paths: list[Path]) -> list[Path]:
    """The files of ``paths`` that git tracks (files made locally are not shipped)."""
    res = subprocess.run(["git", "ls-files", "-z", "--", *map(str, paths)], cwd=ROOT,
                         capture_output=True)
    if res.returncode != 0:  # not a checkout: everything there counts
        return paths
    return [ROOT / n for n in res.stdout.decode().split("\0") if n]


def test_build_context_leaves_out_the_local_state():
    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "out", "build"} <= ignored


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
