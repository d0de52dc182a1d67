"""ONNX export of our checkpoints (detector graphs with in-graph postprocessing, classifiers) and Triton
model repositories; `python -m detection.export` (detection/export.py) is the command."""

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnxscript import opset18 as op

from backbone.serving_checkpoint import load_classifier, read_manifest
from detection.detector_checkpoint import load_detector
from detection.exportable import ExportableDetector
from detection.predictor import Predictor

OPSET = 18
MANIFEST_KEY = "resdet_manifest"  # ONNX metadata_props key holding the checkpoint manifest as JSON
MAX_EXPORT_BATCH = 256  # upper bound torch.export needs for the symbolic batch; Triton's max_batch_size is separate
DETECTOR_INPUTS = ("images", "image_sizes", "original_sizes")
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
CLASSIFIER_INPUTS = ("images",)
CLASSIFIER_OUTPUTS = ("logits",)


def grouped_nms_onnx(boxes, scores, iou_threshold: float, score_threshold: float):
    """resdet::grouped_nms as ONNX NonMaxSuppression: groups are its batch, one class per group."""
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),
        op.Shape(boxes, start=1, end=2),  # keep up to every box of a group
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )  # [S, 3]: (group, class 0, index)
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


@dataclass
class ExportedModel:
    """What was written: the ONNX file, the checkpoint's kind and its manifest."""

    path: Path
    kind: str
    manifest: dict


def _save(program: torch.onnx.ONNXProgram, output: Path, manifest: dict) -> Path:
    """Write the model with the checkpoint's manifest (class names, preprocessing, ...) in its metadata."""
    program.model.metadata_props[MANIFEST_KEY] = json.dumps(manifest, sort_keys=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(output))
    return output


def export_detector(checkpoint: str | os.PathLike, output: str | os.PathLike) -> ExportedModel:
    """Detector checkpoint -> ONNX with a dynamic batch and image size, postprocessing in the graph."""
    model, manifest = load_detector(checkpoint)
    example_image = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(0))
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False)  # its inputs: the graph's
    example = predictor.batch([predictor.prepare(example_image)] * 2)
    # BN folded into the convs (numerics within 1e-6); no oneDNN fusion or channels_last: those are eager-only.
    model.optimize_for_inference(fuse=False, channels_last=False)
    divisible = model.config["size_divisible"]
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    # Padded sides are multiples of size_divisible: saying so lets every stride-2 level divide exactly.
    height = divisible * torch.export.Dim("height_blocks", min=1, max=4096 // divisible)
    width = divisible * torch.export.Dim("width_blocks", min=1, max=4096 // divisible)
    with torch.no_grad():
        program = torch.onnx.export(
            ExportableDetector(model).eval(),
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=list(DETECTOR_INPUTS),
            output_names=list(DETECTOR_OUTPUTS),
            dynamic_shapes=({0: batch, 2: height, 3: width}, {0: batch}, {0: batch}),
            custom_translation_table={torch.ops.resdet.grouped_nms.default: grouped_nms_onnx},
            verbose=False,
        )
    return ExportedModel(path=_save(program, Path(output), manifest), kind="detector", manifest=manifest)


def classifier_input_size(manifest: dict) -> int:
    """The crop side the classifier was evaluated at (service/predictors.py reads the same field)."""
    stem = manifest["architecture_kwargs"].get("stem", "imagenet")
    return int(manifest.get("preprocessing", {}).get("size", 32 if stem == "cifar" else 224))


def export_classifier(checkpoint: str | os.PathLike, output: str | os.PathLike) -> ExportedModel:
    """Classifier checkpoint -> ONNX: normalised crops [N, 3, S, S] -> logits [N, classes], dynamic N."""
    model, manifest = load_classifier(checkpoint)
    size = classifier_input_size(manifest)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(CLASSIFIER_INPUTS),
            output_names=list(CLASSIFIER_OUTPUTS),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)},),
            verbose=False,
        )
    return ExportedModel(path=_save(program, Path(output), manifest), kind="classifier", manifest=manifest)


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike) -> ExportedModel:
    """Export whatever the checkpoint holds; a file that is not a resdet checkpoint raises CheckpointError."""
    kind = read_manifest(checkpoint)["kind"]
    exporter = export_detector if kind == "detector" else export_classifier
    return exporter(checkpoint, output)


