"""Residual building blocks of He et al. 2015 (Fig. 2 and Fig. 5) and their shortcuts (Sec. 3.3).

Key names (conv1/bn1/conv2/bn2/conv3/bn3, shortcut.conv/shortcut.bn) are chosen so that
torchvision's ResNet checkpoints map onto ours with a short table (see torchvision_compat.py).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

# Shortcut options of Sec. 3.3 / Table 3:
#   "A": identity; where dimensions increase, zero-padded channels and strided subsampling (no params)
#   "B": projection (1x1 conv + BN) only where dimensions change, identity elsewhere
#   "C": projection on every shortcut
SHORTCUT_OPTIONS = ("A", "B", "C")


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by `stride`, then append zero channels up to `out_channels`."""

    def __init__(self, *, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot reduce channels ({in_channels} -> {out_channels})")
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class ProjectionShortcut(nn.Module):
    """Options B and C: a strided 1x1 convolution followed by BN (Eqn. 2, W_s)."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, *, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self.bn = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def make_shortcut(
    *, option: str, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
) -> nn.Module | None:
    """Return the shortcut module for one block, or None for a parameter-free identity."""
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut option must be one of {SHORTCUT_OPTIONS}, got {option!r}")
    changes_shape = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and changes_shape):
        return ProjectionShortcut(
            in_channels=in_channels, out_channels=out_channels, stride=stride, norm_layer=norm_layer
        )
    if changes_shape:
        return ZeroPadShortcut(in_channels=in_channels, out_channels=out_channels, stride=stride)
    return None


class ResidualBlock(nn.Module):
    """What both blocks share: the keywords the ResNet builder passes, the shortcut (none in a plain net,
    `residual=False`), and adding it before the last ReLU. Subclasses make their layers in `build`."""

    expansion: int
    conv_bn_pairs: tuple[tuple[str, str], ...]

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int,
        residual: bool,
        shortcut: str,
        stride_in_1x1: bool,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.build(in_channels=in_channels, out_channels=out_channels, bottleneck_channels=bottleneck_channels,
                   stride=stride, stride_in_1x1=stride_in_1x1, norm_layer=norm_layer)  # fmt: skip
        self.shortcut = (
            make_shortcut(
                option=shortcut,
                in_channels=in_channels,
                out_channels=out_channels,
                stride=stride,
                norm_layer=norm_layer,
            )  # fmt: skip
            if residual
            else None
        )

    def build(self, **kwargs) -> None:
        raise NotImplementedError

    @property
    def last_bn(self) -> nn.Module:
        """The BN before the addition (zero_init_residual zeroes its weight): the last of `conv_bn_pairs`."""
        return getattr(self, self.conv_bn_pairs[-1][1])

    def add_shortcut(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The block's output: F(x) + x (or its projection), then ReLU; a plain block returns ReLU(F(x))."""
        if self.residual:
            out += x if self.shortcut is None else self.shortcut(x)
        return F.relu(out, inplace=True)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (Fig. 5 left), used by ResNet-18/34 and the CIFAR nets."""

    expansion = 1
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def build(self, *, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer, **unused) -> None:
        del unused  # bottleneck_channels, stride_in_1x1: only meaningful for the bottleneck block
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.add_shortcut(self.bn2(self.conv2(out)), x)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (Fig. 5 right), used by ResNet-50/101/152."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def build(
        self, *, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int, stride_in_1x1: bool,
        norm_layer: NormLayer,
    ) -> None:  # fmt: skip
        # stride_in_1x1=True is the paper's layout (and Caffe's/detectron2's "MSRA" weights);
        # False puts the stride in the 3x3, torchvision's "ResNet v1.5" (+0.3 GMACs, better accuracy).
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False)
        self.bn1 = norm_layer(bottleneck_channels)
        self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=1, bias=False)
        self.bn2 = norm_layer(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.add_shortcut(self.bn3(self.conv3(out)), x)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(
    *,
    block: str,
    num_blocks: int,
    in_channels: int,
    out_channels: int,
    stride: int,
    residual: bool = True,
    shortcut: str = "B",
    stride_in_1x1: bool = False,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Sequential:
    """Build one stage (conv2_x .. conv5_x of Table 1); the first block carries the stride.

    The C4 detector builds its per-RoI res5 head with this same function.
    """
    block_cls = BLOCKS[block]
    bottleneck_channels = out_channels // block_cls.expansion
    blocks = []
    for index in range(num_blocks):
        blocks.append(
            block_cls(
                in_channels=in_channels if index == 0 else out_channels,
                out_channels=out_channels,
                bottleneck_channels=bottleneck_channels,
                stride=stride if index == 0 else 1,
                residual=residual,
                shortcut=shortcut,
                stride_in_1x1=stride_in_1x1,
                norm_layer=norm_layer,
            )
        )
    return nn.Sequential(*blocks)
