"""Detection datasets: COCO and VOC loaders (crowd, difficult, empty, degenerate), errors, transforms, batching."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from detection.data import (
    AnnotationError,
    CocoDetection,
    ConcatDetection,
    VocDetection,
    aspect_ratio_group_ids,
    build_transforms,
    collate_fn,
)
from training.sampler import ResumableBatchSampler, SeededDataset


def _write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path)


def _coco_data() -> dict:
    # category ids are sparse (as COCO's 1..90 with gaps): labels must become 1..3 in id order
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 11, "file_name": "b.jpg", "width": 20, "height": 50},
            {"id": 12, "file_name": "empty.jpg", "width": 32, "height": 32},
        ],
        "categories": [{"id": 12, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 5], "iscrowd": 0, "area": 50.0},
            {"id": 2, "image_id": 10, "category_id": 12, "bbox": [30, 20, 20, 20], "iscrowd": 0},  # clipped to 40x30
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {"id": 5, "image_id": 11, "category_id": 7, "bbox": [25, 5, 4, 4], "iscrowd": 0},  # outside: clips to 0
            {"id": 6, "image_id": 11, "category_id": 12, "bbox": [1, 2, 3, 4]},  # no iscrowd: 0
            {"id": 7, "image_id": 12, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # only a crowd
        ],
    }


def _write_coco(root: Path, data: dict | str) -> tuple[Path, Path]:
    for name, (width, height) in {"a.jpg": (40, 30), "b.jpg": (20, 50), "empty.jpg": (32, 32)}.items():
        _write_image(root / "images" / name, width, height)
    annotation_file = root / "instances_test.json"
    annotation_file.write_text(data if isinstance(data, str) else json.dumps(data))
    return annotation_file, root / "images"


def test_coco_labels_crowd_degenerate_and_targets(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path, _coco_data())
    dataset = CocoDetection(annotation_file, image_dir)
    assert dataset.class_names == ["car", "dog", "kite"]
    assert dataset.category_ids == [3, 7, 12]
    assert dataset.num_degenerate_boxes == 2
    assert len(dataset) == 3 and [a.image_id for a in dataset.annotations] == [10, 11, 12]
    first = dataset.annotations[0]
    np.testing.assert_array_equal(first.boxes, [[2, 3, 12, 8], [30, 20, 40, 30], [0, 0, 40, 30]])
    np.testing.assert_array_equal(first.labels, [1, 3, 2])
    np.testing.assert_array_equal(first.ignore, [False, False, True])

    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert boxes.dtype == torch.float32 and tuple(boxes.canvas_size) == (30, 40)
    torch.testing.assert_close(boxes.as_subclass(torch.Tensor), torch.tensor([[2.0, 3, 12, 8], [30, 20, 40, 30]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 3]  # the crowd box is out
    assert target["image_id"] == 10
    _, second = dataset[1]
    assert second["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]] and second["labels"].tolist() == [3]
    _, empty = dataset[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)

    # pycocotools keeps every entry for evaluation, missing iscrowd/area filled in
    assert len(dataset.coco.getAnnIds()) == 7
    assert dataset.coco.anns[6]["iscrowd"] == 0 and dataset.coco.anns[6]["area"] == 12


def test_coco_keep_empty_flag_and_sizes_without_decoding(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path, _coco_data())
    dataset = CocoDetection(annotation_file, image_dir, keep_empty=False)
    assert [a.image_id for a in dataset.annotations] == [10, 11]  # the image with only a crowd box is out
    assert dataset.num_empty_images_removed == 1
    (image_dir / "b.jpg").unlink()
    assert dataset.get_image_size(1) == (50, 20)  # read from the json, the image is never opened


def _coco_error_cases() -> list:
    def edit(change):
        data = _coco_data()
        change(data)
        return data

    return [
        ("{not json", "not valid JSON"),
        (edit(lambda d: d.pop("annotations")), "missing key 'annotations'"),
        (edit(lambda d: d["annotations"][2].update(bbox=[1, 2, 3])), r"annotation #2 \(id 3, image id 10\): bbox"),
        (edit(lambda d: d["annotations"][1].update(bbox=[1, 2, 3, "x"])), r"annotation #1 \(id 2.*bbox"),
        (edit(lambda d: d["annotations"][4].pop("image_id")), "annotation #4: missing key"),
        (edit(lambda d: d["annotations"][0].update(category_id=99)), r"annotation #0 .*unknown category id 99"),
        (edit(lambda d: d["annotations"][3].update(id=0)), r"annotation #3 .*positive int"),
        (edit(lambda d: d["annotations"][3].update(image_id=5)), r"annotation #3 .*image id not among"),
        (edit(lambda d: d["images"][1].pop("height")), r"image #1: missing key\(s\) height"),
        (edit(lambda d: d["categories"].append({"id": 3, "name": "again"})), "category #3: id 3"),
    ]


@pytest.mark.parametrize(("content", "message"), _coco_error_cases())
def test_coco_malformed_file_names_file_and_entry(tmp_path, content, message):
    annotation_file, image_dir = _write_coco(tmp_path, content)
    with pytest.raises(AnnotationError, match=message) as error:
        CocoDetection(annotation_file, image_dir)
    assert str(annotation_file) in str(error.value)


def test_coco_missing_or_wrong_image_is_named(tmp_path):
    annotation_file, image_dir = _write_coco(tmp_path, _coco_data())
    (image_dir / "b.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"b\.jpg: image file not found \(image id 11\)"):
        CocoDetection(annotation_file, image_dir)
    _write_image(image_dir / "b.jpg", 21, 50)  # not the size the json says
    dataset = CocoDetection(annotation_file, image_dir)
    with pytest.raises(AnnotationError, match=r"b\.jpg: image is 21x50 .* says 20x50 \(image id 11\)"):
        dataset[1]
    (image_dir / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=r"b\.jpg: cannot decode image \(image id 11\)"):
        dataset[1]


def _voc_object(name: str, box: tuple, difficult: str | None = "0") -> str:
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    coordinates = "".join(f"<{tag}>{value}</{tag}>" for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name><pose>Left</pose>{flag}<bndbox>{coordinates}</bndbox></object>"


def _write_voc(root: Path, files: dict[str, tuple[int, int, str]], split: str = "trainval") -> Path:
    """files: VOC name -> (width, height, the <object> elements)."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name, (width, height, objects) in files.items():
        _write_image(root / "JPEGImages" / f"{name}.jpg", width, height)
        xml = f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
        (root / "Annotations" / f"{name}.xml").write_text(f"{xml}<depth>3</depth></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{name}\n" for name in files))
    return root


