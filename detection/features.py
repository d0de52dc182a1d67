"""Stage 1 of the detector: shared convolutional features of the whole image.

Two layouts, read from the backbone's own `feature_info`:
- C4 (the ResNet paper's appendix): conv1..res4, one map at stride 16; res5 runs per RoI instead.
- FPN (Lin et al. 2017): res2..res5 through torchvision's `FeaturePyramidNetwork` (its weights map
  onto ours key for key), giving P2..P5 plus P6 (a stride-2 subsample of P5, used by the RPN only).
"""

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from backbone import ResNet


class C4Features(nn.Module):
    """The backbone up to res4: one feature map named "res4" (stride 16 for ImageNet-style stems)."""

    def __init__(self, *, backbone: ResNet) -> None:
        super().__init__()
        if "res4" not in backbone.out_features or backbone.last_stage != "res4":
            raise ValueError(f"C4 features need a backbone that ends at res4, got {backbone.out_features}")
        self.backbone = backbone
        info = backbone.feature_info["res4"]
        self.out_channels = info.channels
        self.strides = {"res4": info.stride}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(images)


class FPNFeatures(nn.Module):
    """res2..res5 -> P2..P6 with `out_channels` each (P6 = P5 subsampled by 2, as in the FPN paper)."""

    def __init__(self, *, backbone: ResNet, out_channels: int, norm_layer: type[nn.Module] | None) -> None:
        super().__init__()
        self.backbone = backbone
        in_names = list(backbone.out_features)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=[backbone.feature_info[name].channels for name in in_names],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        # res{k} -> P{k}: same stride; P6 is one level coarser than the last.
        self.level_names = {name: f"p{name.removeprefix('res')}" for name in in_names}
        last = backbone.feature_info[in_names[-1]]
        self.level_names["pool"] = f"p{int(in_names[-1].removeprefix('res')) + 1}"
        self.strides = {self.level_names[name]: backbone.feature_info[name].stride for name in in_names}
        self.strides[self.level_names["pool"]] = last.stride * 2
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pyramid = self.fpn(OrderedDict(self.backbone.forward_features(images)))
        return {self.level_names[name]: level for name, level in pyramid.items()}
