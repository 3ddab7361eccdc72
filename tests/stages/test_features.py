from __future__ import annotations

import numpy as np
import torch

from vistream.pipeline.wire import result_from_bytes, result_to_bytes
from vistream.stages.records import Features, Tracks
from vistream.stages.base import create_stage, stage_types
from tests.conftest import make_frame


def test_features_from_random_backbone_and_artifact(tmp_path):
    import vistream.stages.features  # noqa: F401  (registers the stage when discovery is not automatic)

    assert "features" in stage_types()
    st = create_stage("features", {"random_init": True, "arch": "resnet20", "batch_size": 2})
    st.setup()
    frames = [make_frame(i) for i in range(3)]
    out = st.process(frames)
    assert [o.frame_id for o in out] == [f.frame_id for f in frames]
    assert all(isinstance(o, Features) and o.vector.shape == (64,) for o in out)
    assert out[0].model_id == "resnet20-random-seed0"
    # the capture time travels with the vector, so the index can show it without a join
    assert [o.timestamp_ms for o in out] == [f.timestamp_ms for f in frames]
    assert result_from_bytes(result_to_bytes(out[0])).timestamp_ms == frames[0].timestamp_ms

    from vistream.models.artifacts import export_artifact
    from vistream.models.backbones import create_model

    torch.manual_seed(1)
    m = create_model("resnet20", num_classes=10, widths=[4] * 9, base=8)
    man = export_artifact(m, tmp_path / "m.vsa", onnx=False)
    st2 = create_stage("features", {"artifact": str(tmp_path / "m.vsa"), "input_size": 24})
    st2.setup()
    out2 = st2.process(frames)
    assert out2[0].model_id == man["model_id"] and out2[0].vector.shape == (32,)
    # round trip through the wire format
    assert np.array_equal(result_from_bytes(result_to_bytes(out2[0])).vector, out2[0].vector)


def test_crops_from_tracks():
    st = create_stage("features", {"crops": True, "batch_size": 4, "random_init": True})
    st.setup()
    f = make_frame(0)
    tr = Tracks(frame_id=f.frame_id, stream_id=f.stream_id,
                boxes=np.array([[1, 2, 10, 8], [30, 20, 3, 3]], np.float32),
                track_ids=np.array([7, 9]), scores=np.ones(2, np.float32))
    assert st.process([tr]) == []          # waits for its frame
    out = st.process([f])
    assert [o.label for o in out] == [7, 9] and all(o.frame_id == f.frame_id for o in out)
    assert all(o.timestamp_ms == f.timestamp_ms for o in out)


def test_deployed_model_gives_the_same_vectors_as_the_plain_one(tmp_path):
    from vistream.models.artifacts import export_artifact
    from vistream.models.backbones import create_model
    from vistream.models.pruning.surgery import prune

    torch.manual_seed(2)
    full = create_model("resnet20", num_classes=10, base=8).eval()
    pruned = prune(full, [3, 5, 2, 7, 9, 4, 11, 20, 5])  # odd widths, as pruning leaves them
    export_artifact(pruned, tmp_path / "p.vsa", onnx=False)
    frames = [make_frame(i) for i in range(3)]
    vecs = {}
    for deploy in (True, False):
        st = create_stage("features", {"artifact": str(tmp_path / "p.vsa"), "deploy": deploy})
        st.setup()
        assert st.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last) == deploy
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in st.model.modules())
        assert has_bn != deploy  # deployed: every BN folded into its conv
        vecs[deploy] = np.stack([o.vector for o in st.process(frames)])
    assert np.allclose(vecs[True], vecs[False], atol=1e-4)


def test_default_is_the_shipped_binary_backbone_and_random_init_must_be_asked_for():
    import pytest

    from vistream.models.zoo import DEFAULT_ARTIFACT, load_index, resolve

    entry = load_index()["artifacts"][DEFAULT_ARTIFACT.removeprefix("zoo:")]
    frames = [make_frame(i) for i in range(2)]
    for params in ({}, {"artifact": ""}, {"artifact": DEFAULT_ARTIFACT},
                   {"artifact": str(resolve(DEFAULT_ARTIFACT))}):
        st = create_stage("features", {"batch_size": 2, **params})
        st.setup()
        assert st.model_id == entry["model_id"]
        assert st.model.manifest["runtime"] == "packed"  # the bit-packed 1-bit runtime
        out = st.process(frames)
        assert [o.vector.shape for o in out] == [(entry["num_features"],)] * 2
        assert all(np.isfinite(o.vector).all() for o in out)
    with pytest.raises(ValueError, match="no shipped artifact 'zoo:nope'"):
        create_stage("features", {"artifact": "zoo:nope"})
    with pytest.raises(ValueError, match="not both"):
        create_stage("features", {"artifact": DEFAULT_ARTIFACT, "random_init": True})
    # an arch or seed without random_init would be ignored silently: refused instead
    with pytest.raises(ValueError, match="arch only apply with random_init"):
        create_stage("features", {"arch": "resnet20"})
    with pytest.raises(ValueError, match="arch and seed only apply with random_init"):
        create_stage("features", {"arch": "resnet56", "seed": 3})
