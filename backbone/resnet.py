"""One ResNet class for the whole family of He et al. 2015: ImageNet (Table 1) and CIFAR (Sec. 4.2),
residual or plain, shortcut options A/B/C, either bottleneck stride placement.

Stages are named like the paper's Table 1 (conv2_x .. conv5_x -> `res2` .. `res5`), and the model
describes each one's channels and stride in `feature_info` so a detector reads them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from backbone.blocks import BLOCKS, make_stage
from backbone.norm import FrozenBatchNorm2d


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride (relative to the input) of one named feature map."""

    channels: int
    stride: int


NORM_LAYERS = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}


class Stem(nn.Module):
    """conv1 of Table 1 (7x7/2 conv + 3x3/2 max pool), or the CIFAR net's single 3x3 conv."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, *, kind: str, out_channels: int, norm_layer) -> None:
        super().__init__()
        if kind == "imagenet":
            self.conv = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.stride = 4
        elif kind == "cifar":
            self.conv = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            self.pool = nn.Identity()
            self.stride = 1
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {kind!r}")
        self.bn = norm_layer(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu_(self.bn(self.conv(x))))


class ResNet(nn.Module):
    """Residual (or plain) network; every named model in the registry is a set of kwargs for this."""

    def __init__(
        self,
        *,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        stem: str = "imagenet",
        base_width: int = 64,
        residual: bool = True,
        shortcut: str = "B",
        stride_in_1x1: bool = True,
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        norm: str = "bn",
        freeze_at: int = 0,
        out_features: Sequence[str] | None = None,
    ) -> None:
        """
        Args:
            block: "basic" (two 3x3) or "bottleneck" (1x1-3x3-1x1).
            layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50 (Table 1).
            stem: "imagenet" (7x7/2 conv + max pool) or "cifar" (3x3 conv, Sec. 4.2).
            base_width: channels of the first stage before expansion (64 ImageNet, 16 CIFAR);
                each later stage doubles it.
            residual: False builds the plain counterpart (same layers, no shortcuts).
            shortcut: "A", "B" or "C" (Sec. 3.3).
            stride_in_1x1: True is the paper's bottleneck (stride in the first 1x1);
                False is torchvision's "v1.5" (stride in the 3x3), which its weights need.
            num_classes: classifier outputs; 0 builds no pooling/classifier (a pure backbone).
            zero_init_residual: zero the last BN of every block (Goyal et al. 2017; not the paper).
            norm: "bn", or "frozen_bn" for fixed statistics and affine as in the paper's detection.
            freeze_at: freeze parameters (and BN) of the first N modules: 1 = stem, 2 = stem+res2, ...
            out_features: stages returned by `forward_features`; default all stages.
        """
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if norm not in NORM_LAYERS:
            raise ValueError(f"norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        self.config = dict(
            block=block, layers=tuple(layers), stem=stem, base_width=base_width, residual=residual,
            shortcut=shortcut, stride_in_1x1=stride_in_1x1, num_classes=num_classes,
            zero_init_residual=zero_init_residual, norm=norm, freeze_at=freeze_at,
            out_features=None if out_features is None else tuple(out_features),
        )  # fmt: skip
        norm_layer = NORM_LAYERS[norm]
        expansion = BLOCKS[block].expansion

        self.stem = Stem(kind=stem, out_channels=base_width, norm_layer=norm_layer)
        self.feature_info: dict[str, FeatureInfo] = {"stem": FeatureInfo(base_width, self.stem.stride)}
        self.stage_names: list[str] = []
        in_channels, stride = base_width, self.stem.stride
        for index, num_blocks in enumerate(layers):
            name = f"res{index + 2}"
            out_channels = base_width * 2**index * expansion
            stage_stride = 1 if index == 0 else 2  # conv2_x follows the max pool; later stages halve
            self.add_module(
                name,
                make_stage(
                    block=block,
                    num_blocks=num_blocks,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    stride=stage_stride,
                    residual=residual,
                    shortcut=shortcut,
                    stride_in_1x1=stride_in_1x1,
                    norm_layer=norm_layer,
                ),
            )
            stride *= stage_stride
            in_channels = out_channels
            self.stage_names.append(name)
            self.feature_info[name] = FeatureInfo(out_channels, stride)

        self.out_features = tuple(out_features) if out_features is not None else tuple(self.stage_names)
        unknown = set(self.out_features) - set(self.feature_info)
        if unknown:
            raise ValueError(f"unknown out_features {sorted(unknown)}; have {list(self.feature_info)}")

        self.num_classes = num_classes
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_channels, num_classes)
        self.num_features = in_channels

        self._init_weights(zero_init_residual=zero_init_residual)
        self.freeze(freeze_at)

    def _init_weights(self, *, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015 ("Delving deep"), as the paper's Sec. 3.4 says; fan_out as torchvision.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for name in self.stage_names:
                for block in getattr(self, name):
                    nn.init.zeros_(block.last_bn.weight)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first `freeze_at` modules (stem, res2, ...): no gradients, BN statistics fixed."""
        modules = [self.stem] + [getattr(self, name) for name in self.stage_names]
        if not 0 <= freeze_at <= len(modules):
            raise ValueError(f"freeze_at must be in [0, {len(modules)}], got {freeze_at}")
        for module in modules[:freeze_at]:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            convert_to_frozen_batchnorm(module)

    @property
    def last_stage(self) -> str:
        return max(self.out_features, key=self.stage_names.index)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run up to the deepest requested stage and return the requested maps by name."""
        outputs = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            if len(outputs) == len(self.out_features):
                break
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification logits (num_classes > 0) or, for a pure backbone, the last stage's map."""
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        if self.num_classes == 0:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def convert_to_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` (in place) by a FrozenBatchNorm2d with its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            convert_to_frozen_batchnorm(child)
    return module
