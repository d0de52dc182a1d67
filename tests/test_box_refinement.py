"""Box refinement (RoIHeads refine=True) on a hand-built head: the second pass pools from the regressed boxes."""

import math

import pytest
import torch
from helpers import TINY, assert_detections_valid, synthetic_batch
from torch import nn

from detection import build_detector
from detection.roi_heads import RoIHeads

IMAGE_SHAPES = [(100, 100)]


class RecordingPooler(nn.Module):
    """Records the boxes it is asked to pool; the 'feature' of a box is its x1 (so scores depend on where it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[torch.Tensor]] = []

    def forward(self, features, proposals, image_shapes):
        self.calls.append([boxes.clone() for boxes in proposals])
        return torch.cat(proposals)[:, :1]


class Predictor(nn.Module):
    """Background logit 0, class-1 logit x1 / 5; every box moved right by half its width (dx = 0.5)."""

    def forward(self, x):
        logits = torch.cat([torch.zeros_like(x), x / 5], dim=1)
        deltas = torch.tensor([[0.5, 0.0, 0.0, 0.0] * 2]).expand(len(x), -1)
        return logits, deltas


def _heads() -> tuple[RoIHeads, RecordingPooler]:
    pooler = RecordingPooler()
    heads = RoIHeads(
        box_roi_pool=pooler, box_head=nn.Identity(), box_predictor=Predictor(), num_classes=1, unused_class_ids=(),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=16, positive_fraction=0.25,
        bbox_reg_weights=(1.0, 1.0, 1.0, 1.0), score_thresh=0.05, nms_thresh=0.5, detections_per_img=10,
    )  # fmt: skip
    return heads.eval(), pooler


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_refinement_pools_again_from_the_regressed_boxes_and_keeps_the_better_of_the_union():
    heads, pooler = _heads()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    baseline, _ = heads({}, proposals, IMAGE_SHAPES)
    assert len(pooler.calls) == 1
    assert baseline[0]["boxes"].tolist() == [[5.0, 0.0, 15.0, 10.0]]  # the regressed box, score 0.5
    assert baseline[0]["scores"].tolist() == pytest.approx([0.5])

    pooler.calls.clear()
    refined, _ = heads({}, proposals, IMAGE_SHAPES, refine=True)
    assert len(pooler.calls) == 2
    assert pooler.calls[1][0].tolist() == [[5.0, 0.0, 15.0, 10.0]]  # re-pooled from the regressed box
    # second pass: x1 = 5 scores sigmoid(1) and regresses to [10, 0, 20, 10]; the union's two boxes overlap
    # at IoU 50/150 > 0.3, so NMS keeps the better, and no other box is at IoU >= 0.8 to vote
    assert refined[0]["boxes"].tolist() == [[10.0, 0.0, 20.0, 10.0]]
    assert refined[0]["scores"].tolist() == pytest.approx([_sigmoid(1.0)])
    assert refined[0]["labels"].tolist() == [1]


def test_refinement_votes_over_both_passes():
    heads, _ = _heads()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    refined, _ = heads({}, proposals, IMAGE_SHAPES, refine=True, vote_thresh=0.3)
    first, second = 0.5, _sigmoid(1.0)
    x1 = (first * 5 + second * 10) / (first + second)
    assert refined[0]["boxes"][0].tolist() == pytest.approx([x1, 0.0, x1 + 10, 10.0], abs=1e-5)


def test_with_a_looser_nms_both_passes_survive_the_union():
    heads, _ = _heads()
    refined, _ = heads({}, [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], IMAGE_SHAPES, refine=True, nms_thresh=0.5)
    assert refined[0]["boxes"].tolist() == [[10.0, 0.0, 20.0, 10.0], [5.0, 0.0, 15.0, 10.0]]


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_a_detector_refines_and_votes_when_asked_and_not_by_default(head):
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head=head, num_classes=2, box_score_thresh=0.0, **TINY).eval()
    pooled = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda module, args, output: pooled.append(len(output)))
    images, _ = synthetic_batch()
    with torch.no_grad():
        _, baseline = model(images)
        assert len(pooled) == 1
        _, refined = model(images, refine_boxes=True)
        assert len(pooled) == 3 and pooled[2] == pooled[1]  # one more pass, one RoI per proposal
        _, voted = model(images, vote_threshold=0.5)
    assert_detections_valid(refined, images, num_classes=2)
    assert_detections_valid(voted, images, num_classes=2)
    # voting moves boxes but keeps NMS's choice and scores
    for plain, moved in zip(baseline, voted):
        assert torch.equal(plain["scores"], moved["scores"]) and torch.equal(plain["labels"], moved["labels"])
    assert any(not torch.equal(plain["boxes"], moved["boxes"]) for plain, moved in zip(baseline, voted))
