from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from vistream.models.artifacts import (
    MAGIC,
    ArtifactError,
    export_artifact,
    load_artifact,
    preprocess,
    read_artifact,
)
from vistream.models.backbones import create_model
from vistream.models.flops import count_flops, count_params


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("resnet20", num_classes=10, widths=[3, 4, 5, 6, 7, 8, 9, 10, 11], base=8)
    with torch.no_grad():  # non-trivial BN statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("a") / "m.vsa"
    man = export_artifact(m, path, method="test", metrics={"val_acc": 0.5}, onnx=False)
    return m.eval(), path, man


def test_round_trip_bit_identical_and_manifest(small):
    m, path, man = small
    back = load_artifact(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), back(x))
        assert torch.equal(m.forward_features(x), back.forward_features(x))
    assert man["config"]["widths"] == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert man["params"] == count_params(back) and man["flops"] == count_flops(back)
    assert all(list(v.shape) == man["param_shapes"][k] for k, v in back.state_dict().items())
    assert back.model_id == man["model_id"] and back.input_spec["size"] == [32, 32]
    img = np.zeros((50, 70, 3), np.uint8)
    assert preprocess([img], back.input_spec, back.normalization).shape == (1, 3, 32, 32)


def _flip(path, out, offset_from_end=None, offset=None):
    blob = bytearray(path.read_bytes())
    i = offset if offset is not None else len(blob) - offset_from_end
    blob[i] ^= 0x01
    out.write_bytes(bytes(blob))
    return out


def test_tampered_or_corrupted_artifacts_are_rejected(small, tmp_path):
    _, path, _ = small
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(_flip(path, tmp_path / "w.vsa", offset_from_end=10))  # a weight byte
    # an edited manifest (e.g. someone changes the method or a metric by hand)
    blob = path.read_bytes()
    (n,) = struct.unpack_from("<Q", blob, 8)
    man = json.loads(blob[16:16 + n])
    man["metrics"]["val_acc"] = 0.99
    mb = json.dumps(man, sort_keys=True, indent=1).encode()
    (tmp_path / "m.vsa").write_bytes(MAGIC + struct.pack("<Q", len(mb)) + mb + blob[16 + n:])
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "m.vsa")
    (tmp_path / "t.vsa").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifact(tmp_path / "t.vsa")
    (tmp_path / "x.vsa").write_bytes(b"PK\x03\x04" + blob)
    with pytest.raises(ArtifactError, match="not a vistream artifact"):
        read_artifact(tmp_path / "x.vsa")


def test_onnx_export_when_available(tmp_path):
    pytest.importorskip("onnx")
    m = create_model("vgg16", num_classes=10, widths=[4] * 13)
    man = export_artifact(m, tmp_path / "v.vsa", onnx=True)
    if man["onnx"]["bytes"] == 0:
        pytest.skip(f"ONNX exporter unavailable: {man['onnx']['reason']}")
    from vistream.models.artifacts import load_onnx

    proto = load_onnx(tmp_path / "v.vsa")
    assert [o.name for o in proto.graph.output] == ["features", "logits"]
    load_artifact(tmp_path / "v.vsa")
