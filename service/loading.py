"""Turn the configured checkpoints into served models, with errors that name the file and the setting."""

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from backbone.devices import native_bf16, resolve_device
from backbone.serving_checkpoint import load_classifier, read_manifest
from backbone.weights import CheckpointError
from service.batching import BatchingEngine
from service.predictors import ClassifierPredictor, DetectorPredictor
from service.settings import ENSEMBLE_KEY, Settings, split_test_time

if TYPE_CHECKING:  # detection.runtimes imports onnx: imported at run time only where a runtime is asked for
    from detection.runtimes import Network

log = logging.getLogger("service")
PLAIN_OPTIONS = {ENSEMBLE_KEY: []}  # a detector DETECTOR_TEST_TIME does not name: the plain detector


# What serves: resdet checkpoints, a torchvision .pth (a setting must name it), and int8 models of detection.quantize.
MODEL_SUFFIXES = (".safetensors", ".onnx", ".xml")
QUANTIZED_SUFFIXES = (".onnx", ".xml")


class ModelLoadError(RuntimeError):
    """A configured model cannot be served; the message names the file and the setting."""


class UnusableFile(ModelLoadError):
    """A checkpoint path that is no readable regular file (a symlink loop, FIFO, device, folder, unreadable file);
    `reason` is one of a fixed set, a metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ServedModel:
    """One model as the API sees it: its identity, its manifest, its predictor and its batching engine."""

    role: str  # "detector" or "classifier"
    name: str
    version: str
    path: Path
    manifest: dict[str, Any]
    predictor: ClassifierPredictor | DetectorPredictor
    precision: str = "float32"  # "bfloat16" under bf16 autocast (BF16=true, or auto on native bf16); "int8"
    runtime: dict[str, Any] | None = None  # what runs its network and why (Network.describe's keys)
    network: Any = None  # the detection.runtimes Network, whose export and compile `build` runs before warm-up
    test_time: dict[str, Any] | None = None  # the detector's test-time options (DETECTOR_TEST_TIME), as /models says
    engine: BatchingEngine | None = field(default=None)
    # Requests holding this version: a reload retires it (stops its engine) only once none is left.
    _in_flight: int = field(default=0, init=False, repr=False)
    _idle: asyncio.Condition = field(default_factory=asyncio.Condition, init=False, repr=False)

    @contextlib.asynccontextmanager
    async def in_use(self) -> AsyncIterator["ServedModel"]:
        """Hold this version for one request; counted before the first await, so a swap cannot slip in between."""
        self._in_flight += 1
        try:
            yield self
        finally:
            self._in_flight -= 1
            async with self._idle:
                self._idle.notify_all()

    async def wait_idle(self) -> None:
        """Return once no request holds this version."""
        async with self._idle:
            await self._idle.wait_for(lambda: self._in_flight == 0)

    def build(self) -> None:
        """Export and compile the network where a runtime other than eager PyTorch runs it (minutes at a first
        start for an R50-FPN); nothing for eager models. Called in a thread before the warm-up batch."""
        if self.network is not None:
            self.network.build()

    def pending(self) -> str:
        """What is left before this model answers, in words for /readyz."""
        work = self.network.pending if self.network is not None else ""
        return f"{self.role} {self.name}: {work or 'its warm-up batch'}"

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
            "precision": self.precision,
            **({"runtime": self.runtime} if self.runtime is not None else {}),
            **({"test_time": self.test_time} if self.test_time is not None else {}),
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
    """The first 12 hex digits of the file's SHA-256: the exact weights being served.

    Opened without blocking and hashed only when it is a regular file: a FIFO would block the reader until a
    writer came, and a link to /dev/zero would be hashed forever (UnusableFile instead)."""
    digest = hashlib.sha256()
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise UnusableFile(f"{path} is {_file_kind(mode)}, not a regular file", reason="not_a_regular_file")
    with os.fdopen(descriptor, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():  # an OpenVINO IR: the graph in .xml, its weights beside it
        with open(weights, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:12]}"


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_checkpoint_file(path: Path, setting: str) -> None:
    """ModelLoadError unless `path` is a regular file this user can read; a symlink to one is fine (Kubernetes
    mounts are links). Only the file's type is looked at (stat): nothing is opened, so a FIFO cannot block."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{setting}: checkpoint not found: {path}") from None
    except OSError as error:  # ELOOP (a symlink loop), EACCES on a folder on the way, ...
        reason = "symlink_loop" if error.errno == errno.ELOOP else "unreadable"
        raise UnusableFile(f"{setting}: cannot read {path}: {error.strerror}", reason=reason) from None
    if not stat.S_ISREG(status.st_mode):
        raise UnusableFile(
            f"{setting}: {path} is {_file_kind(status.st_mode)}, not a regular file", reason="not_a_regular_file"
        )
    if not os.access(path, os.R_OK):
        mode = stat.filemode(status.st_mode)
        raise UnusableFile(
            f"{setting}: checkpoint {path} ({mode}) is not readable by this user (uid {os.getuid()})",
            reason="unreadable",
        )


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint to serve and the setting that named it; `role` None means the manifest's kind decides."""

    path: Path
    setting: str
    role: str | None = None
    default: bool = False  # the model of its role that requests without ?model= get
    name: str | None = None  # DETECTOR_NAME / CLASSIFIER_NAME; else served_name's rule
    class_names: Path | None = None  # DETECTOR_CLASS_NAMES, for a torchvision .pth


