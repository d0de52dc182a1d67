"""Stage 3: per-RoI classification and per-class box regression (Fast R-CNN, Girshick 2015).

Proposal-to-ground-truth matching, the 1:3 foreground/background sampler, the loss and box coding are
torchvision's (`RoIHeads`, `fastrcnn_loss`); its FPN box heads (`TwoMLPHead`, `FastRCNNConvFCHead`)
are reused so its weights load unchanged. We own:
- the poolers (detection/poolers.py): torchvision's RoIAlign, run on every core at inference;
- `Res5Head`, the C4 head of the ResNet paper's appendix: res5 (built by the backbone's own stage
  builder) on 14x14 RoIs, average pooling, then the classifier and box regressor;
- `forward`: losses whenever targets are given (eval mode too) and detections whenever not training;
  score threshold and detections-per-image can be set per call (no shared state: thread-safe);
- postprocessing that skips classifier outputs no class uses (`unused_class_ids`) and returns our
  contiguous labels 1..K, while NMS runs on the same ids as torchvision's for identical results;
- global context (option `global_context`, the appendix's): the whole image pooled as one RoI through the
  same box head, its feature concatenated with each region's before the classifier and box regressor;
- two test-time options of the paper's appendix, off by default: box voting after NMS
  (detection/box_voting.py) and box refinement (`refine=True`: pool again from the regressed boxes,
  run the head once more, NMS at IoU 0.3 over the union of both passes, then voting).
"""

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import boxes as box_ops

from backbone import FeatureInfo
from backbone.blocks import make_stage
from backbone.norm import FrozenBatchNorm2d
from detection.box_voting import VOTE_IOU_THRESHOLD, merge_detections
from detection.options import DetectorOptions

# The appendix's NMS over the union of the first and the refined predictions (box refinement).
REFINE_NMS_THRESHOLD = 0.3


