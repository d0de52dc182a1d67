"""The backbone is the paper's network: stage shapes, shortcut options, plain nets, Table 1/6 figures."""

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from backbone import create_model, list_models
from backbone.blocks import ProjectionShortcut, ZeroPadShortcut
from backbone.complexity import PAPER_CIFAR_PARAMS_M, PAPER_GMACS, count_macs, count_parameters
from backbone.registry import CIFAR_N, IMAGENET_DEPTHS

STAGE_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_registry_names_and_defaults():
    names = list_models()
    for depth in IMAGENET_DEPTHS:
        assert f"resnet{depth}" in names and f"plain{depth}" in names
    for n in CIFAR_N:
        assert f"cifar_resnet{6 * n + 2}" in names and f"cifar_plain{6 * n + 2}" in names
    assert create_model("resnet18").fc.out_features == 1000
    assert create_model("cifar_resnet20").fc.out_features == 10
    with pytest.raises(KeyError, match="unknown model 'resnet19'"):
        create_model("resnet19")


@pytest.mark.parametrize("depth", sorted(IMAGENET_DEPTHS))
def test_stage_shapes_and_strides_every_depth(depth):
    model = create_model(f"resnet{depth}", num_classes=0).eval()
    expansion = 4 if depth >= 50 else 1
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 96))
    assert list(features) == ["res2", "res3", "res4", "res5"]
    for index, (name, feature) in enumerate(features.items()):
        info = model.feature_info[name]
        assert info.stride == STAGE_STRIDES[name]
        assert info.channels == 64 * 2**index * expansion
        assert feature.shape == (1, info.channels, 64 // info.stride, 96 // info.stride)
    blocks_per_stage = [len(getattr(model, name)) for name in model.stage_names]
    assert tuple(blocks_per_stage) == IMAGENET_DEPTHS[depth][1]


def test_cifar_net_shapes():
    model = create_model("cifar_resnet20").eval()
    assert {name: info.stride for name, info in model.feature_info.items()} == {
        "stem": 1, "res2": 1, "res3": 2, "res4": 4,
    }  # fmt: skip
    assert [model.feature_info[n].channels for n in model.stage_names] == [16, 32, 64]
    # 6n+2 weighted layers: the first conv, 6n convs in the stages, the fc
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 20
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_out_features_stop_early_and_validate():
    model = create_model("resnet18", out_features=("res3",)).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 64, 64))
    assert list(features) == ["res3"] and features["res3"].shape == (1, 128, 8, 8)
    with pytest.raises(ValueError, match="unknown out_features"):
        create_model("resnet18", out_features=("res6",))


@pytest.mark.parametrize("depth", sorted(IMAGENET_DEPTHS))
def test_macs_match_table1_within_3_percent(depth):
    name = f"resnet{depth}"
    gmacs = count_macs(create_model(name)) / 1e9
    assert abs(gmacs - PAPER_GMACS[name]) / PAPER_GMACS[name] < 0.03


def test_v15_resnet50_is_4_1_gmacs():
    gmacs = count_macs(create_model("resnet50", stride_in_1x1=False)) / 1e9
    assert round(gmacs, 1) == 4.1


def test_count_macs_leaves_model_usable():
    model = create_model("cifar_resnet20").eval()
    count_macs(model, image_size=32)
    assert next(model.parameters()).device.type == "cpu"
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


@pytest.mark.parametrize("name", sorted(PAPER_CIFAR_PARAMS_M))
def test_cifar_params_match_table6(name):
    params_m = count_parameters(create_model(name)) / 1e6
    # Table 6 rounds to two significant figures
    assert abs(params_m - PAPER_CIFAR_PARAMS_M[name]) / PAPER_CIFAR_PARAMS_M[name] < 0.02


def test_shortcut_options_parameter_order():
    plain = count_parameters(create_model("resnet34", residual=False))
    option_a = count_parameters(create_model("resnet34", shortcut="A"))
    option_b = count_parameters(create_model("resnet34", shortcut="B"))
    option_c = count_parameters(create_model("resnet34", shortcut="C"))
    assert option_a == plain  # A adds no parameters over plain
    assert plain < option_b < option_c  # C adds the most


def test_shortcut_modules_per_option():
    a = create_model("resnet18", shortcut="A")
    assert isinstance(a.res3[0].shortcut, ZeroPadShortcut) and a.res3[1].shortcut is None
    b = create_model("resnet18", shortcut="B")
    assert isinstance(b.res3[0].shortcut, ProjectionShortcut) and b.res3[1].shortcut is None
    assert b.res2[0].shortcut is None  # res2 of ResNet-18 keeps 64 channels and stride 1
    c = create_model("resnet18", shortcut="C")
    assert all(isinstance(block.shortcut, ProjectionShortcut) for name in c.stage_names for block in getattr(c, name))
    plain = create_model("resnet18", residual=False)
    assert all(block.shortcut is None for name in plain.stage_names for block in getattr(plain, name))
    with pytest.raises(ValueError, match="shortcut option"):
        create_model("resnet18", shortcut="D")


def test_option_a_zero_pads_and_subsamples():
    shortcut = ZeroPadShortcut(in_channels=2, out_channels=5, stride=2)
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = shortcut(x)
    assert out.shape == (1, 5, 2, 2)
    assert torch.equal(out[:, :2], x[:, :, ::2, ::2])
    assert not out[:, 2:].any()


def test_plain_and_residual_same_parameters_with_option_a():
    for depth in (20, 56):
        assert count_parameters(create_model(f"cifar_resnet{depth}")) == count_parameters(
            create_model(f"cifar_plain{depth}")
        )


def test_plain_net_has_no_identity_path():
    """Zeroing the last BN of every block kills a plain net's signal but not a residual net's."""
    x = torch.randn(1, 3, 32, 32)
    for name, survives in (("cifar_resnet20", True), ("cifar_plain20", False)):
        torch.manual_seed(0)
        model = create_model(name, zero_init_residual=True).eval()
        with torch.no_grad():
            out = model.forward_features(x)["res4"]
        assert bool(out.abs().sum() > 0) == survives


def test_stride_placement_flag():
    paper = create_model("resnet50")
    v15 = create_model("resnet50", stride_in_1x1=False)
    assert paper.res3[0].conv1.stride == (2, 2) and paper.res3[0].conv2.stride == (1, 1)
    assert v15.res3[0].conv1.stride == (1, 1) and v15.res3[0].conv2.stride == (2, 2)


def test_zero_init_residual():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(not block.bn3.weight.any() for name in model.stage_names for block in getattr(model, name))
    assert create_model("resnet50").res2[0].bn3.weight.all()


def test_he_initialisation_std():
    conv = create_model("resnet50").res4[0].conv2  # 3x3, 256 -> 256
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_frozen_bn_keeps_statistics_in_train_mode():
    model = create_model("resnet18", norm="frozen_bn", num_classes=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(2, 3, 64, 64) * 5 + 3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # frozen BN is an affine map with fixed statistics: same output for a sample alone or in a batch
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-5)


def test_freeze_at_stops_gradients_and_statistics():
    model = create_model("resnet18", freeze_at=2)  # stem + res2
    frozen = [p for m in (model.stem, model.res2) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in model.res3.parameters())
    assert isinstance(model.stem.bn, FrozenBatchNorm2d) and isinstance(model.res3[0].bn1, nn.BatchNorm2d)
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.stem.conv.weight.grad is None and model.res3[0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match="freeze_at"):
        create_model("resnet18", freeze_at=6)


def test_train_step_lowers_loss():
    torch.manual_seed(0)
    model = create_model("cifar_resnet20")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