def configured_sources(settings: Settings) -> list[ModelSource]:
    """Every checkpoint the settings name, each file once, the single-model settings first (the defaults)."""
    sources = []
    if settings.classifier_checkpoint is not None:
        sources.append(ModelSource(settings.classifier_checkpoint, setting="CLASSIFIER_CHECKPOINT", role="classifier",
                                   default=True, name=settings.classifier_name))  # fmt: skip
    if settings.detector_checkpoint is not None:
        sources.append(ModelSource(settings.detector_checkpoint, setting="DETECTOR_CHECKPOINT", role="detector",
                                   default=True, name=settings.detector_name,
                                   class_names=settings.detector_class_names))  # fmt: skip
    sources += [ModelSource(path, setting="MODEL_CHECKPOINTS") for path in settings.model_checkpoints]
    if settings.models_dir is not None:
        if not settings.models_dir.is_dir():
            raise ModelLoadError(f"MODELS_DIR: not a folder: {settings.models_dir}")
        # checkpoints, and int8 models of detection.quantize (an OpenVINO IR by its .xml, its .bin beside it)
        try:
            checkpoints = sorted(path for path in settings.models_dir.iterdir() if path.suffix in MODEL_SUFFIXES)
        except OSError as error:  # a folder this user cannot list
            raise ModelLoadError(f"MODELS_DIR: cannot read {settings.models_dir}: {error.strerror}") from None
        # dot files are writers' temporaries (save_checkpoint writes `.NAME.xxxx` and renames it into place)
        sources += [ModelSource(path, setting="MODELS_DIR") for path in checkpoints if not path.name.startswith(".")]
    if not sources:
        raise ModelLoadError(
            "no model configured: set DETECTOR_CHECKPOINT, CLASSIFIER_CHECKPOINT, MODEL_CHECKPOINTS or MODELS_DIR"
        )
    unique: dict[str, ModelSource] = {}
    for source in sources:  # a default checkpoint that also sits in MODELS_DIR is served once, as the default
        # os.path.realpath, not Path.resolve: a symlink loop is loaded (and refused) later, not a crash here
        unique.setdefault(os.path.realpath(source.path), source)
    return list(unique.values())


def load_model(source: ModelSource, *, settings: Settings, device: torch.device) -> ServedModel:
    """One checkpoint as a served model (no engine yet), or ModelLoadError naming the file and the setting."""
    check_checkpoint_file(source.path, source.setting)
    if source.path.suffix in QUANTIZED_SUFFIXES:
        return _load_quantized(source, device=device)
    role = source.role or _manifest_kind(source)
    loader = _load_detector if role == "detector" else _load_classifier
    return loader(source, settings=settings, device=device)


