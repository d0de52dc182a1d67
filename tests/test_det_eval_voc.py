"""VOC AP: hand-worked 11-point and area values, difficult objects ignored, per class and mean, both methods."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from detection.data import ImageAnnotation
from detection.evaluation import VOC_AP_METHODS, evaluate_voc, voc_ap, write_json


def _image(image_id: int, boxes: list, labels: list, difficult: list) -> ImageAnnotation:
    return ImageAnnotation(
        image_id=image_id,
        file_name=f"{image_id}.jpg",
        height=200,
        width=200,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        ignore=np.array(difficult, dtype=bool),
    )


A, B, C, D = [0, 0, 20, 20], [50, 50, 70, 70], [100, 100, 120, 120], [150, 150, 170, 170]
DATASET = SimpleNamespace(
    class_names=["cat", "dog", "bird"],
    category_ids=[1, 2, 3],
    annotations=[
        _image(0, [A, B, C, D], [1, 1, 1, 1], [False, False, False, True]),  # cats A B C, D difficult
        _image(1, [[0, 0, 10, 10]], [2], [False]),  # one dog; no bird anywhere
    ],
)


def _predictions(detections: dict[int, list[tuple]]) -> dict:
    """detections: image id -> [(box, score, label)]."""
    return {
        image_id: {
            "boxes": np.array([box for box, _, _ in entries], dtype=np.float64).reshape(-1, 4),
            "scores": np.array([score for _, score, _ in entries]),
            "labels": np.array([label for _, _, label in entries], dtype=np.int64),
        }
        for image_id, entries in detections.items()
    }


# Cats, by score: A hit, a miss, D (difficult: neither), B hit, A again (duplicate), C never found. 3 positives.
#   counted detections  1      2      (D)   3      4
#   recall              1/3    1/3          2/3    2/3
#   precision           1      1/2          2/3    1/2
# 11-point: best precision at recall >= t is 1 for t = 0, .1, .2, .3 (4 levels), 2/3 for t = .4, .5, .6
#   (3 levels), 0 for t = .7 ... 1 (4 levels): AP = (4 * 1 + 3 * 2/3) / 11 = 6/11.
# area: envelope 1 up to recall 1/3, 2/3 up to 2/3, 0 after: AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
# Dogs, by score: a box of IoU 0.5 exactly (the devkit needs > 0.5: a miss), then the dog. 1 positive.
#   recall 0, 1; precision 0, 1/2. 11-point: 1/2 at every level; area: 1 * 1/2. Both 1/2.
# Birds: no ground truth, one detection: AP nan, left out of the mean.
DETECTIONS = {
    0: [
        (A, 0.95, 1),
        ([30, 30, 45, 45], 0.9, 1),
        (D, 0.85, 1),
        ([50, 51, 70, 71], 0.8, 1),
        ([1, 0, 21, 20], 0.7, 1),
        (C, 0.6, 3),
    ],
    1: [([0, 0, 10, 5], 0.9, 2), ([0, 0, 10, 10], 0.4, 2)],
}


def test_hand_worked_11_point_and_area_ap():
    metrics = evaluate_voc(DATASET, _predictions(DETECTIONS))
    assert list(metrics.mean_ap) == list(VOC_AP_METHODS)  # both by default
    assert metrics.per_class_ap["11point"]["cat"] == pytest.approx(6 / 11, abs=1e-12)
    assert metrics.per_class_ap["area"]["cat"] == pytest.approx(5 / 9, abs=1e-12)
    assert metrics.per_class_ap["11point"]["dog"] == pytest.approx(0.5, abs=1e-12)
    assert metrics.per_class_ap["area"]["dog"] == pytest.approx(0.5, abs=1e-12)
    assert np.isnan(metrics.per_class_ap["11point"]["bird"]) and np.isnan(metrics.per_class_ap["area"]["bird"])
    assert metrics.mean_ap["11point"] == pytest.approx((6 / 11 + 0.5) / 2, abs=1e-12)
    assert metrics.mean_ap["area"] == pytest.approx((5 / 9 + 0.5) / 2, abs=1e-12)
    np.testing.assert_allclose(metrics.recall["cat"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(metrics.precision["cat"], [1, 1 / 2, 2 / 3, 1 / 2])
    only_07 = evaluate_voc(DATASET, _predictions(DETECTIONS), methods=["11point"])
    assert list(only_07.mean_ap) == ["11point"] and only_07.mean_ap["11point"] == metrics.mean_ap["11point"]
    table = metrics.format_table()
    assert "AP 11point" in table and "AP area" in table and f"{5 / 9:.4f}" in table


def test_recall_on_an_exact_tenth_counts_at_that_level():
    # 10 positives, 3 hits: recall 0.1, 0.2, 0.3 at precision 1. Levels 0, .1, .2, .3 reach precision 1:
    # 11-point AP = 4/11 (the devkit's arange(0, 1.1, 0.1) holds 0.30000000000000004 and gives 3/11).
    recall, precision = np.array([1, 2, 3]) / 10, np.ones(3)
    assert voc_ap(recall, precision, method="11point") == pytest.approx(4 / 11, abs=1e-12)
    assert voc_ap(recall, precision, method="area") == pytest.approx(0.3, abs=1e-12)
    with pytest.raises(ValueError, match="unknown VOC AP method 'coco'"):
        voc_ap(recall, precision, method="coco")


def test_ground_truth_gives_one_and_difficult_never_counts():
    truth = {
        0: [(A, 1.0, 1), (B, 1.0, 1), (C, 1.0, 1)],
        1: [([0, 0, 10, 10], 1.0, 2)],
    }
    perfect = evaluate_voc(DATASET, _predictions(truth))
    assert perfect.mean_ap == {"11point": 1.0, "area": 1.0}
    # finding the difficult cat, even first, changes nothing; missing it costs nothing either
    with_difficult = {**truth, 0: [(D, 1.0, 1), *truth[0]]}
    for method, per_class in evaluate_voc(DATASET, _predictions(with_difficult)).per_class_ap.items():
        assert per_class["cat"] == per_class["dog"] == 1.0 and np.isnan(per_class["bird"]), method
    with pytest.raises(ValueError, match="unknown VOC AP method"):
        evaluate_voc(DATASET, _predictions(truth), methods=["11point", "07"])
    with pytest.raises(ValueError, match=r"no prediction for 1 images"):
        evaluate_voc(DATASET, _predictions({0: truth[0]}))


def test_duplicate_on_a_taken_box_is_a_false_positive_and_json(tmp_path):
    # the best-overlapping gt being taken makes a false positive, even if another gt also overlaps > 0.5
    near = SimpleNamespace(
        class_names=["cat"],
        category_ids=[1],
        annotations=[_image(0, [[0, 0, 20, 20], [2, 0, 22, 20]], [1, 1], [False, False])],
    )
    detections = {0: [([0, 0, 20, 20], 0.9, 1), ([0, 0, 20, 20], 0.8, 1)]}
    metrics = evaluate_voc(near, _predictions(detections))
    np.testing.assert_allclose(metrics.precision["cat"], [1, 1 / 2])
    assert metrics.per_class_ap["area"]["cat"] == pytest.approx(0.5)
    stored = write_json(tmp_path / "voc.json", evaluate_voc(DATASET, _predictions(DETECTIONS)).as_dict())
    assert json.loads(stored.read_text())["per_class_ap"]["area"]["bird"] is None  # nan is not JSON: null


def test_overlap_of_wide_boxes_and_of_boxes_apart_in_both_directions():
    """IoU on non-square boxes (x and y extents differ) and on a box that misses the object diagonally, where
    an unclipped overlap would multiply two negative extents into a positive area."""
    wide = SimpleNamespace(
        class_names=["car"], category_ids=[1], annotations=[_image(0, [[0, 0, 100, 20]], [1], [False])]
    )
    # IoU 60/100 with the car: a hit; then a box far off diagonally: a false positive
    detections = _predictions({0: [([0, 0, 100, 12], 0.9, 1), ([150, 40, 190, 80], 0.8, 1)]})
    curve = evaluate_voc(wide, detections)
    np.testing.assert_array_equal(curve.precision["car"], [1.0, 0.5])
    # IoU 48/100 (< 0.5): a miss, wherever box[2] and box[3] would be swapped it would be a hit
    missed = evaluate_voc(wide, _predictions({0: [([0, 0, 100, 20 * 0.48], 0.9, 1)]}))
    assert missed.mean_ap == {"11point": 0.0, "area": 0.0}
    # off diagonally, or touching the object at its right or bottom edge only: no overlap, never a hit
    apart = [([150, 40, 190, 80], 0.9, 1), ([100, 0, 140, 20], 0.8, 1), ([0, 20, 100, 40], 0.7, 1)]
    assert evaluate_voc(wide, _predictions({0: apart}), iou_threshold=0.0).mean_ap == {"11point": 0.0, "area": 0.0}
