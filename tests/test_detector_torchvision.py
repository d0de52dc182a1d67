"""torchvision's fasterrcnn_resnet50_fpn (v1, v2) and ResNet-18/34/101/152 FPN weights in our detector: the same
detections, via the Python API and the `python -m detection.convert` command; COCO's 91-id label space."""

import subprocess
import sys

import pytest
import torch
from helpers import REPO, TEST_SETTINGS, randomised_torchvision, sample_images
from torch import nn
from torchvision.models._meta import _COCO_CATEGORIES
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.resnet import BasicBlock, Bottleneck

from backbone.weights import CheckpointError
from detection import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, convert_torchvision_detector, load_detector
from detection.torchvision_compat import TORCHVISION_UNUSED_COCO_IDS

# Small inputs and 100 proposals per image: the code paths of 800 px and 1000 proposals, a fraction of the time.


def use_test_settings(model: nn.Module) -> None:
    """The reduced settings on a detector loaded from a checkpoint (torchvision's side gets them as kwargs)."""
    model.transform.min_size = (TEST_SETTINGS["min_size"],)
    model.transform.max_size = TEST_SETTINGS["max_size"]
    model.rpn._post_nms_top_n["testing"] = TEST_SETTINGS["rpn_post_nms_top_n_test"]
    model.roi_heads.score_thresh = TEST_SETTINGS["box_score_thresh"]


def assert_same_detections(theirs: dict, ours: dict) -> None:
    """Same set of detections: every torchvision box has ours with the same COCO id, box within 1e-3 px and
    score within 1e-4 (matched by box, since near-equal scores may be listed in either order)."""
    assert len(ours["boxes"]) == len(theirs["boxes"]) > 0
    category = torch.tensor(COCO_CATEGORY_IDS)[ours["labels"] - 1]
    distance = (theirs["boxes"][:, None] - ours["boxes"][None]).abs().amax(dim=-1)
    distance[theirs["labels"][:, None] != category[None]] = float("inf")
    closest = distance.min(dim=1)
    assert closest.values.max() < 1e-3
    assert len(set(closest.indices.tolist())) == len(ours["boxes"])  # one to one
    assert (theirs["scores"] - ours["scores"][closest.indices]).abs().max() < 1e-4


def test_coco_names_and_ids_match_torchvision_label_space():
    named = [(index, name) for index, name in enumerate(_COCO_CATEGORIES) if name not in ("__background__", "N/A")]
    assert [index for index, _ in named] == list(COCO_CATEGORY_IDS)
    assert [name for _, name in named] == list(COCO_CLASS_NAMES)
    assert len(COCO_CLASS_NAMES) == 80 and len(TORCHVISION_UNUSED_COCO_IDS) == 10


@pytest.mark.parametrize("builder", [fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2], ids=["v1", "v2"])
def test_converted_weights_give_torchvision_detections(builder, tmp_path):
    reference = randomised_torchvision(builder)
    state_dict = reference.state_dict()
    if builder is fasterrcnn_resnet50_fpn:  # the COCO v1 file predates RPNHead v2: its conv key has no ".0.0"
        for name in ("weight", "bias"):
            state_dict[f"rpn.head.conv.{name}"] = state_dict.pop(f"rpn.head.conv.0.0.{name}")
    torch.save(state_dict, tmp_path / "torchvision.pth")
    convert_torchvision_detector(tmp_path / "torchvision.pth", tmp_path / "ours.safetensors")
    model, manifest = load_detector(tmp_path / "ours.safetensors")
    assert manifest["class_names"] == list(COCO_CLASS_NAMES)
    assert manifest["provenance"]["coco_category_ids"] == list(COCO_CATEGORY_IDS)
    use_test_settings(model)
    images = sample_images()
    with torch.inference_mode():
        theirs = reference(images)
        _, ours = model(images)
    for a, b in zip(theirs, ours):
        assert_same_detections(a, b)


SMALL = dict(min_size=160, max_size=240)


def resnet_fpn_faster_rcnn(depth: int):
    """torchvision's Faster R-CNN on a ResNet-`depth` FPN (resnet_fpn_backbone: the layout of its COCO
    detectors), at 160-240 px: the other depths' block layouts and channels, not more pixels."""

    def builder(weights=None, weights_backbone=None, **settings):
        backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=weights_backbone, trainable_layers=3)
        return FasterRCNN(backbone, num_classes=91, **{**settings, **SMALL})

    return builder


@pytest.mark.parametrize("depth", [18, 34, 101, 152])
def test_converted_weights_of_every_depth_give_torchvision_detections(depth, tmp_path):
    reference = randomised_torchvision(resnet_fpn_faster_rcnn(depth))
    with torch.no_grad():  # small last-BN scales, as trained deep ResNets have: 50 random blocks would overflow
        for block in reference.backbone.body.modules():
            last_bn = getattr(block, "bn3", None) or getattr(block, "bn2", None)
            if isinstance(block, (BasicBlock, Bottleneck)) and last_bn is not None:
                last_bn.weight.uniform_(0.05, 0.2)
    torch.save(reference.state_dict(), tmp_path / "torchvision.pth")
    convert_torchvision_detector(tmp_path / "torchvision.pth", tmp_path / "ours.safetensors")
    model, manifest = load_detector(tmp_path / "ours.safetensors")
    assert manifest["architecture_kwargs"]["backbone"] == f"resnet{depth}"
    use_test_settings(model)
    model.transform.min_size, model.transform.max_size = (SMALL["min_size"],), SMALL["max_size"]
    generator = torch.Generator().manual_seed(depth)
    images = [torch.rand(3, 200, 150, generator=generator), torch.rand(3, 120, 240, generator=generator)]
    with torch.inference_mode():
        theirs = reference(images)
        _, ours = model(images)
    for a, b in zip(theirs, ours):
        assert_same_detections(a, b)


def test_convert_command_and_its_errors(tmp_path):
    reference = randomised_torchvision(fasterrcnn_resnet50_fpn)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    result = subprocess.run(
        [sys.executable, "-m", "detection.convert", str(tmp_path / "tv.pth"), str(tmp_path / "coco.safetensors")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, manifest = load_detector(tmp_path / "coco.safetensors")
    assert manifest["architecture_kwargs"]["unused_class_ids"] == list(TORCHVISION_UNUSED_COCO_IDS)
    use_test_settings(model)
    image = sample_images()[0]
    predicted = model.predict([(image * 255).round().to(torch.uint8)], score_threshold=0.02)[0]
    with torch.inference_mode():
        theirs = reference([(image * 255).round() / 255])[0]
    assert_same_detections(theirs, predicted)
    assert predicted["names"] == [COCO_CLASS_NAMES[label - 1] for label in predicted["labels"].tolist()]

    (tmp_path / "junk.pth").write_bytes(b"not a weight file")
    result = subprocess.run(
        [sys.executable, "-m", "detection.convert", str(tmp_path / "junk.pth"), str(tmp_path / "out.safetensors")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "junk.pth" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_rejects_what_is_not_a_resnet_fpn_detector(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "classifier.pth")
    with pytest.raises(CheckpointError, match="not a torchvision ResNet-FPN Faster R-CNN"):
        convert_torchvision_detector(tmp_path / "classifier.pth", tmp_path / "out.safetensors")
    state_dict = randomised_torchvision(fasterrcnn_resnet50_fpn).state_dict()
    del state_dict["roi_heads.box_head.fc7.weight"]
    torch.save(state_dict, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): roi_heads.box_head.fc7.weight"):
        convert_torchvision_detector(tmp_path / "broken.pth", tmp_path / "out.safetensors")
