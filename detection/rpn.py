"""Stage 2: the region proposal network of Faster R-CNN (Ren et al. 2015, Sec. 3.1).

Anchors, their matching to ground truth, the balanced sampler, box coding and per-level NMS are
torchvision's (tested, and identical numerics are what lets its COCO weights give its detections in
our model). We own `forward` for two reasons torchvision's cannot serve:
- losses whenever targets are given, in eval mode too (a validation loss), not only in training;
- the head's outputs are cast to float32 before box decoding, so bf16 autocast never decodes boxes
  in bf16 (8 mantissa bits: several pixels of error at 1000 px);
- anchors are generated in float32 whatever the features' dtype: torchvision's generator takes the
  feature maps' dtype, and in bf16 at 800x1344 the worst anchor was 7 px off and 23,400 of 268,506
  became duplicates (issue 17).
"""

from collections.abc import Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers

from detection.options import DetectorOptions


class RegionProposalNetwork(TorchvisionRPN):
    """Objectness and box deltas per anchor -> proposals (and, given targets, the RPN losses)."""

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        feature_maps = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_maps)
        objectness = [level.float() for level in objectness]
        pred_bbox_deltas = [level.float() for level in pred_bbox_deltas]
        anchors = self.anchor_generator(images, [float32_stand_in(level) for level in feature_maps])

        num_anchors_per_level = [level[0].numel() for level in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Proposals are not differentiated through (Faster R-CNN's approximate joint training).
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses = {}
        if targets is not None:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets
            )
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses


def float32_stand_in(feature: torch.Tensor) -> torch.Tensor:
    """An empty float32 tensor with the feature map's grid size and device: all the anchor generator
    reads from a feature map, without copying it to float32."""
    return feature.new_empty((0, *feature.shape[-2:]), dtype=torch.float32)


def build_rpn(
    *, in_channels: int, num_levels: int, options: DetectorOptions, default_sizes: Sequence[int]
) -> RegionProposalNetwork:
    """One anchor size per level when there are several levels (FPN), all sizes on one map (C4)."""
    sizes = tuple(options.anchor_sizes or default_sizes)
    ratios = tuple(options.anchor_ratios)
    if num_levels > 1:
        if len(sizes) != num_levels:
            raise ValueError(f"FPN has {num_levels} levels, so anchor_sizes needs {num_levels} sizes, got {sizes}")
        anchor_generator = AnchorGenerator(sizes=tuple((size,) for size in sizes), aspect_ratios=(ratios,) * num_levels)
    else:
        anchor_generator = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    head = RPNHead(in_channels, anchor_generator.num_anchors_per_location()[0], conv_depth=options.rpn_conv_depth)
    return RegionProposalNetwork(
        anchor_generator,
        head,
        fg_iou_thresh=options.rpn_fg_iou_thresh,
        bg_iou_thresh=options.rpn_bg_iou_thresh,
        batch_size_per_image=options.rpn_batch_size_per_image,
        positive_fraction=options.rpn_positive_fraction,
        pre_nms_top_n=dict(training=options.rpn_pre_nms_top_n_train, testing=options.rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=options.rpn_post_nms_top_n_train, testing=options.rpn_post_nms_top_n_test),
        nms_thresh=options.rpn_nms_thresh,
        score_thresh=options.rpn_score_thresh,
    )
