"""The work of `python -m detection.quantize` (detection/quantize.py, the command, answers --help without it):
NNCF or ONNX Runtime calibration of a checkpoint's ONNX export, the fp32 and int8 scores on a held-out set, and
the int8 model's manifest with both figures."""

import argparse
import datetime
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from backbone.serving_checkpoint import read_manifest
from detection.detector import Detector
from detection.detector_checkpoint import load_detector
from detection.network_accuracy import classifier_inputs, coco_ap, detector_inputs, image_files, labelled_images, top1
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import MANIFEST_KEY, Network, exported_onnx, load_network, openvino_core


class AccuracyDropError(RuntimeError):
    """The int8 model scored more than the allowed drop below fp32; nothing was written."""


# The OpenVINO operations whose inputs int8 is for: where a detector spends its time.
COMPUTE_TYPES = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
# Nodes that hold no activation to quantize.
NOT_OPERATIONS = {"Parameter", "Constant", "Result"}


def float_operations(model: Any) -> list[str]:
    """The names of the OpenVINO model's operations that NNCF must leave in float: all but the convolutions
    and matrix products, what feeds their feature inputs (residual adds, ReLUs, pooling, FPN upsampling) and
    the box head's input. Left out that way: the box decoding, sigmoid and softmax, top-k, NMS, box clipping,
    the FPN level assignment (sqrt of box areas) and RoIAlign with its per-level outputs."""
    feeds_compute, stack = set(), [op for op in model.get_ops() if op.get_type_name() in COMPUTE_TYPES]
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in feeds_compute:
            continue
        feeds_compute.add(op.get_friendly_name())
        for index, value in enumerate(op.inputs()):
            # Integer tensors are shapes and indices; RoIAlign's rois (input 1) are boxes: neither is a feature.
            if value.get_element_type().is_real() and not (op.get_type_name() == "ROIAlign" and index == 1):
                stack.append(value.get_source_output().get_node())
    # From RoIAlign to the box head: the FPN pooler pools each level's RoIs on their own and scatters them
    # into one tensor. A level's output is empty on an image none of whose RoIs map to it; NNCF's min/max of
    # an empty tensor is +-3.4e38, whose mean over the calibration set overflowed ("overflow encountered in
    # reduce") into a range of [0, 8e-5] that zeroed every RoI of that level. Only the merged tensor, never
    # empty, is quantized (in front of the box head's first matrix product).
    pooled, stack = set(), [op for op in model.get_ops() if op.get_type_name() == "ROIAlign"]
    while stack:
        op = stack.pop()
        if op.get_friendly_name() in pooled or op.get_type_name() in COMPUTE_TYPES:
            continue
        pooled.add(op.get_friendly_name())
        stack.extend(target.get_node() for value in op.outputs() for target in value.get_target_inputs())
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() not in NOT_OPERATIONS
        and (op.get_friendly_name() not in feeds_compute or op.get_friendly_name() in pooled)
    ]


