"""The evaluation report (detection/evaluation/confusion.py, report.py) on a hand-built dataset."""

import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from detection.data.annotations import ImageAnnotation
from detection.evaluation import evaluate_coco
from detection.evaluation.confusion import confusion_and_errors, match_by_iou
from detection.evaluation.report import write_evaluation_report


def _annotation(image_id, boxes, labels, ignore=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    ignore = np.zeros(len(boxes), dtype=bool) if ignore is None else np.asarray(ignore)
    return ImageAnnotation(image_id=image_id, file_name=f"{image_id}.png", height=64, width=64, boxes=boxes,
                           labels=np.asarray(labels, dtype=np.int64), ignore=ignore)  # fmt: skip


def _prediction(rows):
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return {"boxes": rows[:, :4], "scores": rows[:, 4], "labels": rows[:, 5].astype(np.int64)}


def _scene():
    dataset = SimpleNamespace(
        class_names=["cat", "dog"], category_ids=[1, 2],
        annotations=[
            _annotation(1, [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2]),
            _annotation(2, [[0, 0, 10, 10], [40, 40, 60, 60]], [2, 1], ignore=[False, True]),
        ],
    )  # fmt: skip
    predictions = {
        1: _prediction([
            [0, 0, 10, 10, 0.9, 1],  # cat on the cat
            [0, 0, 10, 11, 0.85, 1],  # its duplicate: a false positive
            [20, 20, 30, 30, 0.8, 1],  # cat on the dog
            [50, 50, 60, 60, 0.7, 2],  # dog on nothing
            [20, 20, 30, 30, 0.3, 2],  # below 0.5: not counted
        ]),
        2: _prediction([[40, 40, 60, 60, 0.9, 1]]),  # on the ignored box: left out; the dog is missed
    }  # fmt: skip
    return dataset, predictions


def test_confusion_counts_matches_wrong_classes_misses_and_false_positives():
    dataset, predictions = _scene()
    matrix, errors = confusion_and_errors(dataset, predictions, score_threshold=0.5)
    # rows: true cat, true dog, background; columns: predicted cat, dog, background
    assert matrix.counts.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert [(e.image_id, e.false_positives, e.missed) for e in errors] == [(1, 3, 1), (2, 0, 1)]
    lower = confusion_and_errors(dataset, predictions, score_threshold=0.2)[0]
    assert lower.counts[1].tolist() == [1, 0, 1]  # the 0.3 dog box now counts, but its object was taken


def test_matching_is_one_to_one_highest_iou_first():
    truth = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10]])
    detections = np.array([[4.0, 0, 14, 10], [0, 0, 10, 10]])
    # detection 1 fits truth 0 exactly; detection 0 then takes truth 1 (IoU 9/11) rather than truth 0 (6/14)
    assert sorted(match_by_iou(truth, detections, iou_threshold=0.5)) == [(0, 1), (1, 0)]
    assert match_by_iou(truth, np.zeros((0, 4)), iou_threshold=0.5) == []


def test_the_report_writes_tables_json_png_and_the_contact_sheet(tmp_path):
    dataset, predictions = _scene()
    coco = evaluate_coco(dataset, predictions, verbose=False)
    text = write_evaluation_report(
        tmp_path, dataset=dataset, predictions=predictions, coco=coco,
        load_image=lambda annotation: Image.new("RGB", (annotation.width, annotation.height), "grey"),
    )  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["confusion"]["counts"] == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert set(report["per_class_ap"]) == {"cat", "dog"} and set(report["ap_by_size"]) == {"small", "medium", "large"}
    assert [entry["image_id"] for entry in report["worst_images"]] == [1, 2]  # most errors first
    assert json.loads((tmp_path / "confusion.json").read_text())["labels"] == ["cat", "dog", "background"]
    assert Image.open(tmp_path / "confusion.png").format == "PNG"
    assert Image.open(tmp_path / "worst_images.jpg").format == "JPEG"
    assert "true background" in text and "AP@[.5:.95]" in text and "small" in text


def test_without_images_the_report_skips_only_the_contact_sheet(tmp_path):
    dataset, predictions = _scene()
    coco = evaluate_coco(dataset, predictions, verbose=False)
    write_evaluation_report(tmp_path, dataset=dataset, predictions=predictions, coco=coco, load_image=None)
    assert (tmp_path / "confusion.png").exists() and not (tmp_path / "worst_images.jpg").exists()
