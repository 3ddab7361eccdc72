"""A trained BNAS net as an artifact: same outputs on the packed runtime + fallback, the
fallback named in the manifest and the log, and the features stage runs it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vistream.models.artifacts import load_artifact
from vistream.models.binary.packed import PackedBinaryConv2d
from vistream.models.nas.export import FALLBACK, FallbackBinaryConv2d, export_bnas_artifact
from vistream.models.nas.genotype import Genotype
from vistream.models.nas.network import BnasNetwork

CELL = [["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_3x3", 0], ["max_pool_3x3", 2],
        ["sep_conv_5x5", 1], ["avg_pool_3x3", 3], ["dil_conv_5x5", 4], ["skip_connect", 0]]
GENO = Genotype.from_dict({"normal": CELL, "normal_concat": [2, 3, 4, 5], "reduce": CELL,
                           "reduce_concat": [2, 3, 4, 5]})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    net = BnasNetwork(GENO, C=4, layers=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):  # a couple of steps: weights move off their init, BN statistics are set
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("bnas") / "bnas.vsa"
    spec = {"size": [16, 16], "channels": 3, "color": "RGB", "layout": "NCHW", "dtype": "float32",
            "range": [0.0, 1.0]}
    from vistream.models.artifact_format import input_specs

    _, norm = input_specs({}, None)
    manifest = export_bnas_artifact(net, path, metrics={"test_acc": 0.1})
    return net, path, manifest, spec, norm


def test_artifact_outputs_match_the_trained_net(trained, caplog):
    net, path, manifest, _, _ = trained
    with caplog.at_level(logging.INFO, logger="vistream.models.nas.export"):
        rt = load_artifact(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rt(x), net(x))
        assert torch.equal(rt.forward_features(x), net.forward_features(x))
    mods = list(rt.modules())
    assert any(isinstance(m, PackedBinaryConv2d) for m in mods)
    assert any(isinstance(m, FallbackBinaryConv2d) for m in mods)
    assert FALLBACK in caplog.text and "packed" in caplog.text
    assert rt.num_features == net.num_features and rt.model_id == manifest["model_id"]


def test_manifest_names_every_fallback_conv(trained):
    _, _, manifest, _, _ = trained
    fb = manifest["binary"]["fallback"]
    assert fb and all(f["runtime"] == FALLBACK and ("groups" in f["reason"] or "dilation" in f["reason"])
                      for f in fb)
    assert manifest["binary"]["packed_convs"] + len(fb) == len(manifest["binary"]["convs"])
    assert manifest["runtime"] == "packed" and manifest["method"] == "bnas"
    assert manifest["binary_ops"] > 0 and manifest["config"]["genotype"]["normal"][0] == ["sep_conv_3x3", 0]


def test_features_stage_runs_the_searched_artifact(trained):
    import vistream.stages.features  # noqa: F401  (registers the stage)
    from tests.conftest import make_frame
    from vistream.stages.base import create_stage

    net, path, manifest, _, _ = trained
    st = create_stage("features", {"artifact": str(path), "batch_size": 2})
    st.setup()
    out = st.process([make_frame(i) for i in range(3)])
    assert len(out) == 3 and out[0].model_id == manifest["model_id"]
    assert out[0].vector.shape == (net.num_features,) and np.isfinite(out[0].vector).all()


def test_a_tampered_bnas_artifact_is_refused(trained, tmp_path):
    from vistream.models.artifact_format import ArtifactError

    _, path, _, _, _ = trained
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    bad = tmp_path / "bad.vsa"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(bad)


def test_the_artifact_hub_names_the_families_runtimes_it_loads_lazily():
    from vistream.models import artifacts
    from vistream.models.decoupling.runtime import RUNTIME
    from vistream.models.nas.export import ARCH, load_bnas

    assert artifacts.DECOUPLED_RUNTIME == RUNTIME
    assert artifacts._family_loader(artifacts._FAMILY_LOADERS[ARCH]) is load_bnas
