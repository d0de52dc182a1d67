"""Runtimes that run a resdet network and nothing else: eager PyTorch, torch.compile, ONNX Runtime, OpenVINO.

A `Network` takes what the network takes and returns what it returns, whatever runs it:
    classifier: normalised crops [N, 3, S, S] -> (logits [N, K],)
    detector:   the graph of detection/exportable.py, (images, image_sizes, original_sizes) ->
                (boxes, scores, labels, num_detections), postprocessing inside
Decoding, resizing, grouping, cutting and records stay with the caller (one inference path, STYLE.md).
ONNX Runtime and OpenVINO run the ONNX export of `detection.export` (made once and cached); int8 runs
only from a file written by `python -m detection.quantize`, whose manifest carries its accuracy check.
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backbone.bn_folding import optimize_for_inference
from backbone.serving_checkpoint import load_classifier, read_manifest
from detection.detector_checkpoint import load_detector
from detection.exportable import ExportableDetector
from detection.onnx_export import MANIFEST_KEY

RUNTIMES = ("torch", "torch-compile", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
AUTO = "auto"
# Where exports of checkpoints are kept between start-ups (an R50-FPN export takes minutes on 2 cores).
CACHE_ENV = "RESDET_CACHE"
# MANIFEST_KEY: the ONNX metadata key (detection.onnx_export), also the OpenVINO rt_info key
# The files a runtime reads directly, and which runtimes read them (OpenVINO also reads ONNX, QDQ int8 included).
GRAPH_SUFFIXES = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",)}
# What an int8 model's manifest must say of its accuracy check (detection.quantize writes them all).
ACCURACY_CHECK_KEYS = ("runtime", "metric", "fp32", "int8", "drop", "max_drop")


class RuntimeChoiceError(ValueError):
    """A runtime or precision that cannot run this model here; the message says what to do instead."""


def installed(runtime: str) -> bool:
    """Whether the runtime's package imports here (torch and torch.compile always do)."""
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(runtime)
    return module is None or importlib.util.find_spec(module) is not None


def pick_runtime(requested: str, *, precision: str) -> str:
    """The runtime `auto` stands for: a fixed rule from bench/runtimes.py (docs/BENCHMARKS.md), never a
    measurement at start-up. OpenVINO was the fastest at every precision on the detector's graph and at
    bf16 and int8 on the classifier; where it is absent, ONNX Runtime (fp32, int8), else eager PyTorch."""
    if requested not in (AUTO, *RUNTIMES):
        raise RuntimeChoiceError(f"runtime {requested!r}: choose one of {', '.join((AUTO, *RUNTIMES))}")
    if precision not in PRECISIONS:
        raise RuntimeChoiceError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if requested != AUTO:
        if not installed(requested):
            raise RuntimeChoiceError(
                f"runtime {requested!r} is not installed: pip install 'resdet[runtimes]' (openvino) "
                "or 'resdet[export]' (onnxruntime), or choose torch (RUNTIME=torch in the service, --runtime torch in "
                "detection.predict)"
            )
        return requested
    if installed("openvino"):
        return "openvino"
    if precision != "bf16" and installed("onnxruntime"):
        return "onnxruntime"
    return "torch"


# What bench.runtimes measured of OpenVINO against the others (docs/BENCHMARKS.md), by the kind of network it runs.
OPENVINO_MEASURED = {
    "detector": "fastest on the detector's graph at every precision",
    "classifier": "fastest on ResNet-50 at bf16 and int8; at fp32 ONNX Runtime measured about as fast or faster",
}


def pick_reason(requested: str, chosen: str, *, kind: str, precision: str, quantized: bool) -> str:
    """Why `chosen` runs the `kind` ("detector" or "classifier") network, in one line for /models and the predict
    settings: the rule, never a timing."""
    if quantized:
        return f"an int8 model runs under the runtime its accuracy check was measured under ({chosen})"
    if requested != AUTO:
        return f"asked for {chosen}"
    if chosen == "openvino":
        return f"auto: OpenVINO is installed ({OPENVINO_MEASURED[kind]}, docs/BENCHMARKS.md)"
    if chosen == "onnxruntime":
        return "auto: OpenVINO is not installed, ONNX Runtime is (pip install 'resdet[runtimes]' for OpenVINO)"
    if precision == "bf16" and installed("onnxruntime"):
        return "auto: OpenVINO is not installed and ONNX Runtime has no bf16 CPU kernels: eager PyTorch"
    return "auto: neither OpenVINO nor ONNX Runtime is installed: eager PyTorch"


