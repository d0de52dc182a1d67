"""Multi-scale testing with maxout (detection/multiscale.py): the two adjacent levels closest to the
pre-training size are chosen per RoI, and their pooled features merged by the element-wise maximum."""

import pytest
import torch
from helpers import TINY, assert_detections_valid, synthetic_batch
from torchvision.ops import roi_align

from detection import build_detector
from detection.multiscale import MaxoutPyramidPooler, select_scale_pairs
from detection.poolers import SingleLevelRoIAlign


def test_scale_pairs_are_the_closest_level_and_its_nearer_neighbour():
    sides = torch.tensor([
        [50.0, 100, 150, 200, 250],  # 200 is closest to 224, then 250: levels 3 and 4
        [300.0, 600, 900, 1200, 1500],  # all too large: the two smallest
        [10.0, 20, 30, 40, 50],  # all too small: the two largest
        [100.0, 230, 300, 400, 500],  # 230 closest; 300 (76 away) is nearer than 100 (124 away)
        [100.0, 220, 400, 500, 600],  # 220 closest; 100 (124 away) is nearer than 400 (176 away)
    ])  # fmt: skip
    assert select_scale_pairs(sides, target=224).tolist() == [[3, 4], [0, 1], [3, 4], [1, 2], [0, 1]]
    assert select_scale_pairs(torch.tensor([[5.0], [500.0]])).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="levels"):
        select_scale_pairs(torch.zeros(3))


def test_maxout_pools_each_roi_from_its_two_levels_and_takes_the_elementwise_maximum():
    torch.manual_seed(0)
    maps = [torch.randn(1, 3, 10, 10), torch.randn(1, 3, 20, 20), torch.randn(1, 3, 40, 40)]
    pooler = SingleLevelRoIAlign(feature_name="res4", stride=1, output_size=2)
    maxout = MaxoutPyramidPooler(
        pooler=pooler, feature_maps=maps, level_image_sizes=[[(10, 10)], [(20, 20)], [(40, 40)]],
        image_sizes=[(20, 20)], target=8,
    )  # fmt: skip
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 18.0, 18.0]])
    got = maxout([boxes])

    def pool(level: int, box: list[float], scale: float) -> torch.Tensor:
        roi = torch.tensor([[0.0, *(value * scale for value in box)]])
        return roi_align(maps[level], roi, output_size=2, spatial_scale=1.0, sampling_ratio=0, aligned=True)[0]

    # box 0 has sides 2, 4, 8 on the three levels: 8 is the target, 4 its nearer neighbour -> levels 1, 2
    small = torch.maximum(pool(1, [0, 0, 4, 4], 1.0), pool(2, [0, 0, 4, 4], 2.0))
    # box 1 has sides 8, 16, 32: levels 0 and 1
    large = torch.maximum(pool(0, [2, 2, 18, 18], 0.5), pool(1, [2, 2, 18, 18], 1.0))
    assert torch.equal(got[0], small) and torch.equal(got[1], large)
    assert not torch.equal(got[0], pool(1, [0, 0, 4, 4], 1.0)) and not torch.equal(got[0], pool(2, [0, 0, 4, 4], 2.0))
    assert maxout([torch.zeros((0, 4))]).shape == (0, 3, 2, 2)


def test_a_c4_detector_tests_on_a_pyramid_and_one_level_at_its_own_size_changes_nothing():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="c4", num_classes=2, box_score_thresh=0.0, **TINY).eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        _, plain = model(images)
        _, own_level = model(images, maxout_sizes=(TINY["min_size"],))
        _, pyramid = model(images, maxout_sizes=(32, 48, 64, 96, 128), refine_boxes=True)
    for a, b in zip(plain, own_level):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert_detections_valid(pyramid, images, num_classes=2)
    fpn = build_detector(backbone="resnet18", head="fpn", num_classes=2, **TINY).eval()
    with pytest.raises(ValueError, match="C4"):
        fpn(images, maxout_sizes=(32, 64))
