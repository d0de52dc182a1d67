"""Every tunable of the detector in one dataclass: JSON-able, so a checkpoint's manifest rebuilds it.

Defaults are torchvision's `fasterrcnn_resnet50_fpn` (the "modern" Faster R-CNN) wherever the paper
is not what users now expect; each such field names the paper's choice in its help text (which is also its
`--help` in training/train_det.py).
"""

from dataclasses import asdict, dataclass, fields
from typing import Any

from backbone.flags import option
from backbone.pixel_statistics import IMAGENET_MEAN, IMAGENET_STD

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
    stride_in_1x1: bool = option(
        True, "Stride 2 in the first 1x1 convolution of a bottleneck (the paper's layout); torchvision's "
        "weights need false (v1.5, stride in the 3x3).",
    )  # fmt: skip
    base_width: int = option(64, "Channels of the first stage; smaller values build narrow networks (tests, demos).")
    shortcut: str = option(
        "B", "Shortcut option of the paper: A (zero padding), B (projection when shapes change) or C (always "
        "projection); paper: B for 50/101/152 (Table 3), A for 18/34 in Table 2.",
    )  # fmt: skip
    frozen_bn: bool = option(
        True, "Batch norm statistics and affine parameters fixed while fine-tuning (paper, appendix); "
        "training from scratch needs false.",
    )  # fmt: skip
    freeze_at: int = option(
        2, "Stages not trained: 0 trains everything, 1 freezes the stem, 2 the stem and res2 (detectron2 "
        "and torchvision; the paper does not say).",
    )  # fmt: skip

    # Input: shorter side resized to min_size (one picked at random per image when several are given,
    # during training), longer side at most max_size, then padded to a multiple of size_divisible.
    min_size: tuple[int, ...] = option(
        (800,), "Shorter image side in pixels; with several, training draws one per image and the last "
        "entry is the test size (paper: 600, one scale).",
    )  # fmt: skip
    max_size: int = option(1333, "Longer image side at most, in pixels (paper: 1000).")
    size_divisible: int = option(32, "Batched images are padded to a multiple of this many pixels.")
    image_mean: tuple[float, float, float] = option(
        IMAGENET_MEAN, "Per-channel mean subtracted from RGB inputs in [0, 1] (torchvision's ImageNet "
        "statistics).",
    )  # fmt: skip
    image_std: tuple[float, float, float] = option(
        IMAGENET_STD, "Per-channel standard deviation the inputs are divided by."
    )

    # Feature pyramid (head="fpn" only).
    fpn_channels: int = option(256, "Channels of every feature pyramid level (FPN head only).")
    fpn_norm: str = option(
        "none", "Normalisation in the feature pyramid: none, or bn as in torchvision's fasterrcnn_resnet50_fpn_v2."
    )

    # Anchors.
    anchor_sizes: tuple[int, ...] = option(
        (), "Anchor side lengths in input pixels, one per pyramid level for FPN; none given means the "
        "head's default (32 to 512).",
    )  # fmt: skip
    anchor_ratios: tuple[float, ...] = option((0.5, 1.0, 2.0), "Anchor height / width ratios, as in the paper.")

    # Region proposal network (Ren et al. 2015, Sec. 3.1).
    rpn_conv_depth: int = option(1, "3x3 convolutions of the RPN before its two 1x1 outputs (2 in torchvision's v2).")
    rpn_pre_nms_top_n_train: int = option(2000, "Proposals kept per FPN level before NMS, in training.")
    rpn_pre_nms_top_n_test: int = option(1000, "Proposals kept per FPN level before NMS, at test time.")
    rpn_post_nms_top_n_train: int = option(2000, "Proposals kept after NMS per image, in training.")
    rpn_post_nms_top_n_test: int = option(1000, "Proposals kept after NMS per image, at test time (paper: 300).")
    rpn_nms_thresh: float = option(0.7, "IoU above which the RPN's NMS drops the lower-scoring proposal.")
    rpn_fg_iou_thresh: float = option(0.7, "An anchor with at least this IoU with a box is a positive RPN sample.")
    rpn_bg_iou_thresh: float = option(0.3, "An anchor below this IoU with every box is a negative RPN sample.")
    rpn_batch_size_per_image: int = option(256, "Anchors sampled per image for the RPN loss.")
    rpn_positive_fraction: float = option(0.5, "Largest fraction of positives among the RPN's sampled anchors.")
    rpn_score_thresh: float = option(0.0, "Proposals scoring below this are dropped.")

    # Box head: FPN uses "mlp" (two fc layers, torchvision v1) or "conv_fc" (4 conv+BN, 1 fc, v2);
    # C4 always runs res5 on 14x14 RoIs (the paper's appendix) and ignores these two.
    box_head: str = option(
        "mlp", "FPN box head: mlp (two fc layers, torchvision v1) or conv_fc (4 conv + BN, 1 fc, v2); C4 "
        "always runs res5 on each RoI.",
    )  # fmt: skip
    representation_size: int = option(1024, "Width of the FPN box head's fc layers.")
    box_fg_iou_thresh: float = option(0.5, "A proposal with at least this IoU with a box is a foreground RoI.")
    box_bg_iou_thresh: float = option(
        0.5, "A proposal below this IoU with every box is background (paper, Fast R-CNN: IoU from 0.1 to 0.5)."
    )
    box_batch_size_per_image: int = option(512, "RoIs sampled per image for the box loss (paper: 128).")
    box_positive_fraction: float = option(0.25, "Largest fraction of foreground among the sampled RoIs.")
    bbox_reg_weights: tuple[float, float, float, float] = option(
        (10.0, 10.0, 5.0, 5.0), "Weights of the box deltas dx, dy, dw, dh."
    )
    box_score_thresh: float = option(0.05, "Detections scoring below this are dropped.")
    box_nms_thresh: float = option(0.5, "IoU above which per-class NMS drops the lower-scoring detection (paper: 0.3).")
    box_detections_per_img: int = option(100, "Detections kept per image at most.")
    global_context: bool = option(
        False, "Global context (paper, appendix): the whole image pooled as one more RoI through the box head, its "
        "feature concatenated with every region's before the classifier and box regressor.",
    )  # fmt: skip

    # Classifier outputs that no class uses: torchvision's COCO models score COCO's sparse category
    # ids 1..90 directly (91 outputs, 10 ids unused); they stay in the softmax but are never reported.
    unused_class_ids: tuple[int, ...] = option(
        (), "Classifier outputs no class uses (torchvision's 91-output COCO models); they are never reported."
    )

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so two equal option sets compare equal.
        for each in fields(self):
            value = getattr(self, each.name)
            if isinstance(value, list):
                setattr(self, each.name, tuple(value))
        if self.anchor_sizes is None:  # manifests written before () meant "the head's default"
            self.anchor_sizes = ()
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