def accuracy_check(
    manifest: dict[str, Any], *, name: str, required: tuple[str, ...] = ACCURACY_CHECK_KEYS
) -> dict[str, Any]:
    """The "quantization" section detection.quantize writes (fp32 and int8 figures, the allowed drop), or
    RuntimeChoiceError naming what is missing: a server runs int8 only with its whole accuracy check
    (detection.quantize itself loads its model to score it before the int8 figure exists: `required`)."""
    check = manifest.get("quantization")
    if not isinstance(check, dict):
        raise RuntimeChoiceError(
            f"{name} carries no int8 accuracy check ('quantization' in its manifest): write it with "
            "`python -m detection.quantize`, or serve its checkpoint (.safetensors)"
        )
    missing = [key for key in required if key not in check]
    if missing:
        raise RuntimeChoiceError(f"{name}: its int8 accuracy check lacks {', '.join(missing)}; quantize it again")
    return check


def require_eager(runtime: str, option: str) -> None:
    """Options that change the eager model's forward pass (test-time refinements) cannot reach a graph. 'auto' is
    refused too: it picks a graph runtime wherever OpenVINO or ONNX Runtime is installed, and an option that worked
    or not by what happens to be installed would be a surprise."""
    if runtime != "torch":
        runs = "picks an exported graph's runtime" if runtime == AUTO else "runs the exported graph"
        raise RuntimeChoiceError(
            f"{option} needs the eager PyTorch model; runtime {runtime!r} {runs}: use runtime 'torch' or leave the "
            "option off"
        )


