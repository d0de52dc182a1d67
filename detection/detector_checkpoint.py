"""Detector serving checkpoints in the shared format of backbone.serving_checkpoint (kind="detector").

The manifest's architecture_kwargs are the `build_detector` kwargs (detector.config); class_names
are the foreground names for labels 1..K. Nothing is unpickled on load. `load_detector` also takes a
torchvision Faster R-CNN .pth, converted in memory, so every command accepts either file.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backbone.serving_checkpoint import load_checkpoint, make_manifest, save_checkpoint
from backbone.weights import CheckpointError, load_checked
from detection.builder import build_detector
from detection.detector import Detector
from detection.torchvision_compat import TORCHVISION_SUFFIXES, load_torchvision_detector

ARCHITECTURE = "faster_rcnn"


def default_preprocessing(model: Detector) -> dict[str, Any]:
    """What the model does to its input, for readers of the manifest (the model applies it itself)."""
    config = model.config
    return {
        "input": "RGB, float in [0, 1] (Detector.predict converts PIL images and uint8 tensors)",
        "min_size": list(config["min_size"]),
        "max_size": config["max_size"],
        "image_mean": list(config["image_mean"]),
        "image_std": list(config["image_std"]),
    }


def save_detector(
    path: str | os.PathLike,
    *,
    model: Detector,
    class_names: list[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write weights + manifest atomically. class_names defaults to the model's own."""
    if getattr(model, "optimized", False):
        raise ValueError("cannot save a detector after optimize_for_inference (BN is folded); save it before")
    manifest = detector_manifest(
        model, class_names=class_names, preprocessing=preprocessing, provenance=provenance, metrics=metrics
    )
    return save_checkpoint(path, state_dict=model.state_dict(), manifest=manifest)


def detector_manifest(
    model: Detector,
    *,
    class_names: list[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest `save_detector` writes for `model` (class_names defaults to the model's own)."""
    class_names = list(model.class_names if class_names is None else class_names)
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a detector with {model.num_classes} classes")
    return make_manifest(
        kind="detector",
        architecture=ARCHITECTURE,
        architecture_kwargs=model.config,
        class_names=class_names,
        preprocessing=default_preprocessing(model) if preprocessing is None else preprocessing,
        provenance=provenance,
        metrics=metrics,
    )


def load_detector(path: str | os.PathLike, *, class_names: list[str] | None = None) -> tuple[Detector, dict[str, Any]]:
    """Rebuild the detector in eval mode; errors name the file and what does not fit.

    A .pth/.pt is read as a torchvision Faster R-CNN state dict and converted in memory; class_names
    names its labels (COCO's for a 91-output file by default). Our checkpoints carry their own names.
    """
    if Path(path).suffix in TORCHVISION_SUFFIXES:
        model, provenance = load_torchvision_detector(path, class_names=class_names)
        return model, detector_manifest(model, provenance=provenance)
    if class_names is not None:
        raise ValueError(f"{path} names its classes in its manifest; class names are only given for a .pth")
    state_dict, manifest = load_checkpoint(path)
    if manifest["kind"] != "detector":
        raise CheckpointError(f"{path} holds a {manifest['kind']}, not a detector")
    if manifest["architecture"] != ARCHITECTURE:
        raise CheckpointError(f"{path}: architecture {manifest['architecture']!r} is not {ARCHITECTURE!r}")
    kwargs = manifest.get("architecture_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: manifest has no architecture_kwargs to rebuild the detector")
    class_names = manifest["class_names"]
    if len(class_names) != kwargs.get("num_classes"):
        raise CheckpointError(
            f"{path}: {len(class_names)} class names but architecture_kwargs say "
            f"num_classes={kwargs.get('num_classes')}"
        )
    try:
        model = build_detector(**kwargs, class_names=class_names)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: architecture_kwargs do not build a detector: {error}") from error
    load_checked(model, state_dict, source=str(path))
    return model.eval(), manifest


def convert_torchvision_detector(
    src: str | os.PathLike, dst: str | os.PathLike, *, class_names: list[str] | None = None
) -> Path:
    """Read a torchvision Faster R-CNN state dict from `src`, write our checkpoint to `dst`."""
    model, provenance = load_torchvision_detector(src, class_names=class_names)
    return save_detector(dst, model=model, provenance=provenance)