VOC_FILES = {
    "000005": (50, 40, _voc_object("dog", (1, 1, 50, 40)) + _voc_object("person", (10, 12, 20, 30), "1")),
    "2008_000008": (30, 60, _voc_object("cat", (5, 6, 25, 50), None) + _voc_object("cat", (9, 9, 8, 20))),
    "000009": (32, 32, _voc_object("person", (2, 2, 10, 10), "1")),  # only a difficult object
}


def test_voc_difficult_one_based_boxes_degenerate_and_empty(tmp_path):
    dataset = VocDetection(_write_voc(tmp_path, VOC_FILES), "trainval")
    assert len(dataset.class_names) == 20 and dataset.category_ids == list(range(1, 21))
    assert dataset.num_degenerate_boxes == 1  # xmax 8 < xmin 9
    first = dataset.annotations[0]
    # (1, 1, 50, 40) in VOC's 1-based inclusive pixels is the whole 50x40 image
    np.testing.assert_array_equal(first.boxes, [[0, 0, 50, 40], [9, 11, 20, 30]])
    np.testing.assert_array_equal(first.labels, [12, 15])  # dog, person
    np.testing.assert_array_equal(first.ignore, [False, True])
    _, target = dataset[0]
    assert target["labels"].tolist() == [12] and target["boxes"].tolist() == [[0, 0, 50, 40]]
    assert target["image_id"] == 0 and dataset.annotations[1].file_name == "2008_000008.jpg"
    _, target = dataset[1]
    assert target["labels"].tolist() == [8]  # <difficult> absent: not difficult
    assert dataset.get_image_size(1) == (60, 30)
    filtered = VocDetection(tmp_path, "trainval", keep_empty=False)
    assert [a.file_name for a in filtered.annotations] == ["000005.jpg", "2008_000008.jpg"]


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (_voc_object("unicorn", (1, 1, 5, 5)), r"000005\.xml: object #0: unknown class name 'unicorn'"),
        (_voc_object("dog", (1, 1, 5, 5)) + _voc_object("dog", (1, 1, 5)), r"object #1: <bndbox/ymax> must be"),
        (_voc_object("dog", (1, 1, "x", 5)), r"object #0: <bndbox/xmax> must be a number, got 'x'"),
        (_voc_object("dog", (1, 1, 5, 5), "maybe"), r"object #0: difficult must be 0 or 1"),
        ("<object><name>dog</name></object>", "object #0: no bndbox"),
        ("<object><name>dog", "not valid XML"),
    ],
)
def test_voc_malformed_annotation_names_file_and_object(tmp_path, objects, message):
    root = _write_voc(tmp_path, {"000005": (50, 40, objects)})
    with pytest.raises(AnnotationError, match=message) as error:
        VocDetection(root, "trainval")
    assert str(root / "Annotations" / "000005.xml") in str(error.value)


