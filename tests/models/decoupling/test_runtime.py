import numpy as np
import pytest
import torch

from vistream.models.artifact_format import ArtifactError
from vistream.models.artifacts import load_artifact
from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.decoupling.runtime import (DecoupledRuntime, export_decoupled_artifact,
                                                path_code, path_from_code)


def _gated_net():
    torch.manual_seed(0)
    net = DecoupledResNet(create_model("resnet20", num_classes=10)).eval()
    with torch.no_grad():
        for blk in net.blocks:  # random gates: about half of every layer's filters closed
            for ctrl in (blk.ctrl1, blk.ctrl2):
                ctrl.fc2.bias.copy_(torch.randn_like(ctrl.fc2.bias))
                ctrl.fc1.weight.normal_(0, 0.5)
    return net


def test_runtime_features_and_paths_match_the_masked_net():
    net = _gated_net()
    rt = DecoupledRuntime(net)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = net.pool(net.blocks(net.stem(x))).flatten(1)
        ref_paths = net.paths().numpy().astype(np.uint8)
        feats = rt.forward_features(x)
    assert torch.allclose(feats, ref, atol=1e-4)
    assert np.array_equal(rt.last_paths, ref_paths)
    assert 0.1 < rt.last_paths.mean() < 0.9
    masked = DecoupledRuntime(net, skip=False)
    assert torch.allclose(masked.forward_features(x), ref, atol=1e-5)
    assert np.array_equal(masked.last_paths, ref_paths)


def test_path_code_round_trips():
    bits = (np.random.default_rng(0).random(672) < 0.5).astype(np.uint8)
    code = path_code(bits)
    assert len(code) == 672 // 4
    assert np.array_equal(path_from_code(code, 672), bits)


def test_artifact_round_trip_gives_the_runtime(tmp_path):
    net = _gated_net()
    manifest = export_decoupled_artifact(net, tmp_path / "d.vsa", metrics={"test_acc": 0.5})
    assert manifest["runtime"] == "decoupled" and manifest["model_id"].startswith("resnet20-decoupled-")
    rt = load_artifact(tmp_path / "d.vsa")
    assert isinstance(rt, DecoupledRuntime) and rt.model_id == manifest["model_id"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rt(x), net(x), atol=1e-4)
    with pytest.raises(ArtifactError, match="CPU only"):
        load_artifact(tmp_path / "d.vsa", device="cuda")


def test_corrupted_decoupled_artifact_is_a_clear_error(tmp_path):
    export_decoupled_artifact(_gated_net(), tmp_path / "d.vsa")
    blob = bytearray((tmp_path / "d.vsa").read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "bad.vsa").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "bad.vsa")
