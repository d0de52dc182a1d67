"""Inference-only fusion: conv -> (folded BN) -> ReLU, conv -> +shortcut -> ReLU, FPN lateral conv -> +top-down,
and the RPN head's two output convs as one.

After BN folding every backbone conv is followed by at most a ReLU or a residual add and a ReLU.
In eager PyTorch each of those is another full pass over the activation; oneDNN applies them inside
the convolution (the fused kernels torch.compile's inductor emits on CPU, called here without
compiling, so any input size runs at once). Falls back to plain ops off CPU, under autocast, or
where the oneDNN ops are missing. The results equal the unfused ops (same kernels, same order).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork

from backbone.blocks import BasicBlock, Bottleneck
from backbone.resnet import Stem

_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _fusable(x: torch.Tensor) -> bool:
    return _POINTWISE is not None and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")


def _conv_args(conv: nn.Conv2d) -> tuple:
    return conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if _fusable(x):
        return _POINTWISE(x, *_conv_args(conv), "relu", [], "")
    return F.relu(conv(x), inplace=True)


def conv_add_relu(conv: nn.Conv2d, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    if _fusable(x):
        return _POINTWISE.binary(x, shortcut, *_conv_args(conv), "add", None, "relu", [], "")
    return F.relu(conv(x) + shortcut, inplace=True)


def conv_add(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    if _fusable(x):
        return _POINTWISE.binary(x, other, *_conv_args(conv), "add", None, None, [], "")
    return conv(x) + other


def _only_conv(block: nn.Module) -> nn.Conv2d:
    """The conv of a torchvision Conv2dNormActivation whose norm was folded and which has no activation."""
    conv, *rest = block
    if not isinstance(conv, nn.Conv2d) or not all(isinstance(module, nn.Identity) for module in rest):
        raise RuntimeError(f"expected a conv with its BN folded and no activation, got {block}")
    return conv


class FusedFPN(nn.Module):
    """torchvision's FeaturePyramidNetwork.forward with each lateral 1x1 conv and its top-down add fused."""

    def __init__(self, fpn: FeaturePyramidNetwork) -> None:
        super().__init__()
        self.inner_convs = nn.ModuleList(_only_conv(block) for block in fpn.inner_blocks)
        self.layer_convs = nn.ModuleList(_only_conv(block) for block in fpn.layer_blocks)
        self.extra_blocks = fpn.extra_blocks

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names, features = list(x), list(x.values())
        last_inner = self.inner_convs[-1](features[-1])
        results = [self.layer_convs[-1](last_inner)]
        for index in range(len(features) - 2, -1, -1):
            top_down = F.interpolate(last_inner, size=features[index].shape[-2:], mode="nearest")
            last_inner = conv_add(self.inner_convs[index], features[index], top_down)
            results.insert(0, self.layer_convs[index](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, features, names)
        return OrderedDict(zip(names, results))


class FusedRPNHead(nn.Module):
    """torchvision's RPNHead with its two 1x1 output convs (objectness, deltas) as one: the shared
    3x3 features are read once per level instead of twice."""

    def __init__(self, head: RPNHead) -> None:
        super().__init__()
        self.conv = head.conv
        self.num_logits = head.cls_logits.out_channels
        weight = head.cls_logits.weight
        # On the replaced weights' device and dtype: a new module defaults to CPU fp32, and a detector
        # optimized after .to("cuda") would then fail its first forward (issue 17).
        self.outputs = nn.Conv2d(
            head.cls_logits.in_channels, self.num_logits + head.bbox_pred.out_channels, 1,
            device=weight.device, dtype=weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            self.outputs.weight.copy_(torch.cat([head.cls_logits.weight, head.bbox_pred.weight]))
            self.outputs.bias.copy_(torch.cat([head.cls_logits.bias, head.bbox_pred.bias]))

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for feature in features:
            out = self.outputs(self.conv(feature))
            logits.append(out[:, : self.num_logits])
            deltas.append(out[:, self.num_logits :])
        return logits, deltas


class FusedStem(nn.Module):
    def __init__(self, stem: Stem) -> None:
        super().__init__()
        self.conv, self.pool = stem.conv, stem.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(conv_relu(self.conv, x))


class FusedBlock(nn.Module):
    """A BN-folded BasicBlock or Bottleneck: every conv but the last with its ReLU, the last with add + ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        names = [conv for conv, _ in block.conv_bn_pairs]
        self.convs = nn.ModuleList(getattr(block, name) for name in names)
        self.residual = block.residual
        self.shortcut = block.shortcut  # None (identity), option A (zero padding) or a folded projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs[:-1]:
            out = conv_relu(conv, out)
        if not self.residual:
            return conv_relu(self.convs[-1], out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.convs[-1], out, shortcut)


class ConvReLU(nn.Module):
    """A conv whose ReLU runs inside it (torchvision's Conv2dNormActivation in the RPN head, BN folded)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_relu(self.conv, x)


def fuse_conv_relu_sequences(model: nn.Module) -> nn.Module:
    """In every nn.Sequential, conv [Identity...] ReLU -> ConvReLU [Identity...] Identity (in place)."""
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for index, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            rest = [c for _, c in children[index + 1 :]]
            between = next((i for i, c in enumerate(rest) if not isinstance(c, nn.Identity)), None)
            if between is not None and isinstance(rest[between], nn.ReLU):
                setattr(module, name, ConvReLU(child))
                setattr(module, children[index + 1 + between][0], nn.Identity())
    return model


def fuse_fpn_and_rpn_head(model: nn.Module) -> nn.Module:
    """Replace (in place) every BN-folded FeaturePyramidNetwork and every RPNHead below `model`."""
    for name, child in model.named_children():
        if isinstance(child, FeaturePyramidNetwork):
            setattr(model, name, FusedFPN(child))
        elif isinstance(child, RPNHead):
            setattr(model, name, FusedRPNHead(child))
        else:
            fuse_fpn_and_rpn_head(child)
    return model


def fuse_resnet_blocks(model: nn.Module) -> nn.Module:
    """Replace (in place) every BN-folded stem and block below `model` by its fused counterpart."""
    for name, child in model.named_children():
        if isinstance(child, (Stem, BasicBlock, Bottleneck)):
            if not all(isinstance(getattr(child, bn), nn.Identity) for _, bn in child.conv_bn_pairs):
                raise RuntimeError("fuse_resnet_blocks needs BN folded first (backbone.bn_folding.fold_batchnorm)")
            setattr(model, name, FusedStem(child) if isinstance(child, Stem) else FusedBlock(child))
        else:
            fuse_resnet_blocks(child)
    return model
