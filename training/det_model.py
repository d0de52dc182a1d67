"""The detector a detection run trains: its architecture when --init is a whole detector, its memory format per
device."""

import torch

from detection.pretrained import detector_architecture
from training.config import config_to_dict, make_config
from training.det_train_config import DetTrainConfig
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


def detection_channels_last(setting: str, device: torch.device) -> bool:
    """channels_last for detection training: "auto" follows what was measured on each device (NHWC was
    faster on this project's CPU, slower for the ResNet-50 FPN step on an H200: 29.8-31.5 vs 25.0 ms)."""
    if setting == "auto":
        return device.type == "cpu"
    if setting not in ("true", "false"):
        raise ValueError(f"--channels_last must be auto, true or false, got {setting!r}")
    return setting == "true"
