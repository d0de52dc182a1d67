"""Sliced inference (detection/slicing.py): windows cover the image, tile merging removes border duplicates."""

import pytest
import torch
from helpers import TINY, RectangleFinder, assert_detections_valid
from torchvision.ops import batched_nms

from detection import build_detector
from detection.slicing import detect_sliced, merge_across_tiles, tile_windows
from detection.test_time import TestTimeOptions, detect_with_options


def test_windows_overlap_cover_the_image_and_share_one_size():
    assert tile_windows(100, 200, tile_size=100, overlap=40) == [
        (0, 0, 100, 100),
        (60, 0, 160, 100),
        (100, 0, 200, 100),
    ]
    assert tile_windows(50, 70, tile_size=100, overlap=10) == [(0, 0, 70, 50)]  # smaller than a tile: itself
    windows = tile_windows(333, 517, tile_size=128, overlap=32)
    assert {(x2 - x1, y2 - y1) for x1, y1, x2, y2 in windows} == {(128, 128)}
    covered = torch.zeros(333, 517, dtype=torch.bool)
    for x1, y1, x2, y2 in windows:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, tile_size=64, overlap=64)
    with pytest.raises(ValueError, match="tile_size"):
        tile_windows(100, 100, tile_size=0, overlap=0)


def _scene() -> tuple[torch.Tensor, list[list[float]]]:
    image = torch.zeros(3, 100, 200)
    objects = [
        (85, 10, 125, 50),  # cut by the borders of the tiles at x 0..100 and 100..200, whole in 60..160
        (20, 60, 190, 90),  # wider than any tile: only parts are seen
        (130, 10, 150, 50),  # two neighbours, each whole in the last tile; one cut by the middle tile
        (152, 10, 170, 50),
    ]
    for value, (x1, y1, x2, y2) in enumerate(objects, start=1):
        image[0, y1:y2, x1:x2] = value
    return image, [list(map(float, box)) for box in objects]


def _sorted(boxes: torch.Tensor) -> list[list[float]]:
    return sorted(boxes.tolist())


@pytest.mark.parametrize("full_image", [False, True])
def test_tiles_merge_into_one_box_per_object(full_image):
    image, objects = _scene()
    finder = RectangleFinder()
    merged = detect_sliced(lambda tiles: finder(tiles)[1], image, tile_size=100, overlap=40, full_image=full_image)
    assert _sorted(merged["boxes"]) == sorted(objects)
    assert len(finder.calls) == (2 if full_image else 1)  # three tiles in one batch, then the whole image


def test_plain_nms_would_keep_the_border_duplicates():
    image, objects = _scene()
    finder = RectangleFinder()
    pieces = []
    for x1, y1, x2, y2 in tile_windows(100, 200, tile_size=100, overlap=40):
        (found,) = finder([image[:, y1:y2, x1:x2]])[1]
        pieces.append(found["boxes"] + torch.tensor([x1, y1, x1, y1], dtype=torch.float32))
    boxes = torch.cat(pieces)
    scores = torch.full((len(boxes),), 0.9)
    labels = torch.ones(len(boxes), dtype=torch.int64)
    assert len(batched_nms(boxes, scores, labels, 0.5)) > len(objects)  # why the tiles need their own merge


def test_boxes_of_one_tile_or_of_other_classes_never_merge():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 2, 8, 8], [2, 2, 8, 8], [2, 2, 8, 8]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])
    sources = torch.tensor([0, 0, 1, 1])
    merged = merge_across_tiles(boxes, scores, labels, sources, merge_threshold=0.5)
    # the last box (another tile, same class, inside the first) joins the first; the others stay
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert merged["boxes"].tolist() == [[0, 0, 10, 10], [2, 2, 8, 8], [2, 2, 8, 8]]
    assert merged["labels"].tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="merge_threshold"):
        merge_across_tiles(boxes, scores, labels, sources, merge_threshold=0.0)


def test_a_real_detector_runs_on_tiles_and_answers_in_the_image_pixels():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, box_score_thresh=0.0, **TINY).eval()
    image = torch.rand(3, 150, 230)
    with torch.no_grad():
        merged = detect_sliced(lambda tiles: model(tiles)[1], image, tile_size=96, overlap=24, full_image=True)
    assert_detections_valid([merged], [image], num_classes=2)
    with pytest.raises(ValueError, match="one image"):
        detect_sliced(lambda tiles: model(tiles)[1], image[None], tile_size=96, overlap=24)


def test_test_time_options_route_tiles_through_the_merge():
    image, objects = _scene()
    finder = RectangleFinder()
    merged = detect_with_options(finder, [image], TestTimeOptions(tile_size=100, tile_overlap=0.4))
    assert _sorted(merged[0]["boxes"]) == sorted(objects)
    assert len(finder.calls) == 1
    assert TestTimeOptions(tile_size=100).overlap == 20
    with pytest.raises(ValueError, match="overlap"):
        TestTimeOptions(tile_size=100, tile_overlap=1.0)
    with pytest.raises(ValueError, match="overlap"):
        TestTimeOptions(tile_size=2, tile_overlap=0.9)  # rounds to the whole tile
    with pytest.raises(ValueError, match="needs a tile_size"):
        TestTimeOptions(tile_full_image=True)
