"""Checkpoints and their ONNX exports, built once per test process and shared by test_export.py and
test_triton.py (an export takes tens of seconds on a 2-core CPU)."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import torch
from helpers import REPO, TEST_SETTINGS, randomised_torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from detection import build_detector, convert_torchvision_detector, load_detector, save_detector
from detection.onnx_export import export_checkpoint, write_triton_repository
from detection.runtimes import CACHE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DETECTOR = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
DEMO_CLASSIFIER = REPO_ROOT / "service" / "models" / "demo_classifier.safetensors"


@cache
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="resdet-export-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def r50_fpn_checkpoint() -> Path:
    """torchvision's fasterrcnn_resnet50_fpn, randomised to behave like a trained one, through
    `convert_torchvision_detector`, rebuilt with the small test inputs (320-480 px, 100 proposals)."""
    weights = workdir() / "r50_fpn.pth"
    torch.save(randomised_torchvision(fasterrcnn_resnet50_fpn).state_dict(), weights)
    converted, _ = load_detector(convert_torchvision_detector(weights, workdir() / "r50_fpn_full.safetensors"))
    small = build_detector(**{**converted.config, **TEST_SETTINGS}, class_names=converted.class_names)
    small.load_state_dict(converted.state_dict())
    return save_detector(workdir() / "r50_fpn.safetensors", model=small)


@cache
def c4_checkpoint() -> Path:
    """A small ResNet-18 C4 detector whose random weights give spread-out, confident detections."""
    torch.manual_seed(0)
    model = build_detector(
        backbone="resnet18", head="c4", num_classes=3, min_size=256, max_size=384, rpn_post_nms_top_n_test=100
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.0)
                module.bias.uniform_(-0.1, 0.1)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.01)
    return save_detector(workdir() / "c4.safetensors", model=model)


CHECKPOINTS = {
    "demo": lambda: DEMO_DETECTOR,
    "r50_fpn": r50_fpn_checkpoint,
    "c4": c4_checkpoint,
    "classifier": lambda: DEMO_CLASSIFIER,
}


@cache
def triton_repository(name: str) -> Path:
    """A Triton repository holding the named model (its model.onnx is the export the parity tests use)."""
    return write_triton_repository(CHECKPOINTS[name](), workdir() / "triton", name=name)


@cache
def exported(name: str) -> Path:
    """The ONNX file of "demo", "r50_fpn", "c4" or "classifier"; the demo models go through the Triton writer."""
    if name in ("demo", "classifier"):
        return triton_repository(name) / "1" / "model.onnx"
    return export_checkpoint(CHECKPOINTS[name](), workdir() / f"{name}.onnx").path


def seed_export_cache(name: str, cache_dir: Path) -> Path:
    """`cache_dir` as detection.runtimes finds it after a first start: the named checkpoint's export in place (the
    export this process made once), so a server under RUNTIME=auto starts in seconds."""
    from detection.runtimes import export_path

    path = export_path(CHECKPOINTS[name](), cache_dir=cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported(name), path)
    return path


@cache
def quantized(name: str, runtime: str = "onnxruntime") -> Path:
    """An int8 model of "demo" or "classifier" as `python -m detection.quantize` writes it, with the accuracy
    check in its manifest; calibrated and scored on a handful of small images (seconds, from the cached export).
    --max-drop 100: a dozen images score too coarsely for the default point to mean anything."""
    from cifar_data import write_cifar_tarball

    from detection.data.synthetic_shapes import generate_synthetic

    cache, checkpoint = workdir() / "int8-cache", CHECKPOINTS[name]()
    seed_export_cache(name, cache)
    output = workdir() / f"int8-{runtime}" / f"{checkpoint.stem}.int8{'.xml' if runtime == 'openvino' else '.onnx'}"
    if name == "demo":
        shapes = generate_synthetic(workdir() / "int8-shapes", num_train=4, num_val=4, image_size=128, seed=5)
        annotations, images = shapes.coco_annotation_file("val"), shapes.coco_image_dir("val")
        data = ["--calibration", str(shapes.coco_image_dir("train")), "--eval-coco", str(annotations)]
        data += ["--eval-images", str(images)]
    else:
        write_cifar_tarball(workdir() / "int8-cifar" / "cifar10-jpeg.tar.gz", per_split={"train": 2, "test": 2})
        folder = workdir() / "int8-cifar" / "cifar10"
        data = ["--calibration", str(folder / "train"), "--eval-folder", str(folder)]
    # quantize reads the checkpoint's export from the cache seeded above. Run as the command, in its own process:
    # ONNX Runtime's and NNCF's quantizers leave process-wide state behind (run in the test process, a later
    # test's server start died on a closed stderr)
    command = [sys.executable, "-m", "detection.quantize", str(checkpoint), *data, "--runtime", runtime,
               "--output", str(output), "--max-drop", "100"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env={**os.environ, CACHE_ENV: str(cache)}, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output
