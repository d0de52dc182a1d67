"""The serving checkpoint shared by classifiers and detectors: safetensors weights plus a JSON manifest.

One `.safetensors` file: the tensors, and in its header the manifest (architecture and its keyword
arguments, class names, preprocessing, provenance, measured metrics, format version). Loading never
unpickles anything. Training checkpoints (optimizer, RNG, ...) are a separate, resumable format.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from backbone.files import write_atomically
from backbone.resnet import ResNet
from backbone.weights import CheckpointError, load_checked

FORMAT_NAME = "resdet.checkpoint"
FORMAT_VERSION = 1
KINDS = ("classifier", "detector")
REQUIRED_FIELDS = ("format", "format_version", "kind", "architecture", "class_names")


def make_manifest(
    *,
    kind: str,
    architecture: str,
    architecture_kwargs: Mapping[str, Any],
    class_names: list[str],
    preprocessing: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a manifest; everything in it must be JSON-serialisable."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "architecture": architecture,
        "architecture_kwargs": dict(architecture_kwargs),
        "class_names": list(class_names),
        "preprocessing": dict(preprocessing or {}),
        "provenance": dict(provenance or {}),
        "metrics": dict(metrics or {}),
    }


def save_checkpoint(path: str | os.PathLike, *, state_dict: Mapping[str, torch.Tensor], manifest: Mapping) -> Path:
    """Write atomically (`backbone.files.write_atomically`): a crash never leaves half a file."""
    # safetensors refuses tensors that share storage (tied or viewed weights): store plain copies.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state_dict.items()}
    metadata = {"resdet_manifest": json.dumps(manifest, sort_keys=True)}
    return write_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate only the manifest (cheap: the header, not the tensors)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable resdet checkpoint (corrupt or truncated?): {error}") from error
    return _validate_manifest(metadata, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state_dict, manifest); errors name the file and what is wrong with it."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            manifest = _validate_manifest(handle.metadata() or {}, path)
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable resdet checkpoint (corrupt or truncated?): {error}") from error
    return state_dict, manifest


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _validate_manifest(metadata: Mapping[str, str], path: Path) -> dict[str, Any]:
    if "resdet_manifest" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file without a resdet manifest")
    try:
        manifest = json.loads(metadata["resdet_manifest"])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: manifest is not valid JSON: {error}") from error
    missing = [field for field in REQUIRED_FIELDS if field not in manifest]
    if missing:
        raise CheckpointError(f"{path}: manifest lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT_NAME:
        raise CheckpointError(f"{path}: format is {manifest['format']!r}, expected {FORMAT_NAME!r}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {manifest['format_version']} is newer than this resdet reads "
            f"({FORMAT_VERSION}); upgrade resdet"
        )
    if manifest["kind"] not in KINDS:
        raise CheckpointError(f"{path}: kind {manifest['kind']!r} is not one of {KINDS}")
    return manifest


def save_classifier(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    architecture: str,
    class_names: list[str],
    preprocessing: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Save a ResNet classifier; its full constructor kwargs go into the manifest."""
    manifest = make_manifest(
        kind="classifier",
        architecture=architecture,
        architecture_kwargs=model.config,
        class_names=class_names,
        preprocessing=preprocessing,
        provenance=provenance,
        metrics=metrics,
    )
    return save_checkpoint(path, state_dict=model.state_dict(), manifest=manifest)


def load_classifier(path: str | os.PathLike) -> tuple[ResNet, dict[str, Any]]:
    """Rebuild a classifier from its checkpoint, in eval mode."""
    state_dict, manifest = load_checkpoint(path)
    if manifest["kind"] != "classifier":
        raise CheckpointError(f"{path} holds a {manifest['kind']}, not a classifier")
    try:
        model = ResNet(**manifest["architecture_kwargs"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: architecture_kwargs do not build a ResNet: {error}") from error
    load_checked(model, state_dict, source=str(path))
    return model.eval(), manifest