@dataclass
class Network:
    """The network of one model under one runtime and precision; call it with the network's inputs. Made by
    `load_network`, which checks every choice at once; the export and compile (`build`) may wait for later."""

    kind: str  # "detector" or "classifier"
    runtime: str
    precision: str
    manifest: dict[str, Any]
    make_run: Callable[[], Callable[..., tuple[torch.Tensor, ...]]] = field(repr=False)
    requested: str = AUTO
    reason: str = ""
    pending: str = ""  # what `build` still has to do, in words (for a server's /readyz)
    _run: Callable[..., tuple[torch.Tensor, ...]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def build(self) -> None:
        """Export (once per checkpoint, cached) and compile now; calls from several threads build it once."""
        with self._lock:
            if self._run is None:
                self._run = self.make_run()
                self.pending = ""

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._run is None:
            self.build()
        return self._run(*inputs)

    def describe(self) -> dict[str, Any]:
        """What /models and the predict settings report: what runs, what was asked and why this runs, and for
        int8 the accuracy check from the model's manifest."""
        described = {
            "runtime": self.runtime,
            "precision": self.precision,
            "requested_runtime": self.requested,
            "reason": self.reason,
        }
        if "quantization" in self.manifest:
            described["quantization"] = self.manifest["quantization"]
        return described


def load_network(
    source: str | os.PathLike,
    *,
    runtime: str = AUTO,
    precision: str = "fp32",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    build: bool = True,
) -> Network:
    """A checkpoint (.safetensors) or its export (.onnx) at fp32 or bf16, or a model from detection.quantize
    (.onnx, OpenVINO .xml) at int8, under `runtime` ('auto': `pick_runtime`). Errors say what to use instead.
    `build=False` checks every choice now and leaves the export and compile to `Network.build` (a server
    answers /readyz meanwhile)."""
    source, requested = Path(source), runtime
    threads = threads or torch.get_num_threads()
    graph = source.suffix in GRAPH_SUFFIXES
    manifest = read_graph_manifest(source) if graph else read_manifest(source)
    quantized = "quantization" in manifest
    if quantized != (precision == "int8"):
        raise RuntimeChoiceError(
            f"{source.name} is an int8 model from detection.quantize: ask for precision int8"
            if quantized
            else f"{source.name}: int8 runs only from a model written by `python -m detection.quantize` (which "
            "checks its accuracy); quantize the checkpoint and use the file it writes"
        )
    if quantized:  # its accuracy check holds for the runtime it was measured under, and no other
        measured = accuracy_check(manifest, name=source.name, required=("runtime",))["runtime"]
        if runtime not in (AUTO, measured):
            raise RuntimeChoiceError(f"{source.name} was quantized and checked for {measured}, not {runtime!r}")
        runtime = measured
    chosen = pick_runtime(runtime, precision=precision)
    if graph and runtime == AUTO and chosen not in GRAPH_SUFFIXES[source.suffix]:
        chosen = pick_runtime(GRAPH_SUFFIXES[source.suffix][0], precision=precision)
    if graph and chosen not in GRAPH_SUFFIXES[source.suffix]:
        raise RuntimeChoiceError(
            f"{source.name} runs under {' or '.join(GRAPH_SUFFIXES[source.suffix])}, not {chosen!r}"
            + ("" if quantized else ": give the checkpoint (.safetensors) for the PyTorch runtimes")
        )
    if chosen == "onnxruntime" and precision == "bf16":
        raise RuntimeChoiceError(
            "onnxruntime has no bf16 CPU kernels: use openvino, torch or torch-compile for bf16, or run it at fp32 "
            "(BF16=false in the service, --precision fp32 in detection.predict)"
        )
    bf16 = precision == "bf16"
    if chosen in ("torch", "torch-compile"):
        compiled = chosen == "torch-compile"
        pending = "compiling it with torch.compile" if compiled else ""

        def make_run() -> Callable[..., tuple]:
            return _torch_runner(source, manifest["kind"], compiled=compiled, bf16=bf16)
    else:
        cached = graph or export_path(source, cache_dir=cache_dir).is_file()
        if not cached:  # an export cache it cannot write stops the start, not a warm-up minutes later
            writable_export_root(cache_dir)
        # said to clients (/readyz): no path of the server's in it
        exporting = "" if cached else "exporting it to ONNX (first start; kept for later ones), then "
        pending = f"{exporting}compiling it for {chosen}"

        def make_run() -> Callable[..., tuple]:
            if graph:
                return _graph_runner(source, runtime=chosen, bf16=bf16, threads=threads)
            path = exported_onnx(source, cache_dir=cache_dir)
            try:
                return _graph_runner(path, runtime=chosen, bf16=bf16, threads=threads)
            except Exception as error:  # exports are written whole (exported_onnx): a file damaged since, named
                # by its name alone (said to clients on /readyz) and in one line (OpenVINO's messages take several)
                lines = [line.strip() for line in str(error).replace(str(path), path.name).splitlines() if line.strip()]
                raise RuntimeChoiceError(
                    f"{chosen} cannot read {path.name}, the export of {source.name} in {CACHE_ENV} "
                    f"({lines[-1] if lines else type(error).__name__}); if that file was damaged, delete it and the "
                    "next start exports the checkpoint again"
                ) from error

    reason = pick_reason(requested, chosen, kind=manifest["kind"], precision=precision, quantized=quantized)
    network = Network(manifest["kind"], chosen, precision, manifest, make_run, requested, reason, pending)
    if build:
        network.build()
    return network


def _torch_runner(checkpoint: Path, kind: str, *, compiled: bool, bf16: bool) -> Callable[..., tuple]:
    """Today's eager path (optimize_for_inference), or the same module through inductor with frozen weights."""
    if kind == "detector":
        detector, _ = load_detector(checkpoint)
        # fusion's oneDNN kernels switch themselves off under autocast; inductor fuses on its own.
        module = ExportableDetector(detector.optimize_for_inference(fuse=not (bf16 or compiled))).eval()
    else:
        classifier, _ = load_classifier(checkpoint)
        module = optimize_for_inference(classifier, channels_last=not compiled)
    if compiled:
        # freezing: weights become constants that inductor folds (BN already folded) and lays out for oneDNN.
        module = torch.compile(module, dynamic=True, options={"freezing": True})
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if kind == "classifier" and not compiled:
            inputs = (inputs[0].contiguous(memory_format=torch.channels_last),)
        with torch.inference_mode(), autocast:
            outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(output.float() if output.is_floating_point() else output for output in outputs)

    return run


def _graph_runner(path: Path, *, runtime: str, bf16: bool, threads: int) -> Callable[..., tuple]:
    """ONNX Runtime on an .onnx file, or OpenVINO on an .onnx or .xml file: numpy in, torch tensors out."""
    if runtime == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [value.name for value in session.get_inputs()]

        def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = session.run(None, {name: value.numpy() for name, value in zip(names, inputs)})
            return tuple(torch.from_numpy(output) for output in outputs)

        return run
    core = openvino_core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with lock:
            results = request.infer([value.numpy() for value in inputs])
            return tuple(torch.from_numpy(results[output].copy()) for output in compiled.outputs)

    return run


def openvino_core():
    """An OpenVINO Core; its telemetry (and NNCF's) stays off: reading files through Core sends nothing,
    and NNCF sends only where neither NNCF_CI nor NNCF_DEV is set, so resdet sets NNCF_CI before importing it."""
    os.environ.setdefault("NNCF_CI", "1")
    import openvino

    return openvino.Core()


def read_graph_manifest(path: Path) -> dict[str, Any]:
    """The checkpoint's manifest that detection.export or detection.quantize wrote into an .onnx (metadata)
    or OpenVINO .xml (rt_info); a quantized model's holds a "quantization" section with its accuracy check."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".onnx":
        import onnx

        metadata = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
        text = metadata.get(MANIFEST_KEY)
    else:
        model = openvino_core().read_model(str(path))
        text = model.get_rt_info([MANIFEST_KEY]).astype(str) if model.has_rt_info([MANIFEST_KEY]) else None
    if not text:
        raise RuntimeChoiceError(
            f"{path.name} was not written by detection.export or detection.quantize (no resdet manifest in it)"
        )
    return json.loads(text)


def export_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exports are kept: `cache_dir`, else $RESDET_CACHE, else ~/.cache/resdet; never beside the checkpoint
    (a model folder may be mounted read-only), and kept across restarts."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resdet") / "exports"


def writable_export_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`export_root`, made if absent, or RuntimeChoiceError naming RESDET_CACHE where this user cannot write it."""
    root = export_root(cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(root, error.strerror) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise _unwritable(root, "not writable by this user")
    return root


def _unwritable(root: Path, why: str | None) -> RuntimeChoiceError:
    return RuntimeChoiceError(f"cannot write the export cache {root} ({why}): set {CACHE_ENV} to a writable folder")


def export_path(checkpoint: Path, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached export's name: the checkpoint's content and the exporter's code (a changed exporter makes a
    new file, never a stale one)."""
    from detection import exportable, onnx_export

    digest = hashlib.sha256(checkpoint.read_bytes())
    for module in (onnx_export, exportable):
        digest.update(Path(module.__file__).read_bytes())
    return export_root(cache_dir) / f"{checkpoint.stem}-{digest.hexdigest()[:16]}.onnx"


def exported_onnx(checkpoint: Path, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint's ONNX export, written once per checkpoint content and exporter code. Two processes
    starting at once: the second waits on the first's lock and reads its file; an interrupted export leaves
    only a scratch folder, never a partial file under the final name."""
    from detection import onnx_export

    path = export_path(checkpoint, cache_dir=cache_dir)
    if path.is_file():
        return path
    writable_export_root(cache_dir)
    try:
        lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 (held until the export is in place)
    except OSError as error:
        raise _unwritable(path.parent, error.strerror) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():  # the process that held the lock may have written it meanwhile
            onnx_export.quiet_exporter()
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                os.replace(onnx_export.export_checkpoint(checkpoint, Path(scratch) / path.name).path, path)
    return path
