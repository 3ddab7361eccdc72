"""The features stage on a decoupled artifact (runtime 'decoupled', models/decoupling): the
vectors are the artifact's own, and ``explain: true`` puts each frame's calculation path on
its record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vistream.models.artifacts import export_artifact, load_artifact, preprocess
from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.decoupling.runtime import export_decoupled_artifact, path_from_code
from vistream.pipeline.wire import result_from_bytes, result_to_bytes
from vistream.stages.base import create_stage
from tests.conftest import make_frame


@pytest.fixture()
def decoupled_vsa(tmp_path):
    torch.manual_seed(0)
    net = DecoupledResNet(create_model("resnet20", num_classes=10)).eval()
    with torch.no_grad():
        for blk in net.blocks:  # input-dependent gates, about half closed
            for ctrl in (blk.ctrl1, blk.ctrl2):
                ctrl.fc2.bias.copy_(torch.randn_like(ctrl.fc2.bias))
                ctrl.fc1.weight.normal_(0, 0.5)
    export_decoupled_artifact(net, tmp_path / "d.vsa")
    return tmp_path / "d.vsa"


def test_stage_vectors_equal_the_artifacts_forward_and_carry_the_path(decoupled_vsa):
    frames = [make_frame(i) for i in range(3)]
    st = create_stage("features", {"artifact": str(decoupled_vsa), "batch_size": 2, "explain": True})
    st.setup()
    out = st.process(frames)
    art = load_artifact(decoupled_vsa)
    x = preprocess([f.image for f in frames], art.input_spec, art.normalization)
    ref = art.forward_features(x).numpy()
    paths = art.last_paths
    assert np.allclose(np.stack([o.vector for o in out]), ref, atol=1e-4)
    n = paths.shape[1]
    for o, p in zip(out, paths):
        assert np.array_equal(path_from_code(o.path_code, n), p)
        assert o.path_active == pytest.approx(p.mean(), abs=1e-5)
    assert 0 < out[0].path_active < 1
    back = result_from_bytes(result_to_bytes(out[0]))  # the path rides the wire format
    assert back.path_code == out[0].path_code and back.path_active == out[0].path_active


def test_paths_only_when_asked(decoupled_vsa):
    st = create_stage("features", {"artifact": str(decoupled_vsa)})
    st.setup()
    (rec,) = st.process([make_frame(0)])
    assert rec.path_code is None and rec.path_active is None and rec.vector.shape == (64,)


def test_explain_needs_a_decoupled_artifact(tmp_path):
    export_artifact(create_model("resnet20", num_classes=10), tmp_path / "m.vsa", onnx=False)
    st = create_stage("features", {"artifact": str(tmp_path / "m.vsa"), "explain": True})
    with pytest.raises(RuntimeError, match="decoupled artifact"):
        st.setup()
