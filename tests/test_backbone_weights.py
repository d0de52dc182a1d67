"""torchvision weights in and out, BN folding, and the shared serving checkpoint for classifiers."""

import pytest
import torch
import torchvision
from torch import nn

from backbone import create_model
from backbone.bn_folding import optimize_for_inference
from backbone.pretrained import load_backbone_weights
from backbone.serving_checkpoint import (
    load_checkpoint,
    load_classifier,
    make_manifest,
    read_manifest,
    save_checkpoint,
    save_classifier,
)
from backbone.torchvision_compat import from_torchvision, to_torchvision
from backbone.weights import CheckpointError


def randomised_torchvision(depth: int) -> nn.Module:
    """A torchvision ResNet with non-trivial BN statistics, so a wrong key map cannot hide."""
    torch.manual_seed(depth)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_give_same_logits(depth, tmp_path):
    reference = randomised_torchvision(depth)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(reference.state_dict(), path)  # exactly as torchvision saves its weight files
    ours = load_backbone_weights(create_model(f"resnet{depth}", stride_in_1x1=False), path, with_fc=True).eval()
    x = torch.randn(2, 3, 64, 64) if depth > 50 else torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("depth", [18, 50])
def test_export_back_to_torchvision(depth):
    ours = create_model(f"resnet{depth}", stride_in_1x1=False).eval()
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    reference.load_state_dict(to_torchvision(ours.state_dict()), strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() < 1e-4


def test_key_map_round_trips():
    state = randomised_torchvision(50).state_dict()
    assert to_torchvision(from_torchvision(state)).keys() == state.keys()
    assert "res5.0.shortcut.conv.weight" in from_torchvision(state)
    assert "stem.conv.weight" in from_torchvision(state)


def test_paper_layout_refuses_torchvision_weights(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(randomised_torchvision(50).state_dict(), path)
    with pytest.raises(CheckpointError, match="stride_in_1x1=False"):
        load_backbone_weights(create_model("resnet50"), path, with_fc=True)


def test_wrong_and_truncated_files_name_the_keys(tmp_path):
    state = randomised_torchvision(18).state_dict()
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError) as error:
        load_backbone_weights(create_model("resnet34", stride_in_1x1=False), wrong, with_fc=True)
    assert "missing" in str(error.value) and "res2.2.conv1.weight" in str(error.value)

    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    extra_path = tmp_path / "extra.pth"
    torch.save(extra, extra_path)
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): res6.0.conv1.weight"):
        load_backbone_weights(create_model("resnet18"), extra_path, with_fc=True)

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(wrong.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_backbone_weights(create_model("resnet18"), truncated, with_fc=True)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_backbone_weights(create_model("resnet18"), tmp_path / "nowhere.pth", with_fc=True)


def test_mismatched_shapes_are_reported(tmp_path):
    state = randomised_torchvision(18).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="shape mismatch.*fc.weight"):
        load_backbone_weights(create_model("resnet18", num_classes=10), path, with_fc=True)
    # a pure backbone (num_classes=0) takes the same file and drops the classifier
    backbone = load_backbone_weights(create_model("resnet18", num_classes=0), path)
    assert torch.equal(backbone.stem.conv.weight, state["conv1.weight"])


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "cifar_resnet20"])
def test_fold_batchnorm_and_channels_last_keep_outputs(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.3, 0.3)
    size = 32 if name.startswith("cifar") else 96
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        optimize_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert (got - expected).abs().max().item() < 1e-4


def test_classifier_checkpoint_round_trip(tmp_path):
    model = create_model("cifar_resnet20").eval()
    path = save_classifier(
        tmp_path / "clf.safetensors",
        model=model,
        architecture="cifar_resnet20",
        class_names=[f"c{i}" for i in range(10)],
        preprocessing={"mean": [0.5] * 3, "std": [0.25] * 3, "size": 32},
        metrics={"top1_error": 0.5},
    )
    loaded, manifest = load_classifier(path)
    assert manifest["class_names"][3] == "c3" and manifest["metrics"]["top1_error"] == 0.5
    assert read_manifest(path) == manifest
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_corrupt_checkpoints_name_the_problem(tmp_path):
    model = create_model("cifar_resnet20")
    good = save_classifier(tmp_path / "good.safetensors", model=model, architecture="cifar_resnet20",
                           class_names=[str(i) for i in range(10)])  # fmt: skip
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_classifier(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_classifier(garbage)

    pickled = tmp_path / "pickled.safetensors"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(CheckpointError, match="pickled.safetensors"):
        load_classifier(pickled)

    manifest = make_manifest(kind="classifier", architecture="cifar_resnet20",
                             architecture_kwargs=create_model("cifar_resnet32").config,
                             class_names=[str(i) for i in range(10)])  # fmt: skip
    mismatched = save_checkpoint(tmp_path / "mismatched.safetensors", state_dict=model.state_dict(),
                                 manifest=manifest)  # fmt: skip
    with pytest.raises(CheckpointError, match="missing"):
        load_classifier(mismatched)

    detector_manifest = dict(manifest, kind="detector")
    wrong_kind = save_checkpoint(tmp_path / "det.safetensors", state_dict={}, manifest=detector_manifest)
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(wrong_kind)

    future = save_checkpoint(tmp_path / "future.safetensors", state_dict={},
                             manifest=dict(manifest, format_version=99))  # fmt: skip
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(future)

    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_classifier(tmp_path / "absent.safetensors")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = create_model("cifar_resnet20")
    target = tmp_path / "clf.safetensors"
    save_classifier(target, model=model, architecture="cifar_resnet20", class_names=[str(i) for i in range(10)])
    save_classifier(target, model=model, architecture="cifar_resnet20", class_names=[str(i) for i in range(10)])
    assert [p.name for p in tmp_path.iterdir()] == ["clf.safetensors"]
