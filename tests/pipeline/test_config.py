import textwrap

import pytest

from vistream.pipeline.config import ConfigError, load_config


def write(tmp_path, text: str):
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


KAFKA_OK = """
name: t
bus: {backend: kafka, bootstrap: "${TEST_BOOT:-h:1}"}
stages:
  - {name: a, type: thumbnail, inputs: [frames], outputs: {frame_summary: sums}}
  - {name: b, type: summary, inputs: [sums], replicas: 2}
"""


def test_valid_config_with_env_defaults(tmp_path, monkeypatch):
    cfg = load_config(write(tmp_path, KAFKA_OK))
    assert cfg.bus.bootstrap == "h:1"
    assert cfg.all_topics() == {"frames": 4, "sums": 4}
    assert cfg.stage("b").group_id == "vistream-b"
    monkeypatch.setenv("TEST_BOOT", "kafka:9092")
    assert load_config(write(tmp_path, KAFKA_OK)).bus.bootstrap == "kafka:9092"


@pytest.mark.parametrize("text, message", [
    ("stages: [{name: a, type: nope, inputs: [x]}]\nbus: {backend: kafka}",
     "stages[0].type: unknown stage type 'nope'"),
    ("stages: [{name: a, type: thumbnail, inputs: [x], outputs: {frame_summary: y}, "
     "batch_size: 0}]\nbus: {backend: kafka}", "stages[0].batch_size"),
    ("stages: [{name: a, type: thumbnail, inputs: [x], outputs: {frame_summary: y}, "
     "params: {widht: 3}}]\nbus: {backend: kafka}", "stages[0].params.widht: Extra inputs"),
    ("stages: [{name: a, type: thumbnail, inputs: [x]}]\nbus: {backend: kafka}",
     "emits ['frame_summary']"),
    ("stages: [{name: a, type: summary, inputs: [x]}]", "needs at least one entry under `sources`"),
    ("bus: {backend: rabbit}", "bus.backend"),
    ("stages: [{name: a, type: summary, inputs: [x]}, {name: a, type: summary, inputs: [y]}]\n"
     "bus: {backend: kafka}", "used twice"),
    ("sources: [{source: x, quality: 101}]", "sources[0].quality"),
    ("bus: {backend: memory}\nbogus: 1", "bogus: Extra inputs"),
])
def test_invalid_configs_name_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "stages: [unclosed"))
    with pytest.raises(ConfigError, match="UNSET_VAR_X is not set"):
        load_config(write(tmp_path, "name: ${UNSET_VAR_X}"))


def test_shipped_configs_are_valid(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for path in root.glob("*.yaml"):
        load_config(path)
