"""The detector a detection run trains: built from the config and --init (whose architecture wins when it is a
whole detector), and its memory format per device."""

from collections.abc import Sequence

import torch

from detection.builder import build_detector
from detection.detector import Detector
from detection.pretrained import detector_architecture, initialise_detector
from training.config import config_to_dict, make_config
from training.det_train_config import DetTrainConfig
from training.distributed import DistributedContext
from training.run_log import report


def with_init_architecture(cfg: DetTrainConfig) -> DetTrainConfig:
    """A whole-detector --init (our .safetensors or a torchvision Faster R-CNN .pth, v1 or v2) fixes the
    architecture: backbone, head and the options that decide which tensors exist come from the file."""
    architecture = detector_architecture(cfg.init) if cfg.init and not cfg.eval_only else {}
    if not architecture:
        return cfg
    own = {"backbone": cfg.backbone, "head": cfg.head, **cfg.detector.to_dict()}
    changed = {key: value for key, value in architecture.items() if own[key] != value}
    if changed:
        report(f"--init {cfg.init} is a detector of another architecture; taking from it: {changed}")
    return make_config(DetTrainConfig, {**config_to_dict(cfg), **architecture})


def build_model(cfg: DetTrainConfig, *, class_names: Sequence[str], ctx: DistributedContext) -> Detector:
    """The detector of the config for these classes, initialised from --init (the log says what it took) and
    its feature extractor compiled with --compile."""
    model = build_detector(
        backbone=cfg.backbone, head=cfg.head, num_classes=len(class_names), class_names=list(class_names),
        **cfg.detector.to_dict(),
    )  # fmt: skip
    if cfg.init:
        described = initialise_detector(model, cfg.init)
        report(f"initialised {described} from {cfg.init}", ctx=ctx)
    if cfg.compile:
        # The feature extractor only: the whole detector broke into 36 graphs (torchvision's sampling
        # .item(), boolean indexing, RoIAlign's wrapper); compile() in place keeps the state-dict keys.
        model.features.compile()
    return model


def detection_channels_last(setting: str, device: torch.device) -> bool:
    """channels_last for detection training: "auto" follows what was measured on each device (NHWC was
    faster on this project's CPU, slower for the ResNet-50 FPN step on an H200: 29.8-31.5 vs 25.0 ms)."""
    if setting == "auto":
        return device.type == "cpu"
    if setting not in ("true", "false"):
        raise ValueError(f"--channels_last must be auto, true or false, got {setting!r}")
    return setting == "true"