def calibrate(onnx_path: Path, items: list[tuple[torch.Tensor, ...]], *, runtime: str, output: Path) -> Path:
    """Write the int8 model of `onnx_path` to `output`, its activation ranges taken from `items` (network inputs)."""
    if runtime == "openvino":
        import openvino

        core = openvino_core()  # sets NNCF_CI first: NNCF's telemetry stays off
        import nncf

        model = core.read_model(str(onnx_path))
        dataset = nncf.Dataset([[value.numpy() for value in inputs] for inputs in items])
        options = {}
        if any(op.get_type_name() == "NonMaxSuppression" for op in model.get_ops()):  # a detector's graph
            # Its postprocessing stays in float (validate=False: a node NNCF's graph does not hold is one it cannot
            # quantize either). MIXED: asymmetric activations, for the FPN's and residual sums' signed outputs
            # (demo detector: drop 0.27 AP against 0.60 with the symmetric default, at the same speed).
            options = {"ignored_scope": nncf.IgnoredScope(names=float_operations(model), validate=False),
                       "preset": nncf.QuantizationPreset.MIXED}  # fmt: skip
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger("nncf").setLevel(logging.WARNING)  # else a line per ignored node (a thousand)
        quantized = nncf.quantize(model, dataset, subset_size=len(items), **options)
        openvino.save_model(quantized, str(output), compress_to_fp16=False)
        return output
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    names = [value.name for value in onnx.load(str(onnx_path), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(items)

        def get_next(self) -> dict | None:
            inputs = next(self.items, None)
            return None if inputs is None else {name: value.numpy() for name, value in zip(names, inputs)}

    # Only the convolutions and matrix products: the detector's box decoding, NMS and top-k stay in float.
    quantize_static(
        str(onnx_path), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )  # fmt: skip
    return output


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Put the manifest where detection.runtimes reads it: ONNX metadata, or the OpenVINO model's rt_info."""
    text = json.dumps(manifest, sort_keys=True)
    if path.suffix == ".xml":
        import openvino

        model = openvino_core().read_model(str(path))
        model.set_rt_info(text, [MANIFEST_KEY])
        # Saved beside, then renamed over: the model read above maps path's .bin, which an overwrite would
        # truncate under it (SIGBUS).
        beside = path.with_name(f"manifest-{path.name}")
        openvino.save_model(model, str(beside), compress_to_fp16=False)
        del model
        os.replace(beside.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(beside, path)
        return
    import onnx

    model = onnx.load(str(path))
    for prop in [prop for prop in model.metadata_props if prop.key == MANIFEST_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=MANIFEST_KEY, value=text)
    onnx.save(model, str(path))


def score(network: Network, args: argparse.Namespace, detector: Detector | None) -> tuple[str, float]:
    """(metric name, points) on the held-out set; a detector's network runs inside the one Predictor."""
    if detector is not None:
        return "AP", coco_ap(RuntimePredictor(detector, network), args.eval_coco, args.eval_images).ap
    samples = labelled_images(
        args.eval_folder, class_names=network.manifest["class_names"], split=args.eval_split, limit=args.eval_limit
    )
    return "top-1", top1(network, samples)


def quantize(args: argparse.Namespace) -> tuple[Path | None, dict[str, Any]]:
    """Calibrate, score fp32 and int8, and write the int8 model if the drop is allowed (or --force)."""
    if (read_manifest(args.checkpoint)["kind"] == "detector") != (args.eval_coco is not None):
        raise ValueError(
            "a detector is scored on a COCO-format set (--eval-coco, --eval-images), a classifier on class "
            "folders (--eval-folder)"
        )
    fp32 = load_network(args.checkpoint, runtime=args.runtime, precision="fp32", threads=args.threads)
    calibration = image_files(args.calibration, limit=args.calibration_size)
    detector = load_detector(args.checkpoint)[0] if fp32.kind == "detector" else None
    if detector is not None:
        predictor = RuntimePredictor(detector, fp32)
        items = [detector_inputs(predictor, path) for path in calibration]
    else:
        items = [classifier_inputs(fp32, path) for path in calibration]
    metric, fp32_score = score(fp32, args, detector)
    with tempfile.TemporaryDirectory(dir=args.output.parent) as scratch:
        partial = Path(scratch) / args.output.name
        report = {
            "runtime": args.runtime,
            "calibration_images": len(calibration),
            "eval_set": Path(args.eval_coco or args.eval_folder).name,
            "metric": metric,
            "fp32": round(fp32_score, 2),
            "max_drop": args.max_drop,
            "date": datetime.date.today().isoformat(),
        }
        calibrate(exported_onnx(args.checkpoint), items, runtime=args.runtime, output=partial)
        write_manifest(partial, {**fp32.manifest, "quantization": report})
        int8 = load_network(partial, runtime=args.runtime, precision="int8", threads=args.threads)
        _, int8_score = score(int8, args, detector)
        report.update(int8=round(int8_score, 2), drop=round(fp32_score - int8_score, 2), forced=False)
        too_far = fp32_score - int8_score > args.max_drop
        if too_far and not args.force:
            return None, report
        report["forced"] = too_far
        write_manifest(partial, {**fp32.manifest, "quantization": report})
        # .bin before .xml (or the .onnx): a server watching the folder reads a model by the file it names, which
        # must arrive last, when its weights are in place
        for written in sorted(Path(scratch).iterdir(), key=lambda path: path.suffix != ".bin"):
            shutil.move(str(written), args.output.parent / written.name)
    return args.output, report