# ---- Triton Inference Server model repository

TRITON_DTYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}


def _tensor_config(value: onnx.ValueInfoProto) -> str:
    """One input/output entry: the batch dimension left out (max_batch_size > 0), symbolic sides as -1."""
    tensor = value.type.tensor_type
    dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim][1:]
    if tensor.elem_type not in TRITON_DTYPES:
        raise ValueError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton type here")
    lines = [f'    name: "{value.name}"', f"    data_type: {TRITON_DTYPES[tensor.elem_type]}"]
    if dims:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:  # one value per batch item: Triton needs a non-empty dims, reshaped away
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def triton_config(
    onnx_path: str | os.PathLike,
    *,
    name: str,
    kind: str,
    max_batch_size: int,
    max_queue_delay_us: int,
    backend: str = "onnxruntime",
) -> str:
    """config.pbtxt text whose inputs and outputs are read from the ONNX graph itself (which the OpenVINO IR
    of the same graph keeps: its tensors carry the ONNX names)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = ",\n".join(_tensor_config(value) for value in graph.input)
    outputs = ",\n".join(_tensor_config(value) for value in graph.output)
    group = (
        "instance_group [ { kind: KIND_GPU, count: 1 } ]"
        if kind == "gpu"
        else ("instance_group [ { kind: KIND_CPU, count: 2 } ]")
    )
    # the OpenVINO backend's own file name is model.xml (its weights in model.bin beside it)
    filename = 'default_model_filename: "model.xml"\n' if backend == "openvino" else ""
    return (
        f'name: "{name}"\n'
        f'backend: "{backend}"\n'
        f"{filename}"
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        # Triton batches only requests of equal shape: clients that pad to one size batch together.
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
        f"{group}\n"
    )


def write_triton_repository(
    checkpoint: str | os.PathLike,
    repository: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 5000,
) -> Path:
    """Write repository/<name>/1/model.onnx, config.pbtxt (GPU instances) and configs/cpu.pbtxt
    (CPU instances; `tritonserver --model-config-name=cpu`), and where OpenVINO is installed (the `runtimes`
    extra) the same graph for Triton's OpenVINO backend beside it: repository/<name>_openvino/1/model.xml
    (+ .bin) and its config.pbtxt (CPU instances). Returns repository/<name>."""
    name = name or Path(checkpoint).stem
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r}: use letters, digits, '_' and '-' only")
    model_dir = Path(repository) / name
    exported = export_checkpoint(checkpoint, model_dir / "1" / "model.onnx")
    for path, device in ((model_dir / "config.pbtxt", "gpu"), (model_dir / "configs" / "cpu.pbtxt", "cpu")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            triton_config(
                exported.path,
                name=name,
                kind=device,
                max_batch_size=max_batch_size,
                max_queue_delay_us=max_queue_delay_us,
            )  # fmt: skip
        )
    from detection.runtimes import installed

    if installed("openvino"):
        write_openvino_entry(exported.path, Path(repository) / f"{name}_openvino", max_batch_size=max_batch_size,
                             max_queue_delay_us=max_queue_delay_us)  # fmt: skip
    return model_dir


def write_openvino_entry(onnx_path: Path, model_dir: Path, *, max_batch_size: int, max_queue_delay_us: int) -> Path:
    """The ONNX graph as an OpenVINO IR in model_dir/1/model.xml (+ .bin), float32 weights as exported, the
    resdet manifest in its rt_info (detection.runtimes reads it there), and its config.pbtxt for the OpenVINO
    backend."""
    import openvino

    from detection.runtimes import openvino_core

    model = openvino_core().read_model(str(onnx_path))
    manifest = {prop.key: prop.value for prop in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    model.set_rt_info(manifest[MANIFEST_KEY], [MANIFEST_KEY])
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(model_dir / "1" / "model.xml"), compress_to_fp16=False)
    config = triton_config(onnx_path, name=model_dir.name, kind="cpu", max_batch_size=max_batch_size,
                           max_queue_delay_us=max_queue_delay_us, backend="openvino")  # fmt: skip
    (model_dir / "config.pbtxt").write_text(config)
    return model_dir


def quiet_exporter() -> None:
    """Silence two harmless notes of the exporter, not for users: an empty ints attribute typed by default,
    and the batch dimension named once although three inputs share it."""
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
