"""Runtimes that run a resdet network and nothing else: eager PyTorch, torch.compile, ONNX Runtime, OpenVINO.

A `Network` takes what the network takes and returns what it returns, whatever runs it:
    classifier: normalised crops [N, 3, S, S] -> (logits [N, K],)
    detector:   the graph of detection/exportable.py, (images, image_sizes, original_sizes) ->
                (boxes, scores, labels, num_detections), postprocessing inside
Decoding, resizing, grouping, cutting and records stay with the caller (one inference path, STYLE.md).
ONNX Runtime and OpenVINO run the ONNX export of `detection.export` (made once and cached); int8 runs
only from a file written by `python -m detection.quantize`, whose manifest carries its accuracy check.
"""

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
                "or 'resdet[export]' (onnxruntime), or choose --runtime torch"
            )
        return requested
    if installed("openvino"):
        return "openvino"
    if precision != "bf16" and installed("onnxruntime"):
        return "onnxruntime"
    return "torch"


def require_eager(runtime: str, option: str) -> None:
    """Options that change the eager model's forward pass (the test-time ladder, ensembles) cannot reach a graph;
    "auto" runs one wherever an exporter's runtime is installed, so only "torch" takes them."""
    if runtime != "torch":
        raise RuntimeChoiceError(
            f"{option} needs the eager PyTorch model; runtime {runtime!r} runs an exported graph: "
            "use runtime 'torch' with the .safetensors checkpoint, or leave the option off"
        )


@dataclass
class Network:
    """The network of one model under one runtime and precision; call it with the network's inputs."""

    kind: str  # "detector" or "classifier"
    runtime: str
    precision: str
    manifest: dict[str, Any]
    run: Callable[..., tuple[torch.Tensor, ...]] = field(repr=False)
    requested: str = AUTO

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run(*inputs)

    def describe(self) -> dict[str, Any]:
        """What /models and the predict settings report: what ran, what was asked, and int8's accuracy check."""
        described = {"runtime": self.runtime, "precision": self.precision, "requested_runtime": self.requested}
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
) -> Network:
    """A checkpoint (.safetensors) or its export (.onnx) at fp32 or bf16, or a model from detection.quantize
    (.onnx, OpenVINO .xml) at int8, under `runtime` ('auto': `pick_runtime`). Errors say what to use instead."""
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
        measured = manifest["quantization"].get("runtime")
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
        raise RuntimeChoiceError("onnxruntime has no bf16 CPU kernels: use openvino, torch or torch-compile for bf16")
    if chosen in ("torch", "torch-compile"):
        run = _torch_runner(source, manifest["kind"], compiled=chosen == "torch-compile", bf16=precision == "bf16")
    else:
        path = source if graph else exported_onnx(source, cache_dir=cache_dir)
        run = _graph_runner(path, runtime=chosen, bf16=precision == "bf16", threads=threads)
    return Network(manifest["kind"], chosen, precision, manifest, run, requested=requested)


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


def exported_onnx(checkpoint: Path, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The checkpoint's ONNX export, written once per checkpoint content and exporter code."""
    from detection import exportable, onnx_export

    digest = hashlib.sha256(checkpoint.read_bytes())
    for module in (onnx_export, exportable):  # a changed exporter makes a new file, never a stale one
        digest.update(Path(module.__file__).read_bytes())
    default = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "resdet"))
    path = Path(cache_dir or default) / "exports" / f"{checkpoint.stem}-{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        onnx_export.quiet_exporter()
        path.parent.mkdir(parents=True, exist_ok=True)
        # A partial file of this process's own: two start-ups exporting at once never write one file.
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            os.replace(onnx_export.export_checkpoint(checkpoint, Path(scratch) / path.name).path, path)
    return path
