"""Load the configured checkpoints into served models, all or nothing, with errors that name the file."""

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backbone.checkpoint import load_classifier
from backbone.devices import resolve_device
from backbone.weights import CheckpointError
from service.engine import BatchingEngine
from service.predictors import ClassifierPredictor, DetectorPredictor
from service.settings import Settings

log = logging.getLogger("service")


class ModelLoadError(RuntimeError):
    """A configured model cannot be served; the message names the file and the setting."""


@dataclass
class ServedModel:
    """One model as the API sees it: its identity, its manifest, its predictor and its batching engine."""

    role: str  # "detector" or "classifier"
    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    predictor: ClassifierPredictor | DetectorPredictor
    engine: BatchingEngine | None = field(default=None)

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.get("provenance", {}).get("demo")) or self.path.name.startswith("demo_")

    def describe(self) -> dict[str, Any]:
        manifest = self.manifest
        provenance = manifest.get("provenance", {})
        return {
            "role": self.role,
            "name": self.name,
            "version": self.version,
            "file": self.path.name,
            "demo": self.is_demo,
            "note": self._note(),
            "kind": manifest["kind"],
            "architecture": manifest["architecture"],
            "architecture_kwargs": manifest.get("architecture_kwargs", {}),
            "class_names": manifest["class_names"],
            "preprocessing": manifest.get("preprocessing", {}),
            "provenance": provenance,
            "metrics": manifest.get("metrics", {}),
        }

    def _note(self) -> str:
        # Scores, not losses; COCO's -1 means "no object of that size in the data", not a score.
        metrics = {
            key: value for key, value in self.manifest.get("metrics", {}).items() if "loss" not in key and value != -1
        }
        scored = ", ".join(f"{key}={_format_metric(value)}" for key, value in sorted(metrics.items()))
        scored = scored or "no metrics recorded"
        provenance = self.manifest.get("provenance", {})
        description = provenance.get("description") or (
            f"Trained with `{provenance['command']}`." if provenance.get("command") else ""
        )
        if self.is_demo:
            return (
                f"DEMO MODEL - a small {self.role} trained by this project's pipeline to show the service working, "
                f"not for real use. {description} Measured: {scored}."
            ).replace("  ", " ")
        return f"{description} Measured: {scored}.".strip()


def _format_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def select_device(choice: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a startup error."""
    return resolve_device(choice, setting="DEVICE=", error=ModelLoadError)


def file_version(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: the exact weights being served."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:12]}"


def load_served_models(settings: Settings, device: torch.device) -> dict[str, ServedModel]:
    """Every configured model, or ModelLoadError: the service never starts with half of them."""
    models = {}
    if settings.classifier_checkpoint is not None:
        models["classifier"] = _load_classifier(settings.classifier_checkpoint, settings=settings, device=device)
    if settings.detector_checkpoint is not None:
        models["detector"] = _load_detector(settings.detector_checkpoint, settings=settings, device=device)
    if not models:
        raise ModelLoadError("no model configured: set DETECTOR_CHECKPOINT and/or CLASSIFIER_CHECKPOINT")
    return models


def _check_exists(path: Path, setting: str) -> None:
    if not path.is_file():
        raise ModelLoadError(f"{setting}: checkpoint not found: {path}")
    if not os.access(path, os.R_OK):
        mode = stat.filemode(path.stat().st_mode)
        raise ModelLoadError(f"{setting}: checkpoint {path} ({mode}) is not readable by this user (uid {os.getuid()})")


def served_name(path: Path, manifest: dict[str, Any], *, setting: str | None) -> str:
    """The name answers carry: the setting, else the run a trainer's model.safetensors came from, else the stem.

    train_det.py and pretrain.py write OUTPUT_DIR/model.safetensors, so every trained model would be "model";
    their manifest records the command's output_dir, which names the run (runs/person_car -> "person_car").
    """
    if setting:
        return setting
    if manifest.get("name"):
        return str(manifest["name"])
    output_dir = manifest.get("provenance", {}).get("config", {}).get("output_dir")
    if path.stem == "model" and output_dir:
        return Path(output_dir).name
    return path.stem


def _load_classifier(path: Path, *, settings: Settings, device: torch.device) -> ServedModel:
    _check_exists(path, "CLASSIFIER_CHECKPOINT")
    try:
        model, manifest = load_classifier(path)
    except (CheckpointError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"CLASSIFIER_CHECKPOINT: cannot load {path}: {error}") from error
    predictor = ClassifierPredictor(
        model,
        class_names=manifest["class_names"],
        preprocessing=manifest.get("preprocessing", {}),
        device=device,
        optimize=settings.optimize,
        bf16=settings.bf16,
    )
    name = served_name(path, manifest, setting=settings.classifier_name)
    log.info("classifier %s (%s) loaded from %s on %s", name, manifest["architecture"], path, device)
    return ServedModel(role="classifier", name=name, version=file_version(path), path=path, manifest=manifest,
                       predictor=predictor)  # fmt: skip


def _load_detector(path: Path, *, settings: Settings, device: torch.device) -> ServedModel:
    _check_exists(path, "DETECTOR_CHECKPOINT")
    # Imported only when a detector is configured: a classifier-only server does not load the detection package.
    from detection import load_detector
    from detection.data.voc import read_class_names

    class_names = None
    if settings.detector_class_names is not None:  # load_detector refuses them for a checkpoint with a manifest
        try:
            class_names = read_class_names(settings.detector_class_names)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"DETECTOR_CLASS_NAMES: {error}") from error
    try:
        # A torchvision .pth is converted in memory at every start; `python -m detection.convert` saves that once.
        model, manifest = load_detector(path, class_names=class_names)
    except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"DETECTOR_CHECKPOINT: cannot load {path}: {error}") from error
    model = model.to(device)
    if settings.optimize or settings.bf16:
        model.optimize_for_inference(fold_bn=settings.optimize, channels_last=settings.optimize, bf16=settings.bf16)
    name = served_name(path, manifest, setting=settings.detector_name)
    log.info("detector %s (%s, %s) loaded from %s on %s", name, manifest["architecture"],
             manifest["architecture_kwargs"].get("backbone"), path, device)  # fmt: skip
    return ServedModel(role="detector", name=name, version=file_version(path), path=path, manifest=manifest,
                       predictor=DetectorPredictor(model, device=device))  # fmt: skip
