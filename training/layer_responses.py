"""Fig. 7 of the paper: the std of each 3x3 layer's responses (after BN, before the nonlinearity and the
addition) of trained CIFAR nets, and its plot. `python -m training.analysis layer_responses` is its command."""

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import torch
from torch import nn

from backbone.serving_checkpoint import load_classifier
from backbone.weights import CheckpointError
from training.device_cifar import DeviceEvalBatches, DeviceImages, Normalizer, load_cifar_arrays

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, BN module) after every 3x3 convolution, in forward order (stem, then block by block)."""
    layers = []
    for name, module in model.named_modules():
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            if getattr(module, conv_name).kernel_size == (3, 3):
                layers.append((f"{name}.{bn_name}", getattr(module, bn_name)))
    return layers


@torch.no_grad()
def layer_response_stds(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Std of each 3x3 layer's BN output over `batches` (eval mode), in `response_layers` order.

    A forward hook on the BN sees its output before the ReLU (applied in place after it) and before
    the shortcut is added, which is where the paper measures.
    """
    layers = response_layers(model)
    sums = torch.zeros(len(layers), 3, dtype=torch.float64)  # count, sum, sum of squares

    def hook(index: int):
        def record(module, inputs, output):
            values = output.detach().double()
            count = torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)
            sums[index] += torch.stack([count, values.sum(), values.square().sum()]).cpu()

        return record

    handles = [bn.register_forward_hook(hook(index)) for index, (_, bn) in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for images, _ in batches:
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    count, total, squares = sums.unbind(dim=1)
    variance = squares / count - (total / count) ** 2
    return variance.clamp_min(0).sqrt().tolist()


def paper_name(architecture: str) -> str:
    """ "cifar_resnet56" -> "ResNet-56", "cifar_plain20" -> "plain-20" (the paper's labels)."""
    for prefix, label in (("cifar_resnet", "ResNet-"), ("cifar_plain", "plain-")):
        if architecture.startswith(prefix):
            return label + architecture[len(prefix) :]
    return architecture


def plot_layer_responses(stds: dict[str, list[float]], output_path: str | os.PathLike) -> Path:
    """Fig. 7: top, std against layer index; bottom, the same stds sorted in descending order.
    Plain nets dashed, ResNets solid."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5))
    for color_index, (label, values) in enumerate(stds.items()):
        style = dict(color=f"C{color_index}", linestyle="--" if label.startswith("plain") else "-", linewidth=1.3)
        layers = range(1, len(values) + 1)
        top.plot(layers, values, label=label, **style)
        bottom.plot(layers, sorted(values, reverse=True), label=label, **style)
    top.set(xlabel="layer index (original)", ylabel="std")
    bottom.set(xlabel="layer index (sorted by magnitude)", ylabel="std")
    for axis in (top, bottom):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=120)
    plt.close(figure)
    return output_path


def layer_responses(
    checkpoints: Sequence[str | os.PathLike], *, data: str | os.PathLike, device: torch.device, batch_size: int = 500
) -> dict[str, list[float]]:
    """{paper label: stds} of each serving checkpoint (model.safetensors) on the CIFAR test set at `data`."""
    arrays = load_cifar_arrays(data)
    test = DeviceImages(arrays.test_images, arrays.test_labels, classes=arrays.classes, padding=0, device=device)
    results = {}
    for path in checkpoints:
        model, manifest = load_classifier(path)
        if manifest["class_names"] != arrays.classes:
            raise CheckpointError(f"{path} was trained on other classes than the test set at {data}")
        preprocessing = manifest["preprocessing"]
        normalizer = Normalizer(mean=preprocessing["mean"], std=preprocessing["std"], device=device)
        batches = DeviceEvalBatches(test, indices=range(len(test)), batch_size=batch_size, normalizer=normalizer)
        label = paper_name(manifest["architecture"])
        if label in results:
            label = f"{label} ({Path(path).parent.name})"
        results[label] = layer_response_stds(model.to(device), batches)
    return results
