"""Test-time augmentation (detection/test_time.py): mirrored boxes come back, variants merge by NMS + voting."""

import pytest
import torch
from helpers import TINY, RectangleFinder, assert_detections_valid, synthetic_batch

from detection import build_detector
from detection.test_time import TestTimeOptions, detect_augmented, detect_with_options, mirror_boxes


def _image() -> torch.Tensor:
    image = torch.zeros(3, 40, 100)
    image[0, 5:25, 10:30] = 1.0  # left of centre: a mirrored box not mapped back would land at x 70..90
    return image


def test_mirror_boxes_maps_a_box_back_and_is_its_own_inverse():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0]])
    assert mirror_boxes(boxes, width=100).tolist() == [[70.0, 5.0, 90.0, 25.0]]
    assert torch.equal(mirror_boxes(mirror_boxes(boxes, width=100), width=100), boxes)


def test_flip_and_sizes_merge_into_the_score_weighted_box():
    model = RectangleFinder()
    merged = detect_augmented(model, [_image()], flip=True, test_sizes=(1, 2), vote_threshold=0.8)
    assert [call["test_size"] for call in model.calls] == [1, 1, 2, 2]
    # four variants: two at y 5..25 (0.9 each, one found mirrored), two at 7..27 (0.6): IoU 18/22 >= 0.8
    y1 = (2 * 0.9 * 5 + 2 * 0.6 * 7) / 3.0
    assert len(merged[0]["boxes"]) == 1
    assert merged[0]["boxes"][0].tolist() == pytest.approx([10.0, y1, 30.0, y1 + 20], abs=1e-5)
    assert merged[0]["scores"].tolist() == pytest.approx([0.9])


def test_without_voting_the_best_variant_is_kept_as_it_is():
    merged = detect_augmented(RectangleFinder(), [_image()], flip=True, test_sizes=(2, 1), vote_threshold=None)
    assert merged[0]["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0]]


def test_options_reject_nonsense_and_default_to_one_plain_pass():
    with pytest.raises(ValueError, match="test_sizes"):
        TestTimeOptions(test_sizes=(0,))
    with pytest.raises(ValueError, match="repeats"):
        TestTimeOptions(test_sizes=(400, 400))
    with pytest.raises(ValueError, match="vote_threshold"):
        TestTimeOptions(vote_threshold=2.0)
    assert TestTimeOptions(test_sizes=[400, 600]).test_sizes == (400, 600)  # as a JSON round trip gives them
    model = RectangleFinder()
    detections = detect_with_options(model, [_image()], TestTimeOptions())
    assert len(model.calls) == 1 and model.calls[0]["refine_boxes"] is False
    assert detections[0]["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0]]


def test_a_real_detector_at_its_own_test_size_gives_its_plain_answer_and_augments():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, box_score_thresh=0.0, **TINY).eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        _, plain = model(images)
        _, same_size = model(images, test_size=TINY["min_size"])
        augmented = detect_with_options(model, images, TestTimeOptions(test_flip=True, test_sizes=(48, 80)))
    for a, b in zip(plain, same_size):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert_detections_valid(augmented, images, num_classes=2)
    with pytest.raises(ValueError, match="test_size"):
        model(images, test_size=0)
