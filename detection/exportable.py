"""The detector's inference pass as one batched graph with fixed-shape outputs, for ONNX export.

`Detector.forward` loops over the images of a batch (proposal filtering, postprocessing), which an
exported graph cannot do for a batch size it does not know. `ExportableDetector` runs the same
stages on the same submodules, batched: every per-image, per-level (RPN) and per-image, per-class
(detections) NMS becomes one group of `grouped_nms`, which ONNX's NonMaxSuppression runs as its
batch dimension. No boxes of different groups are ever offset into one NMS (torchvision's coordinate
trick), so each group's IoUs are computed from its own coordinates as the PyTorch model computes them.

Inputs (what `detection.predictor.Predictor.batch` builds from its prepared images):
    images          float32 [N, 3, H, W]  resized, normalised, zero-padded right/bottom (H, W multiples of 32)
    image_sizes     int64   [N, 2]        (height, width) of each resized image inside the padded batch
    original_sizes  int64   [N, 2]        (height, width) of each original image
Outputs, D = box_detections_per_img, highest score first, rows past num_detections are zeros:
    boxes [N, D, 4] float32 (x1, y1, x2, y2, original pixels), scores [N, D] float32,
    labels [N, D] int64 (1..K, 0 = padding), num_detections [N] int64
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import nms, roi_align

from detection.detector import Detector
from detection.poolers import MultiLevelRoIAlign, SingleLevelRoIAlign

# Scores of candidates that may not enter NMS (padding, too small, below the score threshold) are set
# to this; NMS drops every score <= MASKED_THRESHOLD. Real scores are probabilities (>= 0).
MASKED_SCORE = -1.0
MASKED_THRESHOLD = -0.5


@torch.library.custom_op("resdet::grouped_nms", mutates_args=())
def grouped_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """NMS in each group independently: boxes [G, M, 4], scores [G, M] -> kept [S, 2] (group, index).

    Only scores > score_threshold take part. In ONNX this is one NonMaxSuppression with G as its batch."""
    kept = []
    for group in range(boxes.shape[0]):
        candidates = torch.where(scores[group] > score_threshold)[0]
        keep = candidates[nms(boxes[group, candidates], scores[group, candidates], iou_threshold)]
        kept.append(torch.stack([torch.full_like(keep, group), keep], dim=1))
    return torch.cat(kept) if kept else boxes.new_zeros((0, 2), dtype=torch.int64)


@grouped_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float) -> torch.Tensor:
    num_kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num_kept, 2), dtype=torch.int64)


def kept_mask(scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[G, M] bool: True where grouped_nms kept the candidate."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.index_put((kept[:, 0], kept[:, 1]), torch.ones_like(kept[:, 0], dtype=torch.bool))


def clip_to_sizes(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """clip_boxes_to_image with per-row sizes: boxes [..., 4], sizes [..., 2] (height, width), broadcast."""
    height, width = sizes[..., 0:1].to(boxes.dtype), sizes[..., 1:2].to(boxes.dtype)
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), width)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def not_small(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """remove_small_boxes as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