class RoIHeads(TorchvisionRoIHeads):
    """Pool each proposal, run the box head, classify and regress; losses and/or detections."""

    def __init__(
        self, *, num_classes: int, unused_class_ids: Sequence[int], global_context: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        num_columns = num_classes + 1 + len(unused_class_ids)
        unused = set(unused_class_ids)
        if not unused <= set(range(1, num_columns)):
            raise ValueError(f"unused_class_ids {sorted(unused)} must lie in 1..{num_columns - 1}")
        used = [column for column in range(num_columns) if column not in unused]
        column_to_label = torch.full((num_columns,), -1, dtype=torch.int64)
        column_to_label[used] = torch.arange(len(used))
        # label (0 = background, 1..K) -> classifier column, and back; derived from options, not weights.
        self.register_buffer("label_to_column", torch.tensor(used, dtype=torch.int64), persistent=False)
        self.register_buffer("column_to_label", column_to_label, persistent=False)
        self.num_classes = num_classes
        self.has_unused_columns = bool(unused)
        self.global_context = global_context

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        *,
        score_thresh: float | None = None,
        detections_per_img: int | None = None,
        nms_thresh: float | None = None,
        vote_thresh: float | None = None,
        refine: bool = False,
        region_pooler: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
        classify: Callable[[list[torch.Tensor], list[tuple[int, int]]], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """vote_thresh: box voting after NMS at this IoU (None: no voting, unless refine); refine: box
        refinement, whose NMS runs at nms_thresh or, when None, the paper's 0.3, and whose voting at
        vote_thresh or Detectron's 0.8; region_pooler: pools the regions at inference instead of
        box_roi_pool (multi-scale testing's maxout pooler, detection/multiscale.py); classify: (regions, image
        shapes) -> (class logits, box deltas) at inference instead of this head's own on `features` (an
        ensemble's averaged outputs, detection/ensemble.py)."""
        losses = {}
        if targets is not None:
            targets = [{**target, "labels": self.label_to_column[target["labels"]]} for target in targets]
            sampled, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            class_logits, box_regression = self.classify(features, sampled, image_shapes)
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        detections = []
        if not self.training:
            score_thresh = self.score_thresh if score_thresh is None else score_thresh
            if classify is None:
                classify = partial(self.classify, features, region_pooler=region_pooler)
            class_logits, box_regression = classify(proposals, image_shapes)
            candidates = self.candidates(
                class_logits, box_regression, proposals, image_shapes, score_thresh=score_thresh
            )
            if refine:
                refined = self.regressed_boxes(class_logits, box_regression, proposals, image_shapes)
                class_logits, box_regression = classify(refined, image_shapes)
                second = self.candidates(class_logits, box_regression, refined, image_shapes, score_thresh=score_thresh)
                candidates = [
                    tuple(torch.cat([a, b]) for a, b in zip(first, again)) for first, again in zip(candidates, second)
                ]
                nms_thresh = REFINE_NMS_THRESHOLD if nms_thresh is None else nms_thresh
                vote_thresh = VOTE_IOU_THRESHOLD if vote_thresh is None else vote_thresh
            nms_thresh = self.nms_thresh if nms_thresh is None else nms_thresh
            detections_per_img = self.detections_per_img if detections_per_img is None else detections_per_img
            detections = [
                self.merge(
                    boxes,
                    scores,
                    columns,
                    nms_thresh=nms_thresh,
                    vote_thresh=vote_thresh,
                    detections_per_img=detections_per_img,
                )  # fmt: skip
                for boxes, scores, columns in candidates
            ]
        return detections, losses

    def classify(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        *,
        region_pooler: Callable[[list[torch.Tensor]], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and box deltas of each proposal; the global context, when on, is pooled from `features`."""
        if region_pooler is None:
            pooled = self.box_roi_pool(features, proposals, image_shapes)
        else:
            pooled = region_pooler(proposals)
        regions = self.box_head(pooled)
        if self.global_context:
            context = self.box_head(
                self.box_roi_pool(features, whole_image_boxes(proposals, image_shapes), image_shapes)
            )
            counts = torch.tensor([len(boxes) for boxes in proposals], device=context.device)
            regions = torch.cat([regions, context.repeat_interleave(counts, dim=0)], dim=1)
        class_logits, box_regression = self.box_predictor(regions)
        return class_logits.float(), box_regression.float()  # decode boxes in fp32 under bf16 autocast

    def candidates(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        *,
        score_thresh: float,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image, every (box, score, classifier column) of a used class above score_thresh, before NMS."""
        boxes_per_image = [len(boxes) for boxes in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        foreground = self.label_to_column[1:]
        candidates = []
        for boxes, scores, image_shape in zip(
            pred_boxes.split(boxes_per_image), pred_scores.split(boxes_per_image), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            columns = foreground.view(1, -1).expand(len(scores), -1)
            if self.has_unused_columns:
                boxes, scores = boxes[:, foreground], scores[:, foreground]
            else:
                boxes, scores = boxes[:, 1:], scores[:, 1:]
            boxes, scores, columns = boxes.reshape(-1, 4), scores.reshape(-1), columns.reshape(-1)
            keep = torch.where(scores > score_thresh)[0]
            boxes, scores, columns = boxes[keep], scores[keep], columns[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            candidates.append((boxes[keep], scores[keep], columns[keep]))
        return candidates

    def merge(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        columns: torch.Tensor,
        *,
        nms_thresh: float,
        vote_thresh: float | None,
        detections_per_img: int,
    ) -> dict[str, torch.Tensor]:
        """One image's candidates -> detections with our labels 1..K (NMS on the classifier columns)."""
        merged = merge_detections(
            boxes, scores, columns, nms_threshold=nms_thresh, vote_threshold=vote_thresh,
            max_detections=detections_per_img,
        )  # fmt: skip
        return {**merged, "labels": self.column_to_label[merged["labels"]]}

    def regressed_boxes(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[torch.Tensor]:
        """Per image, each proposal's box as regressed for its highest-scoring used foreground class,
        clipped to the image: the boxes box refinement pools from again."""
        boxes_per_image = [len(boxes) for boxes in proposals]
        decoded = self.box_coder.decode(box_regression, proposals)
        foreground = self.label_to_column[1:]
        best = foreground[F.softmax(class_logits, -1)[:, foreground].argmax(dim=1)]
        regressed = decoded[torch.arange(len(decoded), device=decoded.device), best]
        return [
            box_ops.clip_boxes_to_image(boxes, image_shape)
            for boxes, image_shape in zip(regressed.split(boxes_per_image), image_shapes)
        ]


def whole_image_boxes(proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One RoI per image covering all of it (its resized size, without the batch's padding): global context."""
    return [
        torch.tensor([[0.0, 0.0, float(width), float(height)]], dtype=boxes.dtype, device=boxes.device)
        for boxes, (height, width) in zip(proposals, image_shapes)
    ]


class Res5Head(nn.Module):
    """The C4 box head: res5 on each pooled RoI (its first block halves 14x14 to 7x7), then average pooling."""

    def __init__(self, *, res4: FeatureInfo, backbone_config: dict, num_blocks: int, frozen_bn: bool) -> None:
        super().__init__()
        self.res5 = make_stage(
            block=backbone_config["block"],
            num_blocks=num_blocks,
            in_channels=res4.channels,
            out_channels=res4.channels * 2,  # every stage doubles the width (Table 1)
            stride=2,
            residual=backbone_config["residual"],
            shortcut=backbone_config["shortcut"],
            stride_in_1x1=backbone_config["stride_in_1x1"],
            norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        )
        for module in self.res5.modules():
            if isinstance(module, nn.Conv2d):  # as the backbone's own stages (He et al. initialisation)
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = res4.channels * 2

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.res5(pooled).mean(dim=(2, 3))


def roi_heads_kwargs(options: DetectorOptions) -> dict:
    """The sampling, coding and inference settings RoIHeads takes, from our options."""
    return dict(
        fg_iou_thresh=options.box_fg_iou_thresh,
        bg_iou_thresh=options.box_bg_iou_thresh,
        batch_size_per_image=options.box_batch_size_per_image,
        positive_fraction=options.box_positive_fraction,
        bbox_reg_weights=tuple(options.bbox_reg_weights),
        score_thresh=options.box_score_thresh,
        nms_thresh=options.box_nms_thresh,
        detections_per_img=options.box_detections_per_img,
        unused_class_ids=options.unused_class_ids,
        global_context=options.global_context,
    )
