"""The synthetic shapes generator: deterministic, both layouts agree, clean objects, the documented command."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detection.data import SHAPE_CLASSES, CocoDetection, VocDetection, generate_synthetic
from detection.data.synthetic import main

REPO = Path(__file__).resolve().parents[1]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shapes"), num_train=12, num_val=4, image_size=96, seed=5)


def test_same_seed_same_bytes_other_seed_other_images(shapes, tmp_path):
    again = generate_synthetic(tmp_path / "again", num_train=12, num_val=4, image_size=96, seed=5)
    assert _digests(again.root) == _digests(shapes.root)
    other = generate_synthetic(tmp_path / "other", num_train=12, num_val=4, image_size=96, seed=6)
    first, second = _digests(other.root), _digests(shapes.root)
    assert first.keys() == second.keys()
    assert sum(first[name] != second[name] for name in first if name.endswith(".jpg")) == 2 * 16  # every image
    # each image has its own seed: more images leave the first ones as they were
    longer = generate_synthetic(tmp_path / "longer", num_train=13, num_val=4, image_size=96, seed=5)
    image = "voc/JPEGImages/train_000011.jpg"
    assert _digests(longer.root)[image] == second[image]


def test_layouts_are_real_coco_and_voc_and_agree(shapes):
    voc = shapes.voc_root
    assert (voc / "ImageSets" / "Main" / "train.txt").read_text().split() == [f"train_{i:06d}" for i in range(12)]
    assert (voc / "classes.txt").read_text().split() == list(SHAPE_CLASSES)
    assert len(list((voc / "Annotations").glob("*.xml"))) == len(list((voc / "JPEGImages").glob("*.jpg"))) == 16
    for split, count in (("train", 12), ("val", 4)):
        data = json.loads(shapes.coco_annotation_file(split).read_text())
        assert len(data["images"]) == count and [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
        coco = CocoDetection(shapes.coco_annotation_file(split), shapes.coco_image_dir(split))
        pascal = VocDetection(voc, split, class_names=SHAPE_CLASSES)
        assert coco.num_degenerate_boxes == pascal.num_degenerate_boxes == 0
        for from_coco, from_voc in zip(coco.annotations, pascal.annotations, strict=True):
            assert from_coco.file_name == from_voc.file_name
            np.testing.assert_array_equal(from_coco.boxes, from_voc.boxes)
            np.testing.assert_array_equal(from_coco.labels, from_voc.labels)
            assert not from_coco.ignore.any()
        image, target = coco[0]
        assert image.shape == (3, 96, 96) and len(target["boxes"]) >= 1


def test_objects_are_tight_separate_and_of_every_class(shapes):
    dataset = CocoDetection(shapes.coco_annotation_file("train"), shapes.coco_image_dir("train"))
    labels = np.concatenate([a.labels for a in dataset.annotations])
    assert set(labels.tolist()) == set(range(1, len(SHAPE_CLASSES) + 1))
    for annotation in dataset.annotations:
        boxes = annotation.boxes
        assert 1 <= len(boxes) <= 4
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert sides.min() >= 0.15 * 96 * 0.5  # a rotated triangle's box is at least half its region
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # no overlap, no occlusion
        # each side of the box touches the shape (tight) and the ring just outside is background only
        pixels = np.asarray(Image.open(dataset.image_dir / annotation.file_name), dtype=np.float32)
        for x1, y1, x2, y2 in boxes.astype(int):
            top, left = max(y1 - 3, 0), max(x1 - 3, 0)
            window = pixels[top : y2 + 3, left : x2 + 3]
            ring = np.ones(window.shape[:2], dtype=bool)
            ring[y1 - top : y2 - top, x1 - left : x2 - left] = False
            contrast = np.abs(window - np.median(window[ring], axis=0)).max(axis=-1)
            inside = contrast[y1 - top : y2 - top, x1 - left : x2 - left]
            sides = [inside[0].max(), inside[-1].max(), inside[:, 0].max(), inside[:, -1].max()]
            assert min(sides) > contrast[ring].max() + 20, (annotation.file_name, sides, contrast[ring].max())


def test_command_line(tmp_path):
    main(["--out", str(tmp_path / "in_process"), "--num-train", "3", "--num-val", "2", "--image-size", "64"])
    command = [sys.executable, "-m", "detection.data.synthetic", "--out", str(tmp_path / "cli")]
    command += ["--num-train", "3", "--num-val", "2", "--image-size", "64", "--seed", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert "INFO detection.data.synthetic: wrote 3 train + 2 val" in result.stderr and not result.stdout
    assert "RuntimeWarning" not in result.stderr
    assert _digests(tmp_path / "cli") == _digests(tmp_path / "in_process")
    # --quiet: warnings and errors only (the shared logging setup of backbone/command_logging.py)
    quiet = subprocess.run([*command, "--quiet"], cwd=REPO, capture_output=True, text=True, check=True)
    assert quiet.stdout == quiet.stderr == ""