def _load_quantized(source: ModelSource, *, device: torch.device) -> ServedModel:
    """An int8 model written by detection.quantize, run by the runtime its accuracy check was measured under
    (RUNTIME chooses what runs a checkpoint; an int8 model's figures hold for one runtime only). Refused, in one
    line, without that check or where its runtime is not installed."""
    from detection.runtime_predictor import RuntimePredictor
    from detection.runtimes import accuracy_check, load_network, read_graph_manifest

    path, setting = source.path, source.setting
    try:
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise ValueError(f"its weights {path.with_suffix('.bin').name} are not beside it")
        manifest = read_graph_manifest(path)
        accuracy_check(manifest, name=path.name)
        if source.role is not None and manifest.get("kind") != source.role:
            raise ValueError(f"it holds a {manifest.get('kind')}, and {setting} names a {source.role}")
        if device.type != "cpu":
            raise ValueError(f"int8 models run on the CPU, and DEVICE is {device}")
        network = load_network(path, runtime="auto", precision="int8", build=False)
    except Exception as error:  # a file from anywhere: whatever its reader raises becomes one line naming it
        # OpenVINO's messages open with "Exception from <its source file>" lines and end with what went wrong
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        said = [line for line in lines if not line.startswith("Exception from ")]
        detail = (said or lines or [type(error).__name__])[-1]
        raise ModelLoadError(f"{setting}: cannot serve {path}: {detail}") from error
    role = manifest["kind"]
    if role == "detector":
        predictor = DetectorPredictor(RuntimePredictor.from_network(network))
    else:
        predictor = ClassifierPredictor(
            None, class_names=manifest["class_names"], preprocessing=manifest.get("preprocessing", {}),
            device=device, optimize=False, bf16=False, network=network,
        )  # fmt: skip
    name = served_name(path, manifest, setting=source.name)
    log.info("%s %s (int8 under %s) loaded from %s", role, name, network.runtime, path)
    return ServedModel(role=role, name=name, version=file_version(path), path=path, manifest=manifest,
                       predictor=predictor, precision="int8", runtime=network.describe(), network=network)  # fmt: skip


def _manifest_kind(source: ModelSource) -> str:
    if source.path.suffix != ".safetensors":  # no manifest to read: a torchvision .pth, which holds a detector
        return "detector"
    try:
        return read_manifest(source.path)["kind"]
    except (CheckpointError, OSError) as error:
        raise ModelLoadError(f"{source.setting}: cannot load {source.path}: {error}") from error


def use_bf16(settings: Settings, device: torch.device) -> bool:
    """BF16=auto: bf16 autocast where `device` computes bf16 in hardware (CUDA with bf16, CPUs with AVX512-BF16
    or AMX), fp32 elsewhere, where emulated bf16 is slower than fp32. docs/BENCHMARKS.md, "bf16", has the
    accuracy check this default rests on."""
    return native_bf16(device) if settings.bf16 == "auto" else settings.bf16


def _precision(bf16: bool) -> str:
    return "bfloat16" if bf16 else "float32"


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


def _load_classifier(source: ModelSource, *, settings: Settings, device: torch.device) -> ServedModel:
    path, setting = source.path, source.setting
    try:  # loaded under every runtime: a checkpoint that cannot load is refused at start, not at the export
        model, manifest = load_classifier(path)
    except (CheckpointError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"{setting}: cannot load {path}: {error}") from error
    bf16 = use_bf16(settings, device)
    network, runtime = _runtime_network(source, settings=settings, device=device, bf16=bf16)
    predictor = ClassifierPredictor(
        model if network is None else None,  # a runtime runs the logits: the eager model is not kept
        class_names=manifest["class_names"],
        preprocessing=manifest.get("preprocessing", {}),
        device=device,  # the CPU wherever a Network runs (_runtime_network)
        optimize=settings.optimize,
        bf16=bf16,
        network=network,
    )
    name = served_name(path, manifest, setting=source.name)
    log.info("classifier %s (%s, %s) loaded from %s on %s", name, manifest["architecture"], runtime["runtime"], path,
             predictor.device)  # fmt: skip
    return ServedModel(role="classifier", name=name, version=file_version(path), path=path, manifest=manifest,
                       predictor=predictor, precision=_precision(bf16), runtime=runtime, network=network)  # fmt: skip


