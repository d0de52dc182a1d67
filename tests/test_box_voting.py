"""Box voting (detection/box_voting.py) on hand-built boxes: the score-weighted mean, exactly."""

import pytest
import torch

from detection.box_voting import merge_detections, vote_boxes


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_voting_is_the_score_weighted_mean_of_same_class_boxes_above_the_threshold():
    kept = _t([[0, 0, 10, 10]])
    candidates = _t([
        [0, 0, 10, 10],   # the kept box itself, score 0.9
        [1, 0, 11, 10],   # IoU 90/110 = 0.818: votes
        [0, 0, 10, 12],   # IoU 100/120 = 0.833: votes
        [5, 5, 15, 15],   # IoU 25/175: does not
        [0, 0, 10, 11],   # IoU 0.91 but another class: does not
    ])  # fmt: skip
    scores = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.95])
    labels = torch.tensor([1, 1, 1, 1, 2])
    voted = vote_boxes(kept, torch.tensor([1]), candidates, scores, labels, iou_threshold=0.8)
    total = 0.9 + 0.6 + 0.3
    expected = [
        (0.6 * 1) / total,
        0.0,
        (0.9 * 10 + 0.6 * 11 + 0.3 * 10) / total,
        (0.9 * 10 + 0.6 * 10 + 0.3 * 12) / total,
    ]
    assert voted[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_a_higher_threshold_leaves_out_the_weaker_overlaps():
    kept = _t([[0, 0, 10, 10]])
    candidates = _t([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 12]])
    scores = torch.tensor([0.9, 0.6, 0.3])
    labels = torch.tensor([1, 1, 1])
    voted = vote_boxes(kept, torch.tensor([1]), candidates, scores, labels, iou_threshold=0.825)
    # only the box at IoU 0.833 joins the kept one
    assert voted[0].tolist() == pytest.approx([0, 0, 10, (0.9 * 10 + 0.3 * 12) / 1.2], abs=1e-6)


def test_a_kept_box_without_voters_stays_and_empty_inputs_pass_through():
    kept = _t([[0, 0, 10, 10]])
    far = _t([[50, 50, 60, 60]])
    assert vote_boxes(kept, torch.tensor([1]), far, torch.tensor([0.9]), torch.tensor([1])).tolist() == kept.tolist()
    empty = torch.zeros((0, 4))
    assert vote_boxes(empty, torch.zeros(0, dtype=torch.int64), far, torch.ones(1), torch.ones(1)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vote_boxes(kept, torch.tensor([1]), far, torch.ones(1), torch.ones(1), iou_threshold=1.5)


def test_merge_keeps_nms_survivors_and_moves_them_by_voting():
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.3, 0.5])
    labels = torch.tensor([1, 1, 1])
    plain = merge_detections(boxes, scores, labels, nms_threshold=0.5, vote_threshold=None, max_detections=10)
    assert plain["boxes"].tolist() == [[0, 0, 10, 10], [20, 20, 30, 30]]
    voted = merge_detections(boxes, scores, labels, nms_threshold=0.5, vote_threshold=0.8, max_detections=1)
    assert voted["scores"].tolist() == pytest.approx([0.9])
    assert voted["boxes"][0].tolist() == pytest.approx([0, 0, 10, (0.9 * 10 + 0.3 * 12) / 1.2], abs=1e-6)
