"""Box voting (Gidaris & Komodakis 2015; Detectron's TEST.BBOX_VOTE) and the merge it finishes.

Each box kept by NMS is replaced by the score-weighted mean of the candidate boxes of its class that
overlap it with IoU >= the voting threshold (the kept box itself among them); its score is unchanged
(Detectron's default scoring method "ID"). The ResNet paper's appendix applies it after box
refinement; the test-time ladder (refinement, augmentation, ensembles, tiles) merges with it too.
"""

import torch
from torchvision.ops import box_iou
from torchvision.ops import boxes as box_ops

# Detectron's TEST.BBOX_VOTE.VOTE_TH: candidates overlapping a kept box at least this much vote for it.
VOTE_IOU_THRESHOLD = 0.8


def vote_boxes(
    kept_boxes: torch.Tensor,
    kept_labels: torch.Tensor,
    candidate_boxes: torch.Tensor,
    candidate_scores: torch.Tensor,
    candidate_labels: torch.Tensor,
    *,
    iou_threshold: float = VOTE_IOU_THRESHOLD,
) -> torch.Tensor:
    """Each kept box [N, 4] (x1, y1, x2, y2) replaced by the mean of the same-label candidates [M, 4] with
    IoU >= iou_threshold, weighted by their scores. A kept box with no such candidate (or only zero
    scores) stays as it is."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"voting iou_threshold must lie in [0, 1], got {iou_threshold}")
    if len(kept_boxes) == 0 or len(candidate_boxes) == 0:
        return kept_boxes.clone()
    dtype = kept_boxes.dtype
    kept, candidates = kept_boxes.double(), candidate_boxes.double()
    overlaps = box_iou(kept, candidates)
    voters = (overlaps >= iou_threshold) & (kept_labels[:, None] == candidate_labels[None, :])
    weights = voters * candidate_scores.double()[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = weights @ candidates / total.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(total > 0, voted, kept).to(dtype)


def merge_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    *,
    nms_threshold: float,
    vote_threshold: float | None,
    max_detections: int,
) -> dict[str, torch.Tensor]:
    """Per-label NMS over pooled candidates, then box voting among all of them (skipped when
    vote_threshold is None), highest score first, at most max_detections."""
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")
    keep = box_ops.batched_nms(boxes.float(), scores.float(), labels, nms_threshold)[:max_detections]
    kept_boxes = boxes[keep]
    if vote_threshold is not None:
        kept_boxes = vote_boxes(kept_boxes, labels[keep], boxes, scores, labels, iou_threshold=vote_threshold)
    return {"boxes": kept_boxes, "scores": scores[keep], "labels": labels[keep]}