def _runtime_network(
    source: ModelSource, *, settings: Settings, device: torch.device, bf16: bool
) -> tuple["Network | None", dict[str, Any]]:
    """What runs a checkpoint's network under RUNTIME, detector or classifier, and what /models reports of it:
    None for eager PyTorch (the caller's model runs it on `device`), else a detection.runtimes Network whose export
    and compile wait for the warm-up (ServedModel.build), so /readyz answers meanwhile. Every runtime but eager
    PyTorch runs on the CPU: on a GPU, auto means eager PyTorch there, and another runtime is refused."""
    precision, requested = ("bf16" if bf16 else "fp32"), settings.runtime
    eager = {"runtime": "torch", "precision": precision, "requested_runtime": requested}
    if requested == "torch":  # detection.runtimes is not imported: it needs the `export` extra (onnx)
        return None, {**eager, "reason": "asked for torch"}
    if device.type != "cpu":
        if requested == "auto":
            return None, {**eager, "reason": f"auto: DEVICE is {device}: eager PyTorch on it (the other runtimes "
                                             "run on the CPU)"}  # fmt: skip
        raise ModelLoadError(
            f"{source.setting}: RUNTIME={requested} runs on the CPU, and DEVICE is {device}: set RUNTIME=torch or "
            "auto to serve on it, or DEVICE=cpu"
        )
    from detection.runtimes import RuntimeChoiceError, load_network

    try:
        network = load_network(source.path, runtime=settings.runtime, precision=precision, build=False)
    except (RuntimeChoiceError, CheckpointError, OSError) as error:
        raise ModelLoadError(f"{source.setting}: RUNTIME={settings.runtime}: {error}") from error
    return network, network.describe()


def _load_detector(source: ModelSource, *, settings: Settings, device: torch.device) -> ServedModel:
    path, setting = source.path, source.setting
    # Imported only when a detector is configured: a classifier-only server does not load the detection package.
    from detection import load_detector
    from detection.data.voc import read_class_names

    class_names = None
    if source.class_names is not None:  # load_detector refuses them for a checkpoint with a manifest
        try:
            class_names = read_class_names(source.class_names)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"DETECTOR_CLASS_NAMES: {error}") from error
    try:
        # A torchvision .pth is converted in memory at every start; `python -m detection.convert` saves that once.
        model, manifest = load_detector(path, class_names=class_names)
    except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"{setting}: cannot load {path}: {error}") from error
    from detection.predictor import Predictor

    name = served_name(path, manifest, setting=source.name)
    test_time, members = split_test_time(settings.detector_test_time.get(name, PLAIN_OPTIONS))
    model = _with_members(model, members, name=name, class_names=class_names)
    bf16 = use_bf16(settings, device)
    network, runtime = _runtime_network(source, settings=settings, device=device, bf16=bf16)
    if network is None:
        try:
            predictor = Predictor(
                model, device=device, precision=runtime["precision"], optimize=settings.optimize, test_time=test_time
            )
        except ValueError as error:  # an option this model cannot take (maxout on FPN)
            raise ModelLoadError(f"DETECTOR_TEST_TIME: {name!r}: {error}") from error
    else:
        from detection.runtime_predictor import RuntimePredictor

        predictor = RuntimePredictor(model, network)
    log.info("detector %s (%s, %s) loaded from %s on %s, test time %s", name, manifest["architecture"],
             manifest["architecture_kwargs"].get("backbone"), path, device, test_time)  # fmt: skip
    described = {**test_time.to_dict(), ENSEMBLE_KEY: [member.name for member in members]}
    return ServedModel(role="detector", name=name, version=file_version(path), path=path, manifest=manifest,
                       predictor=DetectorPredictor(predictor), precision=_precision(bf16),
                       runtime=runtime, network=network, test_time=described)  # fmt: skip


def _with_members(model: Any, members: list[Path], *, name: str, class_names: list[str] | None) -> Any:
    """The model, or the ensemble of it and the checkpoints DETECTOR_TEST_TIME's ensemble_checkpoints names."""
    if not members:
        return model
    from detection import load_detector
    from detection.ensemble import EnsembleDetector

    setting = f"DETECTOR_TEST_TIME: {name!r}: {ENSEMBLE_KEY}"
    loaded = [model]
    for member in members:
        check_checkpoint_file(member, setting)
        try:
            loaded.append(load_detector(member, class_names=class_names)[0])
        except (CheckpointError, OSError, ValueError, RuntimeError, KeyError) as error:
            raise ModelLoadError(f"{setting}: cannot load {member}: {error}") from error
    try:
        return EnsembleDetector(loaded)
    except ValueError as error:  # members that cannot be averaged with the model, named
        raise ModelLoadError(f"{setting}: {error}") from error
