"""Every tunable of the detector in one dataclass: JSON-able, so a checkpoint's manifest rebuilds it.

Defaults are torchvision's `fasterrcnn_resnet50_fpn` (the "modern" Faster R-CNN) wherever the paper
is not what users now expect; each such field names the paper's choice in its comment.
"""

from dataclasses import asdict, dataclass, fields
from typing import Any

from backbone.preprocessing import IMAGENET_MEAN, IMAGENET_STD

HEADS = ("fpn", "c4")
BOX_HEADS = ("mlp", "conv_fc")
NORMS = ("none", "bn")

# Anchor side lengths in input pixels. FPN: one size per level P2..P6 (Lin et al. 2017).
FPN_ANCHOR_SIZES = (32, 64, 128, 256, 512)
# C4: all sizes on res4 (detectron2's C4 baselines); Faster R-CNN itself used 128, 256, 512.
C4_ANCHOR_SIZES = (32, 64, 128, 256, 512)


@dataclass
class DetectorOptions:
    """Keyword options of `build_detector`; unknown names raise TypeError."""

    # Backbone (passed to backbone.create_model).
    stride_in_1x1: bool = True  # paper's bottleneck; torchvision's detector weights need False (v1.5)
    base_width: int = 64  # smaller values build narrow networks (tests, tiny demos)
    shortcut: str = "B"  # paper: B for 50/101/152 (Table 3), A for 18/34 in Table 2
    frozen_bn: bool = True  # paper appendix: BN statistics and affine fixed while fine-tuning detection
    freeze_at: int = 2  # stem + res2 not trained (detectron2, torchvision); the paper does not say

    # Input: shorter side resized to min_size (one picked at random per image when several are given,
    # during training), longer side at most max_size, then padded to a multiple of size_divisible.
    min_size: tuple[int, ...] = (800,)  # paper: 600
    max_size: int = 1333  # paper: 1000
    size_divisible: int = 32
    image_mean: tuple[float, float, float] = IMAGENET_MEAN  # torchvision's ImageNet statistics, RGB
    image_std: tuple[float, float, float] = IMAGENET_STD

    # Feature pyramid (head="fpn" only).
    fpn_channels: int = 256
    fpn_norm: str = "none"  # "bn" for torchvision's fasterrcnn_resnet50_fpn_v2

    # Anchors: None picks FPN_ANCHOR_SIZES or C4_ANCHOR_SIZES by head.
    anchor_sizes: tuple[int, ...] | None = None
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width, as in the paper

    # Region proposal network (Ren et al. 2015, Sec. 3.1).
    rpn_conv_depth: int = 1  # 3x3 convs before the two 1x1 outputs; 2 in torchvision's v2
    rpn_pre_nms_top_n_train: int = 2000  # per FPN level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000  # paper: 300 proposals at test time
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0

    # Box head: FPN uses "mlp" (two fc layers, torchvision v1) or "conv_fc" (4 conv+BN, 1 fc, v2);
    # C4 always runs res5 on 14x14 RoIs (the paper's appendix) and ignores these two.
    box_head: str = "mlp"
    representation_size: int = 1024
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5  # paper (Fast R-CNN): background is IoU in [0.1, 0.5)
    box_batch_size_per_image: int = 512  # paper: 128 RoIs per image
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5  # paper: 0.3
    box_detections_per_img: int = 100

    # Classifier outputs that no class uses: torchvision's COCO models score COCO's sparse category
    # ids 1..90 directly (91 outputs, 10 ids unused); they stay in the softmax but are never reported.
    unused_class_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so two equal option sets compare equal.
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                setattr(self, field.name, tuple(value))
        if isinstance(self.min_size, int):
            self.min_size = (self.min_size,)
        if self.fpn_norm not in NORMS:
            raise ValueError(f"fpn_norm must be one of {NORMS}, got {self.fpn_norm!r}")
        if self.box_head not in BOX_HEADS:
            raise ValueError(f"box_head must be one of {BOX_HEADS}, got {self.box_head!r}")
        if self.freeze_at < 0:
            raise ValueError(f"freeze_at must be >= 0, got {self.freeze_at}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
