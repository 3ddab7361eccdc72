import pytest
import torch

from vistream.models.backbones import create_model, list_models


@pytest.mark.parametrize("name, size, params", [
    ("resnet20", 32, 0.27e6), ("resnet56", 32, 0.86e6), ("vgg16", 32, 14.7e6),
    ("resnet18", 64, 11.7e6),
])
def test_models_build_and_match_known_sizes(name, size, params):
    net = create_model(name, num_classes=10).eval()
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - params) / params < 0.05, n
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 10)
        assert net.forward_features(x).shape == (2, net.num_features)
    assert net.config["arch"] == name


def test_widths_make_a_physically_smaller_model():
    full = create_model("resnet20")
    slim = create_model("resnet20", widths=[8] * 3 + [16] * 3 + [32] * 3)
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in full.parameters())
    assert slim.config["widths"][0] == 8
    with pytest.raises(ValueError, match="9 blocks"):
        create_model("resnet20", widths=[8])
    with pytest.raises(KeyError, match="unknown model"):
        create_model("resnet999")
    assert {"resnet20", "resnet56", "vgg16", "resnet18"} <= set(list_models())
