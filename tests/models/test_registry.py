"""The one registry mechanism (models/registry.py), and every registry built on it walked
entry by entry, timm-style: each backbone builds and runs, each hash model fits and encodes,
each 1-bit method builds its network, each stage type validates its default parameters."""

import numpy as np
import pytest
import torch

from vistream.models.backbones import MODELS, create_model, list_models
from vistream.models.binary.train import create_method, list_methods
from vistream.models.hashing.base import HashModel
from vistream.models.hashing.registry import hash_model_names, make_hash_model
from vistream.models.registry import Registry, UnknownNameError
from vistream.stages.base import get_stage_class, stage_types

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the mechanism
def test_register_by_own_name_explicit_name_and_call():
    reg = Registry("widget")

    @reg.register
    def small(size=1):
        return ("small", size)

    @reg.register("big")
    class Big:
        def __init__(self, size=10):
            self.size = size

    def anon():
        return "anon"

    assert reg.register(anon, name="renamed") is anon
    assert reg.register(name="kw")(small) is small
    assert reg.list() == ["big", "kw", "renamed", "small"]
    assert reg.get("small") is small and reg.get("big") is Big
    assert reg.create("small", size=3) == ("small", 3)
    assert reg.create("big", size=4).size == 4
    assert "big" in reg and "nope" not in reg and len(reg) == 4
    assert list(reg) == reg.list()


def test_list_filters_with_fnmatch_patterns_sorted():
    reg = Registry("model")
    for name in ("resnet56", "resnet20", "vgg16", "binary_resnet20"):
        reg.register(lambda: None, name=name)
    assert reg.list("resnet*") == ["resnet20", "resnet56"]
    assert reg.list("*resnet20") == ["binary_resnet20", "resnet20"]
    assert reg.list("?gg*") == ["vgg16"]
    assert reg.list("none*") == []


def test_a_name_names_one_thing():
    reg = Registry("stage type")

    class A:
        pass

    class B:
        pass

    reg.register(A, name="x")
    reg.register(A, name="x")  # the same entry again: a no-op
    with pytest.raises(ValueError, match="stage type 'x' is registered twice"):
        reg.register(B, name="x")
    assert reg.get("x") is A
    with pytest.raises(ValueError, match="non-empty name"):
        reg.register(B, name="")


def test_unknown_name_is_a_key_error_and_a_value_error_listing_the_known():
    reg = Registry("hash model")
    reg.register(lambda: None, name="lsh")
    reg.register(lambda: None, name="sdoh")
    with pytest.raises(KeyError) as exc:
        reg.get("itq")
    assert str(exc.value) == "unknown hash model 'itq'; registered: lsh, sdoh"
    with pytest.raises(ValueError, match="unknown hash model 'itq'"):
        reg.create("itq")
    assert isinstance(exc.value, UnknownNameError)
    with pytest.raises(KeyError, match=r"registered: \(none\)"):
        Registry("thing").get("x")


def test_every_registry_is_the_one_mechanism():
    from vistream.models.binary.methods import METHODS
    from vistream.stages.base import STAGES

    for reg in (MODELS, HashModel.registry, METHODS, STAGES):
        assert isinstance(reg, Registry)


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", list_models())
def test_every_backbone_builds_and_runs(name):
    net = create_model(name, num_classes=5).eval()
    assert net.config["arch"] == name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 5)
        assert net.forward_features(x).shape == (2, net.num_features)


def test_backbone_names_cover_the_zoo():
    assert {"resnet18", "resnet20", "resnet56", "vgg16", "binary_resnet18", "binary_resnet20",
            "binary_resnet56"} <= set(list_models())
    assert list_models("vgg*") == ["vgg16"]


# --------------------------------------------------------------------------- hash models
@pytest.mark.parametrize("name", hash_model_names())
def test_every_hash_model_fits_and_encodes(name):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    X = (rng.normal(size=(4, 16))[y] + 0.3 * rng.normal(size=(120, 16))).astype(np.float32)
    params = {"n_classes": 4} if name == "hcoh" else {}
    model = make_hash_model(name, n_bits=16, seed=0, **params)
    assert type(model) is HashModel.registry.get(name) and model.name == name
    model.partial_fit(X, y)
    codes = model.encode(X[:5])
    assert codes.shape == (5, 2) and codes.dtype == np.uint8


def test_hash_model_names_cover_the_methods():
    assert {"sdoh", "lsh", "itq", "okh", "adapthash", "hcoh"} <= set(hash_model_names())


# --------------------------------------------------------------------------- 1-bit methods
@pytest.mark.parametrize("name", list_methods())
def test_every_binary_method_builds_its_network(name):
    method = create_method(name)
    assert method.name == name
    net = method.build(3, 3, base=4).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_binary_method_names():
    assert list_methods() == ["bonn", "cbcn", "gbcn", "rbcn", "xnor"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        create_method("nope")


# --------------------------------------------------------------------------- stage types
@pytest.mark.parametrize("type_name", sorted(stage_types()))
def test_every_stage_type_validates_its_default_params(type_name):
    cls = get_stage_class(type_name)
    assert cls.name == type_name
    params = cls.Params.model_validate({})
    assert isinstance(params, cls.Params)


def test_unknown_stage_type_lists_the_known():
    with pytest.raises(KeyError, match="unknown stage type 'nope'; registered: .*relay"):
        get_stage_class("nope")
