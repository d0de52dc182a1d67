"""train_det.py --init with torchvision Faster R-CNN files, v1 and v2: the file fixes the architecture
and initialises the whole detector (its 91-output predictor refitted to our classes)."""

from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

from backbone import create_model
from backbone.serving_checkpoint import save_classifier
from detection import build_detector, save_detector
from detection.data import generate_synthetic
from detection.pretrained import detector_architecture, initialise_detector
from training.config import make_config
from training.det_model import with_init_architecture
from training.train_det import RECIPES, DetTrainConfig, main

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"v1": fasterrcnn_resnet50_fpn, "v2": fasterrcnn_resnet50_fpn_v2}


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised torchvision detectors saved as the .pth state dicts torchvision publishes."""
    folder = tmp_path_factory.mktemp("torchvision")
    files = {}
    for version, builder in BUILDERS.items():
        torch.manual_seed(0)
        files[version] = folder / f"fasterrcnn_resnet50_fpn_{version}.pth"
        torch.save(builder(weights=None, weights_backbone=None).state_dict(), files[version])
    return files


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v1", dict(box_head="mlp", fpn_norm="none", rpn_conv_depth=1)),
        ("v2", dict(box_head="conv_fc", fpn_norm="bn", rpn_conv_depth=2)),
    ],
)
def test_a_torchvision_detector_file_initialises_the_whole_model(torchvision_files, version, expected):
    path = torchvision_files[version]
    cfg = with_init_architecture(make_config(DetTrainConfig, {"dataset": "coco", "init": str(path)}))
    assert (cfg.backbone, cfg.head, cfg.detector.stride_in_1x1) == ("resnet50", "fpn", False)  # v1.5 layout
    for name, value in expected.items():
        assert getattr(cfg.detector, name) == value, name
    model = build_detector(backbone=cfg.backbone, head=cfg.head, num_classes=3, **cfg.detector.to_dict())
    assert initialise_detector(model, path) == "the whole detector except its class-specific predictor"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    rpn_conv = "rpn.head.conv.1.0.weight" if version == "v2" else "rpn.head.conv.0.0.weight"
    assert torch.equal(own[rpn_conv], saved[rpn_conv])
    box_head = "roi_heads.box_head.0.0.weight" if version == "v2" else "roi_heads.box_head.fc6.weight"
    assert torch.equal(own[box_head], saved[box_head])


@pytest.mark.slow
def test_train_det_runs_from_a_torchvision_v2_file(torchvision_files, tmp_path):
    data = tmp_path / "shapes"
    generate_synthetic(data, num_train=2, num_val=2, image_size=64, seed=0)
    # the synthetic recipe's narrow network (width 16, 64 FPN channels): the file's architecture replaces it
    values = {**RECIPES["synthetic"], "dataset": "coco", "data_path": str(data / "coco"),
              "output_dir": str(tmp_path / "run"), "init": str(torchvision_files["v2"]), "frozen_bn": True,
              "freeze_at": 2, "min_size": (64,), "max_size": 64, "batch_size": 1,
              "max_iterations": 1, "warmup_iterations": 0, "lr_milestones": (1,), "eval_every": 1,
              "workers": 0, "tensorboard": False, "group_aspect_ratio": False}  # fmt: skip
    results = main(make_config(DetTrainConfig, values))
    assert "AP" in results
    stored = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert (stored["detector"]["box_head"], stored["detector"]["rpn_conv_depth"]) == ("conv_fc", 2)
    assert (stored["detector"]["base_width"], stored["detector"]["fpn_channels"]) == (64, 256)


def test_our_own_detector_file_fixes_the_architecture_and_a_classifier_none(tmp_path):
    options = dict(base_width=8, fpn_channels=16, representation_size=32, box_head="conv_fc", rpn_conv_depth=2)
    detector = build_detector(backbone="resnet18", num_classes=2, **options)
    path = save_detector(tmp_path / "det.safetensors", model=detector)
    assert detector_architecture(path) == {"backbone": "resnet18", "head": "fpn", **options,
                                           **{k: detector.config[k] for k in ("stride_in_1x1", "shortcut",
                                              "fpn_norm", "anchor_sizes", "anchor_ratios")}}  # fmt: skip
    cfg = with_init_architecture(make_config(DetTrainConfig, {"init": str(path), "min_size": (96,)}))
    assert (cfg.backbone, cfg.detector.box_head, cfg.detector.min_size) == ("resnet18", "conv_fc", (96,))
    classifier = tmp_path / "classifier.safetensors"
    save_classifier(classifier, model=create_model("resnet18", num_classes=3, base_width=8), architecture="resnet18",
                    class_names=["a", "b", "c"])  # fmt: skip
    assert detector_architecture(classifier) == {}
