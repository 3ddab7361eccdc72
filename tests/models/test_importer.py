"""`vistream import` (models/importer.py, models/backbones/onnx_net.py): torchvision state dicts
and ONNX files made here from seeded random inits become artifacts computing what the source
computes; bad files are refused with the reason; the result feeds the features stage,
ABCPruner and 1-bit training. torchvision is a development dependency (the reference)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.conftest import make_frame
from vistream.models.artifacts import load_artifact, read_artifact
from vistream.models.importer import (
    ImportRefused,
    binary_layout,
    binary_start,
    binary_teacher,
    import_backbone,
    prunable_base,
    read_state_dict,
)

tv = pytest.importorskip("torchvision")


def _seeded(net: nn.Module, seed: int) -> nn.Module:
    """Random weights *and* BN statistics, so a wrong mapping cannot hide behind identity BNs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def _onnx(net: nn.Module, size: int = 32, dynamic: bool = True) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), torch.zeros(1, 3, size, size), buf, input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None)
    return buf.getvalue()


def _x(n: int = 3, size: int = 32, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18_tv():
    torch.manual_seed(0)
    return _seeded(tv.models.resnet18(num_classes=5), 1)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max())))


@pytest.mark.parametrize("arch,classes", [("resnet18", 5), ("resnet34", 1000)])
def test_torchvision_state_dict_gives_torchvision_logits(arch, classes, tmp_path):
    torch.manual_seed(3)
    ref = _seeded(getattr(tv.models, arch)(num_classes=classes), 4)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    man = import_backbone(tmp_path / "w.pth", tmp_path / "a.vsa", arch=arch, input_size=32)
    assert man["arch"] == arch and man["config"]["num_classes"] == classes
    assert man["input_spec"]["size"] == [32, 32] and man["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert man["source"]["kind"] == "torchvision" and man["method"] == "imported"
    model = load_artifact(tmp_path / "a.vsa")
    with torch.no_grad():
        assert torch.equal(model(_x()), ref(_x()))  # the same operations on the same weights


def test_checkpoints_prefixes_and_safetensors_are_unwrapped(resnet18_tv, tmp_path):
    sd = resnet18_tv.state_dict()
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "c.pth")
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    for name in ("c.pth", "m.pt", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_bad_state_dicts_are_refused_with_the_reason(resnet18_tv, tmp_path):
    sd = dict(resnet18_tv.state_dict())
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    torch.save({"epoch": 1, "lr": torch.tensor(0.1), "notes": "x"}, tmp_path / "ck.pth")
    with pytest.raises(ImportRefused, match="not a torch state dict"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(ImportRefused, match="holds a list"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(ImportRefused, match="keys .*epoch"):
        read_state_dict(tmp_path / "ck.pth")

    def refused(state, arch="resnet18"):
        torch.save(state, tmp_path / "s.pth")
        with pytest.raises(ImportRefused) as e:
            import_backbone(tmp_path / "s.pth", tmp_path / "o.vsa", arch=arch)
        return str(e.value)

    assert "unsupported torchvision architecture 'vgg16'" in refused(sd, "vgg16")
    msg = refused({k: v for k, v in sd.items() if not k.startswith("layer4.1.bn2")})
    assert "missing keys (4): layer4.1.bn2.weight" in msg  # torchvision's names, not ours
    extra = sd | {"layer5.0.conv1.weight": torch.zeros(1)}
    assert "unexpected keys (1): layer5.0.conv1.weight" in refused(extra)
    bad = sd | {"layer1.0.bn1.weight": torch.ones(3)}
    assert "misshaped" in refused(bad) and "layer1.0.bn1.weight (3,)" in refused(bad)
    assert "resnet34: missing keys" in refused(sd, "resnet34")
    assert not (tmp_path / "o.vsa").exists()


def test_onnx_of_a_resnet_becomes_the_project_resnet(resnet18_tv, tmp_path):
    (tmp_path / "r.onnx").write_bytes(_onnx(resnet18_tv))
    x = _x()
    with torch.no_grad():
        ref = resnet18_tv(x)
        feats = torch.flatten(resnet18_tv.avgpool(nn.Sequential(*list(resnet18_tv.children())[:-2])(x)), 1)
    for convert, arch in ((True, "resnet18"), (False, "onnx_graph")):
        man = import_backbone(tmp_path / "r.onnx", tmp_path / "r.vsa", convert=convert)
        assert man["arch"] == arch and man["input_spec"]["size"] == [32, 32]  # the ONNX input's
        assert man["source"]["converted_to"] == (arch if convert else None)
        _, _, onnx_bytes = read_artifact(tmp_path / "r.vsa")
        assert onnx_bytes == (tmp_path / "r.onnx").read_bytes()  # the user's graph, kept as it is
        model = load_artifact(tmp_path / "r.vsa")
        with torch.no_grad():
            assert _close(model(x), ref) and _close(model.forward_features(x), feats)
        assert model.num_features == 512 and man["config"]["num_classes"] == 5
    with pytest.raises(ImportRefused, match="--arch is for torchvision"):
        import_backbone(tmp_path / "r.onnx", tmp_path / "o.vsa", arch="resnet18")


class _Odd(nn.Module):
    """Not a project architecture: depthwise conv, squeeze-excitation, ReLU6, hardswish,
    concat, an asymmetric pad, average pooling and a view(n, -1) (Shape/Gather/Concat chain)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.b = nn.Conv2d(16, 12, 3, 1, 0)
        self.fc = nn.Linear(12 * 3 * 3, 4)

    def forward(self, x):
        x = self.a(x)
        y = nn.functional.hardswish(self.dw(x))
        y = y * self.se(y)
        x = torch.cat([x, y], 1)
        x = self.b(nn.functional.pad(x, (0, 1, 0, 1)))
        x = nn.functional.avg_pool2d(x, 2)
        return self.fc(x.view(x.size(0), -1))


def test_other_onnx_graphs_run_as_graphs(tmp_path):
    torch.manual_seed(0)
    net = _seeded(_Odd(), 2)
    (tmp_path / "odd.onnx").write_bytes(_onnx(net, 16))
    man = import_backbone(tmp_path / "odd.onnx", tmp_path / "odd.vsa", mean=[0.5] * 3, std=[0.2] * 3)
    assert man["arch"] == "onnx_graph" and man["num_features"] == 108 and man["flops"] > 0
    model = load_artifact(tmp_path / "odd.vsa")
    x = _x(4, 16)
    with torch.no_grad():
        assert _close(model(x), net(x))
    # the features stage runs it deployed (BN folded into its conv, channels-last)
    from vistream.models.artifacts import preprocess
    from vistream.stages.base import create_stage

    st = create_stage("features", {"artifact": str(tmp_path / "odd.vsa")})
    st.setup()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in st.model.modules())
    frames = [make_frame(i) for i in range(2)]
    got = np.stack([o.vector for o in st.process(frames)])
    with torch.no_grad():
        want = model.forward_features(preprocess([f.image for f in frames], man["input_spec"],
                                                 man["normalization"])).numpy()
    assert got.shape == (2, 108) and np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    # another tensor as feature vector, by name; a name the graph lacks is refused
    conv_out = next(n["out"][0] for n in man["config"]["graph"]["nodes"] if n["op"] == "Conv")
    other = import_backbone(tmp_path / "odd.onnx", tmp_path / "f.vsa", features_output=conv_out,
                            embed_onnx=False)
    assert other["num_features"] == 8 * 8 * 8 and other["onnx"]["bytes"] == 0
    with pytest.raises(ImportRefused, match="no tensor of the graph"):
        import_backbone(tmp_path / "odd.onnx", tmp_path / "f.vsa", features_output="nope")
    # a graph exported with a fixed batch of one still takes batches
    (tmp_path / "one.onnx").write_bytes(_onnx(net, 16, dynamic=False))
    import_backbone(tmp_path / "one.onnx", tmp_path / "one.vsa")
    with torch.no_grad():
        assert _close(load_artifact(tmp_path / "one.vsa")(x), net(x))
    # its classifier fixes the input size: another one is refused before anything is written
    with pytest.raises(ImportRefused, match="does not run on 32x32 inputs"):
        import_backbone(tmp_path / "odd.onnx", tmp_path / "big.vsa", input_size=32)
    assert not (tmp_path / "big.vsa").exists()
    # not prunable, and 1-bit training does not start from it: both say so
    with pytest.raises(ImportRefused, match="cannot be pruned"):
        prunable_base(model, 10)
    with pytest.raises(ImportRefused, match="no 1-bit twin"):
        binary_layout(tmp_path / "odd.vsa")


def test_unsupported_operators_and_broken_files_are_refused(tmp_path):
    class Gelu(nn.Module):
        def forward(self, x):
            return torch.erf(x).mean(dim=(2, 3))

    (tmp_path / "g.onnx").write_bytes(_onnx(Gelu(), 8))
    with pytest.raises(ImportRefused, match="unsupported ONNX operators: Erf"):
        import_backbone(tmp_path / "g.onnx", tmp_path / "g.vsa")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ImportRefused, match="not a readable ONNX model"):
        import_backbone(tmp_path / "broken.onnx", tmp_path / "b.vsa")
    with pytest.raises(ImportRefused, match="does not exist"):
        import_backbone(tmp_path / "none.onnx", tmp_path / "b.vsa")
    with pytest.raises(ImportRefused, match="three values"):
        import_backbone(tmp_path / "g.onnx", tmp_path / "g.vsa", mean=[0.5, 0.5])


def test_imported_artifact_runs_in_the_features_stage(resnet18_tv, tmp_path):
    from vistream.models.artifacts import preprocess
    from vistream.stages.base import create_stage

    torch.save(resnet18_tv.state_dict(), tmp_path / "w.pth")
    man = import_backbone(tmp_path / "w.pth", tmp_path / "a.vsa", arch="resnet18", input_size=32)
    frames = [make_frame(i) for i in range(3)]
    st = create_stage("features", {"artifact": str(tmp_path / "a.vsa"), "batch_size": 2})
    st.setup()
    out = st.process(frames)
    assert [o.model_id for o in out] == [man["model_id"]] * 3 and out[0].vector.shape == (512,)
    x = preprocess([f.image for f in frames], man["input_spec"], man["normalization"])
    with torch.no_grad():
        ref = torch.flatten(resnet18_tv.avgpool(nn.Sequential(*list(resnet18_tv.children())[:-2])(x)), 1)
    got = np.stack([o.vector for o in out])
    assert np.allclose(got, ref.numpy(), rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def _tiny_bundle(size: int = 16):
    from vistream.models.data import DataBundle, Split

    rng = np.random.default_rng(0)
    s = Split(rng.random((24, 3, size, size)).astype(np.float32), np.arange(24) % 10)
    return DataBundle("tiny", s, s, s, 10)


def test_compress_abc_starts_from_an_imported_artifact(resnet18_tv, tmp_path):
    from vistream.models.pruning import compress_abc, load_base
    from vistream.models.pruning.abc import ABCConfig

    torch.save(resnet18_tv.state_dict(), tmp_path / "w.pth")
    import_backbone(tmp_path / "w.pth", tmp_path / "a.vsa", arch="resnet18", input_size=16)
    said = []
    base = prunable_base(load_base(tmp_path / "a.vsa"), 10, echo=said.append)
    assert base.fc.out_features == 10 and "new seeded classifier" in said[0]  # 5 -> 10 classes
    assert torch.equal(base.stem[0].weight, resnet18_tv.conv1.weight)
    cfg = ABCConfig(food_number=2, max_cycle=1, limit=1, fitness_subset=8, batch_size=8, bn_batches=1)
    res = compress_abc(base, _tiny_bundle(), 0.6, cfg, 0, 0, 0.01, tmp_path / "abc",
                       progress=False, echo=lambda _: None)
    assert res["flops_ratio"] <= 0.6 and load_artifact(res["artifact"]).config["arch"] == "resnet18"


def test_a_one_bit_network_starts_from_an_imported_resnet18(resnet18_tv, tmp_path):
    from vistream.models.binary.train import BinaryTrainConfig, create_method, train_binary

    torch.save(resnet18_tv.state_dict(), tmp_path / "w.pth")
    import_backbone(tmp_path / "w.pth", tmp_path / "a.vsa", arch="resnet18", input_size=16)
    assert binary_layout(tmp_path / "a.vsa") == {"arch": "resnet18", "depth": 18,
                                                 "layout": "imagenet", "base": 64}
    method = create_method("xnor")
    student = method.build(10, 3, 64, 18, "imagenet")
    teacher = binary_start(tmp_path / "a.vsa", student)
    assert teacher.fc is student.fc  # 5 classes there, 10 here: the student keeps its head
    assert torch.equal(teacher.blocks[3].conv2.weight, resnet18_tv.layer2[1].conv2.weight)
    cfg = BinaryTrainConfig(epochs=1, base=64, depth=18, layout="imagenet", batch_size=8,
                            init=str(tmp_path / "a.vsa"), train_subset=8, threads=1)
    model, res = train_binary(method, _tiny_bundle(32), cfg, progress=False)  # digits' size
    assert res.epochs_run == 1 and model.config["layout"] == "imagenet"
    with pytest.raises(ImportRefused, match="depth 20"):
        binary_start(tmp_path / "a.vsa", method.build(10, 3, 64, 20))
    # RBCN distils from the imported model's stage outputs (its head is never used)
    teacher = binary_teacher(tmp_path / "a.vsa", 18, "imagenet", 64)
    rbcn = create_method("rbcn", teacher=teacher)
    _, res = train_binary(rbcn, _tiny_bundle(32), cfg, progress=False)
    assert rbcn.teacher is teacher and res.epochs_run == 1
    with pytest.raises(ImportRefused, match="base 64"):
        binary_teacher(tmp_path / "a.vsa", 18, "imagenet", 32)


def test_nhwc_graphs_take_nchw_batches_and_grey_models_are_refused(tmp_path):
    class Nhwc(nn.Module):  # a Keras-style graph: NHWC input, transposed inside
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 6, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc(self.conv(x.permute(0, 3, 1, 2)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Nhwc().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 12, 12, 3), buf, input_names=["input"], dynamo=False,
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}})
    (tmp_path / "nhwc.onnx").write_bytes(buf.getvalue())
    man = import_backbone(tmp_path / "nhwc.onnx", tmp_path / "nhwc.vsa")
    assert man["input_spec"]["size"] == [12, 12] and man["config"]["graph"]["nhwc"]
    x = _x(2, 12)
    with torch.no_grad():
        assert _close(load_artifact(tmp_path / "nhwc.vsa")(x), net(x.permute(0, 2, 3, 1)))
    grey = tv.models.resnet18(num_classes=2)
    grey.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(grey.state_dict(), tmp_path / "grey.pth")
    with pytest.raises(ImportRefused, match="takes 1 input channels"):
        import_backbone(tmp_path / "grey.pth", tmp_path / "grey.vsa", arch="resnet18")


def test_the_onnx_of_a_vistream_artifact_comes_back_as_the_same_model(tmp_path):
    from vistream.models.artifacts import export_artifact
    from vistream.models.backbones import create_model

    from vistream.models.pruning.surgery import prune

    torch.manual_seed(0)
    full = _seeded(create_model("resnet20", num_classes=10, base=8), 3)
    net = prune(full, [3, 5, 2, 7, 9, 4, 11, 20, 5]).eval()  # the widths are read off the graph
    export_artifact(net, tmp_path / "r20.vsa")  # with its ONNX graph (outputs: features, logits)
    (tmp_path / "r20.onnx").write_bytes(read_artifact(tmp_path / "r20.vsa")[2])
    man = import_backbone(tmp_path / "r20.onnx", tmp_path / "back.vsa", mean=[0.5] * 3, std=[0.25] * 3)
    assert man["arch"] == "resnet20" and man["config"]["widths"] == net.config["widths"]
    back, x = load_artifact(tmp_path / "back.vsa"), _x(2)
    with torch.no_grad():
        assert _close(back(x), net(x)) and _close(back.forward_features(x), net.forward_features(x))
