"""COCO evaluation: ground truth scores 1.0, perturbed detections give exactly pycocotools' numbers, results
files carry the original category ids, and sharded results merge into the same evaluation."""

import contextlib
import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.data import CocoDetection, ImageAnnotation, VocDetection, generate_synthetic
from detection.data.synthetic_shapes import SHAPE_CLASSES
from detection.evaluation import (
    COCO_METRIC_NAMES,
    coco_from_annotations,
    evaluate_coco,
    merge_predictions,
    to_coco_results,
    write_json,
)


def _coco_mini_val(coco_mini: Path) -> CocoDetection:
    return CocoDetection(coco_mini / "annotations" / "instances_val2017.json", coco_mini / "val2017")


def _ground_truth_predictions(dataset) -> dict:
    predictions = {}
    for annotation in dataset.annotations:
        keep = ~annotation.ignore
        predictions[annotation.image_id] = {
            "boxes": torch.from_numpy(annotation.boxes[keep]),
            "scores": torch.linspace(1.0, 0.5, int(keep.sum())),
            "labels": torch.from_numpy(annotation.labels[keep]),
        }
    return predictions


def test_ground_truth_as_detections_scores_one_on_coco_mini(coco_mini, capsys):
    dataset = _coco_mini_val(coco_mini)
    metrics = evaluate_coco(dataset, _ground_truth_predictions(dataset))
    assert list(metrics.stats) == list(COCO_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics.stats[name] == 1.0, name
    present = {dataset.class_names[label - 1] for a in dataset.annotations for label in a.labels[~a.ignore]}
    # pycocotools divides by tp + fp + eps: a class with one box gets 1 - 2e-16
    assert {name for name, ap in metrics.per_class_ap.items() if ap == pytest.approx(1.0, abs=1e-12)} == present
    assert all(np.isnan(ap) for name, ap in metrics.per_class_ap.items() if name not in present)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 12 and printed[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=10, image_size=96, seed=1)


def test_ground_truth_as_detections_scores_one_on_coco_and_voc_layouts(shapes):
    coco = CocoDetection(shapes.coco_annotation_file("val"), shapes.coco_image_dir("val"))
    voc = VocDetection(shapes.voc_root, "val", class_names=SHAPE_CLASSES)
    from_json = evaluate_coco(coco, _ground_truth_predictions(coco), verbose=False)
    in_memory = evaluate_coco(voc, _ground_truth_predictions(voc), verbose=False)
    assert from_json.stats["AP"] == in_memory.stats["AP"] == 1.0
    assert from_json.stats == in_memory.stats  # the same boxes give the same 12 numbers either way


SPARSE_IDS = {1: 3, 2: 7, 3: 11, 4: 90}  # shape class -> a COCO-like category id with gaps


@pytest.fixture(scope="module")
def sparse_shapes(shapes, tmp_path_factory) -> CocoDetection:
    """The shapes' val split with category ids 3, 7, 11, 90 (listed out of order), as COCO's 1..90 with
    gaps: label k and category id differ, which 1..4 cannot show. The twin of the coco-mini checks."""
    data = json.loads(shapes.coco_annotation_file("val").read_text())
    data["categories"] = [{**category, "id": SPARSE_IDS[category["id"]]} for category in data["categories"][::-1]]
    for entry in data["annotations"]:
        entry["category_id"] = SPARSE_IDS[entry["category_id"]]
    path = tmp_path_factory.mktemp("sparse") / "instances_val.json"
    path.write_text(json.dumps(data))
    return CocoDetection(path, shapes.coco_image_dir("val"))


def test_results_files_carry_the_original_category_ids(sparse_shapes):
    dataset = sparse_shapes
    assert dataset.category_ids == [3, 7, 11, 90] and dataset.class_names == list(SHAPE_CLASSES)
    predictions = _ground_truth_predictions(dataset)
    written = to_coco_results(predictions, category_ids=dataset.category_ids)
    expected = [
        {"image_id": entry["image_id"], "category_id": entry["category_id"], "bbox": entry["bbox"]}
        for entry in dataset.coco.dataset["annotations"]
    ]
    key = lambda r: (r["image_id"], r["bbox"])  # noqa: E731
    assert len(expected) > 10 and {r["category_id"] for r in expected} == set(SPARSE_IDS.values())
    got = [{name: r[name] for name in ("image_id", "category_id", "bbox")} for r in written]
    assert sorted(got, key=key) == sorted(expected, key=key)  # integer boxes: exact in float32
    # scored against the file's own ids (pycocotools index) and against the in-memory ground truth
    from_file = evaluate_coco(dataset, predictions, verbose=False)
    in_memory = SimpleNamespace(
        annotations=dataset.annotations, class_names=dataset.class_names, category_ids=dataset.category_ids
    )
    rebuilt = coco_from_annotations(dataset.annotations, class_names=dataset.class_names,
                                    category_ids=dataset.category_ids)  # fmt: skip
    assert sorted(rebuilt.getCatIds()) == [3, 7, 11, 90]
    assert sorted(a["category_id"] for a in rebuilt.dataset["annotations"]) == sorted(
        e["category_id"] for e in dataset.coco.dataset["annotations"]
    )
    assert from_file.stats["AP"] == 1.0
    assert evaluate_coco(in_memory, predictions, verbose=False).stats == from_file.stats
    assert set(from_file.per_class_ap) == set(SHAPE_CLASSES)


def _perturbed_results(coco: COCO, seed: int = 0) -> list[dict]:
    """Seeded jitter of every gt box (crowds too), random scores, some dropped, some relabelled, some false
    positives. Coordinates are multiples of 1/64, so xywh <-> xyxy is exact in float64 and both paths
    below give pycocotools bit-identical input."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(coco.getCatIds())
    results = []
    for image_id in sorted(coco.getImgIds()):
        image = coco.imgs[image_id]
        for entry in coco.imgToAnns[image_id]:
            if rng.uniform() < 0.2:
                continue
            x, y, w, h = entry["bbox"]
            x, y = x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h
            w, h = w * np.exp(rng.normal(0, 0.15)), h * np.exp(rng.normal(0, 0.15))
            category = entry["category_id"] if rng.uniform() < 0.9 else int(rng.choice(category_ids))
            results.append(_result(image_id, category, (x, y, w, h), rng.uniform()))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, image["width"] - 20), rng.uniform(0, image["height"] - 20)
            size = (rng.uniform(5, image["width"] - x), rng.uniform(5, image["height"] - y))
            results.append(_result(image_id, int(rng.choice(category_ids)), (x, y, *size), rng.uniform() * 0.6))
    return results


def _result(image_id: int, category_id: int, box: tuple, score: float) -> dict:
    x, y, w, h = (round(float(value) * 64) / 64 for value in box)
    return {"image_id": image_id, "category_id": category_id, "bbox": [x, y, max(w, 1.0), max(h, 1.0)], "score": score}


def test_perturbed_detections_match_pycocotools_called_directly(coco_mini, tmp_path):
    dataset = _coco_mini_val(coco_mini)
    annotation_file = coco_mini / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        direct_gt = COCO(str(annotation_file))
        results = _perturbed_results(direct_gt)
        direct = COCOeval(direct_gt, direct_gt.loadRes(copy.deepcopy(results)), iouType="bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    label_of = {category_id: label for label, category_id in enumerate(dataset.category_ids, start=1)}
    predictions = {a.image_id: {"boxes": [], "scores": [], "labels": []} for a in dataset.annotations}
    for result in results:
        x, y, w, h = result["bbox"]
        prediction = predictions[result["image_id"]]
        prediction["boxes"].append([x, y, x + w, y + h])
        prediction["scores"].append(result["score"])
        prediction["labels"].append(label_of[result["category_id"]])
    ours = evaluate_coco(dataset, predictions, verbose=False)
    assert len(results) > 400 and 0.2 < ours.stats["AP50"] < 0.9  # a real mix of hits and misses
    assert list(ours.stats.values()) == direct.stats.tolist()  # exactly, all 12 numbers
    # the results file carries the original (sparse) category ids and the boxes in xywh
    written = to_coco_results(predictions, category_ids=dataset.category_ids)
    key = lambda r: (r["image_id"], r["score"])  # noqa: E731
    assert sorted(written, key=key) == sorted(results, key=key)
    path = write_json(tmp_path / "metrics" / "coco.json", ours.as_dict())
    assert json.loads(path.read_text())["stats"] == ours.stats


def test_no_detections_and_bad_predictions(shapes):
    voc = VocDetection(shapes.voc_root, "val", class_names=SHAPE_CLASSES)
    empty = {
        a.image_id: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
        for a in voc.annotations
    }
    assert evaluate_coco(voc, empty, verbose=False).stats["AP"] == 0.0
    missing = dict(list(empty.items())[1:])
    with pytest.raises(ValueError, match=r"no prediction for 1 images of the dataset, e.g. image ids \[0\]"):
        evaluate_coco(voc, missing, verbose=False)
    with pytest.raises(ValueError, match=r"image ids not among the evaluated images, e.g. \[99\]"):
        evaluate_coco(voc, {**empty, 99: empty[0]}, verbose=False)
    bad_label = {**empty, 3: {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])}}
    with pytest.raises(ValueError, match=r"image id 3: labels must be in 1..4"):
        evaluate_coco(voc, bad_label, verbose=False)
    assert evaluate_coco(voc, missing, image_ids=list(missing), verbose=False).stats["AP"] == 0.0


def test_difficult_boxes_are_ignored_in_the_coco_view():
    ground_truth = ImageAnnotation(
        image_id=1,
        file_name="x.jpg",
        height=100,
        width=100,
        boxes=np.array([[0, 0, 40, 40], [50, 50, 90, 90]], dtype=np.float32),
        labels=np.array([1, 1]),
        ignore=np.array([False, True]),
    )
    dataset = SimpleNamespace(annotations=[ground_truth], class_names=["thing"], category_ids=[1])
    assert coco_from_annotations([ground_truth], class_names=["thing"], category_ids=[1]).anns[2]["iscrowd"] == 1
    hit = {"boxes": [[0, 0, 40, 40]], "scores": [0.9], "labels": [1]}
    on_difficult = {"boxes": [[0, 0, 40, 40], [50, 50, 90, 90]], "scores": [0.5, 0.9], "labels": [1, 1]}
    assert evaluate_coco(dataset, {1: hit}, verbose=False).stats["AP"] == pytest.approx(1.0, abs=1e-12)
    on_difficult_ap = evaluate_coco(dataset, {1: on_difficult}, verbose=False).stats["AP"]
    assert on_difficult_ap == pytest.approx(1.0, abs=1e-12)  # the higher-scored detection is not a false positive
    false_positive = {"boxes": [[0, 0, 40, 40], [0, 50, 40, 90]], "scores": [0.5, 0.9], "labels": [1, 1]}
    assert evaluate_coco(dataset, {1: false_positive}, verbose=False).stats["AP"] < 0.6


def test_sharded_predictions_merge_to_the_same_evaluation(shapes):
    coco = CocoDetection(shapes.coco_annotation_file("val"), shapes.coco_image_dir("val"))
    rng = np.random.default_rng(0)
    whole = {}
    for image_id, prediction in _ground_truth_predictions(coco).items():
        boxes = prediction["boxes"] + torch.from_numpy(rng.normal(0, 3, size=prediction["boxes"].shape)).float()
        whole[image_id] = {**prediction, "boxes": boxes, "scores": torch.from_numpy(rng.uniform(size=len(boxes)))}
    ids = sorted(whole)
    # DistributedSampler with 3 ranks: strided shards, the last padded by repeating the first images
    padded = ids + ids[: -len(ids) % 3]
    shards = [{i: whole[i] for i in padded[rank::3]} for rank in range(3)]
    merged = merge_predictions(shards)
    assert list(merged) == ids and isinstance(merged[ids[0]]["boxes"], np.ndarray)
    assert evaluate_coco(coco, merged, verbose=False).stats == evaluate_coco(coco, whole, verbose=False).stats
