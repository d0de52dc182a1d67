"""The model registry: a plain dict from name to the ResNet keyword arguments that define it."""

from typing import Any

from backbone.resnet import ResNet

# Table 1 of the paper: blocks per stage (conv2_x .. conv5_x).
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# Sec. 4.2: 6n+2 layers with n blocks per stage; ResNet-20/32/44/56/110/1202.
CIFAR_N = (3, 5, 7, 9, 18, 200)

MODELS: dict[str, dict[str, Any]] = {}
# Shortcut option B: the paper's choice for 50/101/152 (Table 3) and torchvision's for all
# depths; the paper's 18/34 of Table 2 used option A (pass shortcut="A").
for _prefix, _residual in (("resnet", True), ("plain", False)):
    for _depth, (_block, _layers) in IMAGENET_DEPTHS.items():
        MODELS[f"{_prefix}{_depth}"] = dict(block=_block, layers=_layers, residual=_residual, shortcut="B")
for _prefix, _residual in (("cifar_resnet", True), ("cifar_plain", False)):
    for _n in CIFAR_N:
        MODELS[f"{_prefix}{6 * _n + 2}"] = dict(
            block="basic", layers=(_n, _n, _n), stem="cifar", base_width=16,
            residual=_residual, shortcut="A", num_classes=10,
        )  # fmt: skip


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return list(MODELS)


def create_model(name: str, **kwargs: Any) -> ResNet:
    """Build a registered model; keyword arguments override the registered ones."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return ResNet(**{**MODELS[name], **kwargs})
