import torch

from vistream.models.backbones import create_model
from vistream.models.decoupling.decouple import DecoupledResNet
from vistream.models.decoupling.sparse import FlopsModel, SparseResNet
from vistream.models.flops import count_flops


def _net_with_closed_gates():
    torch.manual_seed(0)
    backbone = create_model("resnet20", num_classes=10)
    net = DecoupledResNet(backbone).eval()
    with torch.no_grad():
        for blk in net.blocks:  # random gates: about half of every layer's filters closed
            for ctrl in (blk.ctrl1, blk.ctrl2):
                ctrl.fc2.bias.copy_(torch.randn_like(ctrl.fc2.bias))
                ctrl.fc1.weight.normal_(0, 0.5)
        for m in net.modules():  # non-trivial BN statistics, so that folding is tested
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
    return backbone, net


def test_sparse_runtime_matches_the_masked_net():
    _, net = _net_with_closed_gates()
    sparse = SparseResNet(net)
    for _ in range(3):
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            ref = net(x)
        share = float(net.paths().mean())
        assert 0.1 < share < 0.9
        assert torch.allclose(sparse(x), ref, atol=1e-4)


def test_flops_all_open_equal_the_dense_backbone_plus_controllers():
    backbone, net = _net_with_closed_gates()
    fm = FlopsModel(net)
    assert fm.dense == count_flops(backbone)
    ones = torch.ones(2, sum(net.layer_widths()))
    assert torch.allclose(fm.per_input(ones, net.layer_widths()),
                          torch.full((2,), float(fm.dense + fm.controllers), dtype=torch.float64))


def test_flops_shrink_with_closed_filters():
    _, net = _net_with_closed_gates()
    fm = FlopsModel(net)
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    f = fm.per_input(net.paths(), net.layer_widths())
    assert bool((f < fm.dense).all())
    zeros = torch.zeros(1, sum(net.layer_widths()))
    # everything gated off: only the stem, shortcuts, classifier and controllers remain
    assert float(fm.per_input(zeros, net.layer_widths())[0]) == fm.dense - fm.gated_dense + fm.controllers


def test_sparse_runtime_handles_layers_with_every_filter_closed():
    _, net = _net_with_closed_gates()
    with torch.no_grad():
        net.blocks[1].ctrl1.fc2.bias.fill_(-100.0)   # conv1 of block 1: nothing runs
        net.blocks[4].ctrl2.fc2.bias.fill_(-100.0)   # conv2 of block 4: nothing added
        net.blocks[4].ctrl2.fc2.weight.zero_()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    assert float(net.traces()[2].mask.sum()) == 0 and float(net.traces()[9].mask.sum()) == 0
    assert torch.allclose(SparseResNet(net)(x), ref, atol=1e-4)


def test_sparse_runtime_variants_match_the_masked_net():
    _, net = _net_with_closed_gates()
    with torch.no_grad():
        net.blocks[2].ctrl2.fc2.bias.fill_(-100.0)   # identity block reduced to its shortcut
        net.blocks[2].ctrl2.fc2.weight.zero_()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(SparseResNet(net, channels_last=True)(x), ref, atol=1e-4)
    assert torch.allclose(SparseResNet(net)(x.clone()), ref, atol=1e-4)


def test_sparse_runtime_without_gates_is_the_dense_backbone():
    backbone, net = _net_with_closed_gates()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = backbone.eval()(x)
    assert torch.allclose(SparseResNet(net, gates=False)(x), ref, atol=1e-4)


def test_sparse_runtime_leaves_its_input_unchanged():
    _, net = _net_with_closed_gates()
    x = torch.randn(1, 3, 32, 32)
    keep = x.clone()
    SparseResNet(net)(x)
    assert torch.equal(x, keep)
