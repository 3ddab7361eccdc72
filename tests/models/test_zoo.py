"""The shipped backbones (models/zoo): files match their catalogue and manifests, stay small,
load and embed; ``zoo:NAME`` resolves; a smoke build runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vistream.models.artifact_format import read_artifact
from vistream.models.zoo import (
    DEFAULT_ARTIFACT,
    MAX_TOTAL_BYTES,
    ZOO_DIR,
    ZooError,
    load_index,
    resolve,
    sha256_file,
    verify,
)

SHIPPED = ("abc-resnet20-composite", "binary-resnet20-composite", "binary-resnet20-crops")


def test_shipped_files_match_their_index_and_manifests():
    entries = load_index()["artifacts"]
    assert set(entries) == set(SHIPPED)
    assert verify() == []
    total = 0
    for name, e in entries.items():
        path = ZOO_DIR / e["file"]
        total += path.stat().st_size
        assert path.stat().st_size == e["bytes"] and sha256_file(path) == e["file_sha256"]
        man, weights, _ = read_artifact(path)  # verifies the manifest's own sha256
        assert man["sha256"] == e["sha256"] and man["model_id"] == e["model_id"]
        for k in ("flops", "params", "num_features", "method", "arch"):
            assert man[k] == e[k], (name, k)
        for k in ("val_acc", "test_acc"):
            assert man["metrics"][k] == e[k] and 0.0 <= e[k] <= 1.0
        assert man["zoo"]["dataset"]["fingerprint"] == e["dataset"]["fingerprint"]
        assert man["zoo"]["recipe"]["seed"] == e["recipe"]["seed"]
    assert total < MAX_TOTAL_BYTES
    assert entries["binary-resnet20-composite"]["runtime"] == "packed"
    assert entries["binary-resnet20-crops"]["runtime"] == "packed"
    assert entries["binary-resnet20-crops"]["dataset"]["name"] == "digit-crops"
    assert entries["abc-resnet20-composite"]["method"] == "abc"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_artifacts_load_and_give_features_of_the_stated_dim(name):
    from vistream.models.artifacts import load_artifact

    entry = load_index()["artifacts"][name]
    model = load_artifact(resolve(f"zoo:{name}"))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model(x)
    assert tuple(f.shape) == (3, entry["num_features"]) and torch.isfinite(f).all()
    assert tuple(logits.shape) == (3, 10)


def test_resolve_names_and_paths(tmp_path):
    assert resolve(DEFAULT_ARTIFACT) == ZOO_DIR / "binary-resnet20-composite.vsa"
    assert resolve("some/file.vsa").as_posix() == "some/file.vsa"
    with pytest.raises(ZooError, match="shipped: zoo:abc-resnet20-composite"):
        resolve("zoo:nope")
    with pytest.raises(ZooError, match="none"):
        resolve("zoo:x", folder=tmp_path)


def test_verify_reports_a_modified_file(tmp_path):
    index = load_index()
    name = "binary-resnet20-composite"
    src = ZOO_DIR / index["artifacts"][name]["file"]
    blob = bytearray(src.read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte, same size
    (tmp_path / src.name).write_bytes(bytes(blob))
    (tmp_path / "index.json").write_text(json.dumps({"artifacts": {name: index["artifacts"][name]}}))
    assert any("sha256" in p for p in verify(tmp_path))


def test_list_command_prints_the_catalogue():
    from typer.testing import CliRunner

    from vistream.cli.main import app

    r = CliRunner().invoke(app, ["artifacts", "list"])
    assert r.exit_code == 0, r.output
    assert "zoo:binary-resnet20-composite" in r.output and "every file matches" in r.output


@pytest.mark.slow
def test_quick_build_runs_end_to_end(tmp_path):
    """--quick: 1 epoch per step on 256 images, a tiny search; both recipes, into a folder."""
    from typer.testing import CliRunner

    from vistream.cli.main import app

    out = tmp_path / "zoo"
    r = CliRunner().invoke(app, ["artifacts", "build", "--quick", "--out", str(out), "--work",
                                 str(tmp_path / "work"), "--threads", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    index = load_index(out)
    assert set(index["artifacts"]) == set(SHIPPED) and verify(out) == []
    for e in index["artifacts"].values():
        assert e["recipe"]["epochs"] == 1
        assert e["dataset"]["name"] == ("digit-crops" if e["recipe"]["dataset"] == "crops"
                                        else "digits-composite")
    r = CliRunner().invoke(app, ["artifacts", "list", "--dir", str(out)])
    assert r.exit_code == 0 and "abc-resnet20-composite" in r.output
    r = CliRunner().invoke(app, ["artifacts", "build", "--quick"])
    assert r.exit_code != 0 and "--out" in r.output
    assert np.isfinite(index["artifacts"]["abc-resnet20-composite"]["val_acc"])
