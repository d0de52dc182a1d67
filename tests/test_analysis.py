"""training.analysis layer_responses (the paper's Fig. 7) on tiny generated checkpoints and a generated test set."""

import json
from pathlib import Path

import pytest
import torch
from cifar_data import COLOURS, write_cifar_tarball

from backbone import create_model
from backbone.serving_checkpoint import save_classifier
from training.analysis import main
from training.device_cifar import load_cifar_arrays
from training.layer_responses import layer_response_stds, response_layers
from training.transforms import CIFAR10_MEAN, CIFAR10_STD

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_checkpoint(path: Path, architecture: str, *, seed: int) -> Path:
    """A randomly initialised CIFAR net whose BN layers have non-trivial affine parameters and statistics."""
    torch.manual_seed(seed)
    model = create_model(architecture, num_classes=len(COLOURS))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    preprocessing = {"size": 32, "resize": 32, "mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)}
    return save_classifier(path, model=model, architecture=architecture, class_names=sorted(COLOURS),
                           preprocessing=preprocessing)  # fmt: skip


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    return write_cifar_tarball(tmp_path_factory.mktemp("cifar") / "cifar.tar.gz", per_split={"train": 1, "test": 6})


def test_every_3x3_layer_in_forward_order():
    names = [name for name, _ in response_layers(create_model("cifar_resnet20"))]
    assert len(names) == 19  # 20 layers: 19 convolutions 3x3 and the fc
    assert names[:3] == ["stem.bn", "res2.0.bn1", "res2.0.bn2"] and names[-1] == "res4.2.bn2"
    assert len(response_layers(create_model("cifar_plain56"))) == 55


def test_stds_are_those_of_the_bn_outputs_before_relu_and_addition(test_set):
    arrays = load_cifar_arrays(test_set)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    images = (arrays.test_images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.manual_seed(0)
    model = create_model("cifar_resnet20", num_classes=3).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.bias.data.uniform_(-1, 1)  # a mean far from 0, which a std must not count
    stds = layer_response_stds(model, [(images[:10], None), (images[10:], None)])
    with torch.no_grad():
        stem = model.stem.bn(model.stem.conv(images))
        block = model.res2[0]
        first = block.bn1(block.conv1(torch.relu(stem)))
        second = block.bn2(block.conv2(torch.relu(first)))  # before the shortcut is added
    expected = [
        stem.double().std(unbiased=False),
        first.double().std(unbiased=False),
        second.double().std(unbiased=False),
    ]
    assert stds[:3] == pytest.approx([float(e) for e in expected], rel=1e-6)
    assert model.training is False


def test_command_plots_plain_and_residual_nets(test_set, tmp_path, capsys):
    plain = tiny_checkpoint(tmp_path / "plain20" / "model.safetensors", "cifar_plain20", seed=1)
    residual = tiny_checkpoint(tmp_path / "resnet20" / "model.safetensors", "cifar_resnet20", seed=2)
    output, json_path = tmp_path / "fig7.png", tmp_path / "fig7.json"
    argv = ["layer_responses", str(plain), str(residual), "--data", str(test_set), "-o", str(output),
            "--json", str(json_path), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert output.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    stds = json.loads(json_path.read_text())
    assert list(stds) == ["plain-20", "ResNet-20"]
    assert all(len(values) == 19 and min(values) > 0 for values in stds.values())
    assert "ResNet-20:" in capsys.readouterr().out


def test_missing_checkpoint_and_other_classes_are_named(test_set, tmp_path, capsys):
    assert main(["layer_responses", str(tmp_path / "none.safetensors"), "--data", str(test_set)]) == 2
    assert "none.safetensors" in capsys.readouterr().err
    torch.manual_seed(0)
    other = create_model("cifar_resnet20", num_classes=2)
    path = save_classifier(tmp_path / "two.safetensors", model=other, architecture="cifar_resnet20",
                           class_names=["a", "b"], preprocessing={"mean": [0.5] * 3, "std": [0.2] * 3})  # fmt: skip
    assert main(["layer_responses", str(path), "--data", str(test_set), "--device", "cpu"]) == 2
    assert "trained on other classes" in capsys.readouterr().err