class ExportableDetector(nn.Module):
    """Detector inference with per-image loops replaced by grouped NMS; see the module docstring."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        if detector.roi_heads.global_context:
            raise ValueError(
                "exporting a detector with global context is not supported yet (its graph has no global RoI)"
            )
        self.features = detector.features
        self.rpn = detector.rpn
        self.roi_heads = detector.roi_heads
        self.score_thresh = float(detector.roi_heads.score_thresh)
        self.detections_per_img = int(detector.roi_heads.detections_per_img)

    def forward(
        self, images: torch.Tensor, image_sizes: torch.Tensor, original_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.features(images)
        proposals, proposal_valid = self.propose(images, features, image_sizes)
        boxes, scores, labels = self.detect(features, proposals, proposal_valid, image_sizes)
        valid = scores > MASKED_SCORE
        ratios = (original_sizes.to(torch.float32) / image_sizes.to(torch.float32)).flip(-1).repeat(1, 2)
        boxes = clip_to_sizes(boxes * ratios[:, None, :], original_sizes[:, None, :])
        boxes = torch.where(valid[..., None], boxes, 0.0)
        return boxes, torch.where(valid, scores, 0.0), torch.where(valid, labels, 0), valid.sum(dim=1)

    def propose(
        self, images: torch.Tensor, features: dict[str, torch.Tensor], image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RegionProposalNetwork.filter_proposals for the whole batch: [N, P, 4] proposals and a valid mask."""
        rpn = self.rpn
        feature_maps = list(features.values())
        objectness, deltas = rpn.head(feature_maps)
        num_images = images.shape[0]
        # Anchors depend only on the padded batch shape: the same for every image.
        anchors = rpn.anchor_generator(ImageList(images, [(0, 0)]), feature_maps)[0]
        per_level = [level[0].numel() for level in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        boxes = rpn.box_coder.decode_single(deltas.detach(), anchors.repeat(num_images, 1)).view(num_images, -1, 4)
        objectness = objectness.view(num_images, -1)

        # Per image and level: the pre_nms_top_n best anchors, padded to pre_nms_top_n so the levels stack.
        top_n = rpn.pre_nms_top_n()
        level_boxes, level_scores = [], []
        for level_objectness, level_box in zip(objectness.split(per_level, dim=1), boxes.split(per_level, dim=1)):
            k = torch.sym_min(top_n, level_objectness.shape[1])
            logits, index = level_objectness.topk(k, dim=1)
            level_box = clip_to_sizes(level_box.gather(1, index[..., None].expand(-1, -1, 4)), image_sizes[:, None, :])
            prob = torch.sigmoid(logits)
            prob = torch.where(not_small(level_box, rpn.min_size) & (prob >= rpn.score_thresh), prob, MASKED_SCORE)
            level_boxes.append(F.pad(level_box, (0, 0, 0, top_n - k)))
            level_scores.append(F.pad(prob, (0, top_n - k), value=MASKED_SCORE))
        boxes = torch.stack(level_boxes, dim=1)  # [N, L, top_n, 4]
        scores = torch.stack(level_scores, dim=1)
        num_levels = boxes.shape[1]
        kept = grouped_nms(boxes.flatten(0, 1), scores.flatten(0, 1), float(rpn.nms_thresh), MASKED_THRESHOLD)
        scores = torch.where(kept_mask(scores.flatten(0, 1), kept), scores.flatten(0, 1), MASKED_SCORE)
        scores = scores.view(num_images, num_levels * top_n)
        best, index = scores.topk(min(rpn.post_nms_top_n(), num_levels * top_n), dim=1)
        proposals = boxes.view(num_images, num_levels * top_n, 4).gather(1, index[..., None].expand(-1, -1, 4))
        return proposals, best > MASKED_SCORE

    def pool(self, features: dict[str, torch.Tensor], proposals: torch.Tensor) -> torch.Tensor:
        """The RoI pooler's RoIAlign on [N, P, 4] proposals (plain roi_align: the threaded split is eager-only)."""
        num_images, num_proposals = proposals.shape[:2]
        image_index = torch.arange(num_images, device=proposals.device, dtype=proposals.dtype)
        rois = torch.cat([image_index.view(-1, 1, 1).expand(-1, num_proposals, 1), proposals], dim=2).flatten(0, 1)
        pooler = self.roi_heads.box_roi_pool
        if isinstance(pooler, SingleLevelRoIAlign):
            return roi_align(
                features[pooler.feature_name], rois, output_size=pooler.output_size,
                spatial_scale=pooler.spatial_scale, sampling_ratio=0, aligned=True,
            )  # fmt: skip
        if not isinstance(pooler, MultiLevelRoIAlign):
            raise TypeError(f"cannot export a detector pooling with {type(pooler).__name__}")
        levels = pooler.map_levels([rois[:, 1:]])
        maps = [features[name] for name in pooler.featmap_names]
        result = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], pooler.output_size, pooler.output_size))
        for level, (feature, scale) in enumerate(zip(maps, pooler.scales)):
            # Each RoI is pooled on its own level only (NonZero + Gather + ScatterND in ONNX): pooling
            # every RoI on every level and selecting afterwards made RoIAlign most of ONNX Runtime's time.
            index = torch.nonzero(levels == level).squeeze(1)
            pooled = roi_align(
                feature, rois[index], output_size=pooler.output_size, spatial_scale=scale,
                sampling_ratio=pooler.sampling_ratio, aligned=False,
            )  # fmt: skip
            result = result.index_put((index,), pooled)
        return result

    def detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: torch.Tensor,
        proposal_valid: torch.Tensor,
        image_sizes: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoIHeads.detect for the whole batch: [N, D] detections in resized-image pixels."""
        heads = self.roi_heads
        num_images, num_proposals = proposals.shape[:2]
        class_logits, box_regression = heads.box_predictor(heads.box_head(self.pool(features, proposals)))
        pred_boxes = heads.box_coder.decode(box_regression.float(), [proposals.flatten(0, 1)])
        pred_scores = F.softmax(class_logits.float(), -1)
        foreground = heads.label_to_column[1:]
        num_classes = foreground.shape[0]
        boxes = pred_boxes[:, foreground].view(num_images, num_proposals, num_classes, 4)
        boxes = clip_to_sizes(boxes, image_sizes[:, None, None, :])
        scores = pred_scores[:, foreground].view(num_images, num_proposals, num_classes)
        valid = proposal_valid[..., None] & (scores > self.score_thresh) & not_small(boxes, 1e-2)
        scores = torch.where(valid, scores, MASKED_SCORE)
        # Groups are (image, class): [N * K, P].
        boxes = boxes.permute(0, 2, 1, 3).reshape(num_images * num_classes, num_proposals, 4)
        scores = scores.permute(0, 2, 1).reshape(num_images * num_classes, num_proposals)
        kept = grouped_nms(boxes, scores, float(heads.nms_thresh), MASKED_THRESHOLD)
        scores = torch.where(kept_mask(scores, kept), scores, MASKED_SCORE).reshape(num_images, -1)
        best, index = scores.topk(min(self.detections_per_img, num_classes * num_proposals), dim=1)
        boxes = boxes.reshape(num_images, -1, 4).gather(1, index[..., None].expand(-1, -1, 4))
        return boxes, best, index // num_proposals + 1  # column k of the foreground is label k + 1