def test_voc_missing_files_are_named(tmp_path):
    root = _write_voc(tmp_path, VOC_FILES)
    with pytest.raises(AnnotationError, match=r"ImageSets/Main/test\.txt: split file not found"):
        VocDetection(root, "test")
    (root / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(AnnotationError, match=r"000009\.jpg: image file not found \(image id 2\)"):
        VocDetection(root, "trainval")
    (root / "Annotations" / "2008_000008.xml").unlink()
    with pytest.raises(AnnotationError, match=r"2008_000008\.xml: annotation file not found"):
        VocDetection(root, "trainval")
    (root / "ImageSets" / "Main" / "bad.txt").write_text("000005 1\n")
    with pytest.raises(AnnotationError, match=r"bad\.txt: line 1: expected one image name"):
        VocDetection(root, "bad")


def test_voc_07_plus_12_concatenation(tmp_path):
    voc07 = VocDetection(_write_voc(tmp_path / "VOC2007", dict(list(VOC_FILES.items())[:1])), "trainval")
    voc12 = VocDetection(_write_voc(tmp_path / "VOC2012", dict(list(VOC_FILES.items())[1:])), "trainval")
    both = ConcatDetection([voc07, voc12])
    assert len(both) == 3 and both.class_names == voc07.class_names and both.category_ids == voc07.category_ids
    assert [a.image_id for a in both.annotations] == [0, 1, 2]  # both parts start at 0: renumbered
    assert [both.get_image_size(i) for i in range(3)] == [(40, 50), (60, 30), (32, 32)]
    image, target = both[1]
    assert image.shape == (3, 60, 30) and target["image_id"] == 1 and target["labels"].tolist() == [8]
    assert both[-1][1]["image_id"] == 2
    other = VocDetection(tmp_path / "VOC2012", "trainval", class_names=("cat", "dog", "person"))
    with pytest.raises(ValueError, match="cannot be concatenated"):
        ConcatDetection([voc07, other])


def _sample(height: int, width: int) -> tuple[tv_tensors.Image, dict]:
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[10.0, 20.0, 50.0, 40.0]], format="XYXY", canvas_size=(height, width))
    return image, {"boxes": boxes, "labels": torch.tensor([3]), "image_id": 7}


def test_flip_mirrors_boxes_and_nothing_resizes():
    """The detector resizes (DetectorOptions.min_size / max_size): the data pipeline keeps the size."""
    image, target = build_transforms(flip_prob=1.0, to_float=False)(*_sample(100, 200))
    assert image.dtype == torch.uint8 and image.shape == (3, 100, 200)
    assert target["boxes"].tolist() == [[150.0, 20.0, 190.0, 40.0]] and target["labels"].tolist() == [3]
    image, target = build_transforms()(*_sample(100, 200))
    assert image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1 and target["image_id"] == 7


class _Sizes:
    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def get_image_size(self, index):
        return self.sizes[index]


def test_aspect_ratio_groups():
    sizes = [(480, 640), (640, 480), (500, 500), (300, 900), (640, 427), (427, 640), (480, 640), (640, 480)] * 5
    groups = aspect_ratio_group_ids(_Sizes(sizes))
    assert groups[:4] == [5, 2, 4, 7] and groups[1] == groups[4] and groups[0] == groups[5]
    assert aspect_ratio_group_ids(_Sizes(sizes), bins_per_side=0) == [1, 0, 1, 1, 0, 1, 1, 0] * 5


def test_loader_over_voc_with_grouping_and_collate(tmp_path):
    dataset = VocDetection(_write_voc(tmp_path, VOC_FILES), "trainval")
    sampler = ResumableBatchSampler(dataset_size=len(dataset), global_batch_size=2,
                                    group_ids=aspect_ratio_group_ids(dataset))  # fmt: skip
    loader = DataLoader(SeededDataset(dataset, build_transforms(), joint=True), batch_sampler=sampler,
                        collate_fn=collate_fn)  # fmt: skip
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) >= 1
    assert all(image.dtype == torch.float32 and image.shape[0] == 3 for image in images)
    assert {target["image_id"] for target in targets} <= {0, 1, 2}


def test_coco_mini_loads_real_annotations(coco_mini):
    dataset = CocoDetection(
        coco_mini / "annotations" / "instances_train2017.json",
        coco_mini / "train2017",
        transforms=build_transforms(flip_prob=0.5),
    )
    assert len(dataset) == 80 and len(dataset.class_names) == 80
    assert dataset.class_names[0] == "person" and dataset.category_ids[-1] == 90
    crowd = sum(int(a.ignore.sum()) for a in dataset.annotations)
    all_entries = dataset.coco.getAnnIds()
    assert crowd == len(dataset.coco.getAnnIds(iscrowd=True))
    assert sum(len(a.boxes) for a in dataset.annotations) + dataset.num_degenerate_boxes == len(all_entries)
    image, target = dataset[0]
    height, width = dataset.get_image_size(0)
    assert tuple(image.shape[1:]) == (height, width)  # the detector resizes, not the dataset
    names = [dataset.class_names[label - 1] for label in target["labels"].tolist()]
    category_of_name = {c["name"]: c["id"] for c in dataset.coco.dataset["categories"]}
    image_id = dataset.annotations[0].image_id
    expected = sorted(category_of_name[name] for name in names)
    original = sorted(a["category_id"] for a in dataset.coco.imgToAnns[image_id] if not a["iscrowd"])
    assert expected == original
