"""Faster R-CNN on the ResNets of backbone/: C4 (the paper's appendix) and FPN heads, torchvision-compatible.

    from detection import build_detector, load_detector, save_detector
    model = build_detector(backbone="resnet50", head="fpn", num_classes=3, class_names=["a", "b", "c"])
    losses, detections = model(images, targets)          # images: list of [3, H, W] floats in [0, 1]
    predictor = Predictor(model, precision="auto")        # the one inference path (CLI, service, ONNX too)
    results = predictor.predict(["bus.jpg", pil_image], score_threshold=0.5)

Label ids: 0 is background inside the model; class_names[i - 1] names label i (1..K).
The package imports no command module (convert, predict, data.synthetic): runpy warns when
`python -m` runs a module its package has already imported.
"""

from backbone.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "DETECTOR_BACKBONES": "detection.builder",
        "build_detector": "detection.builder",
        "convert_torchvision_detector": "detection.detector_checkpoint",
        "load_detector": "detection.detector_checkpoint",
        "save_detector": "detection.detector_checkpoint",
        "Detector": "detection.detector",
        "EnsembleDetector": "detection.ensemble",
        "Predictor": "detection.predictor",
        "DetectorOptions": "detection.options",
        "COCO_CATEGORY_IDS": "detection.torchvision_compat",
        "COCO_CLASS_NAMES": "detection.torchvision_compat",
    },
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "DETECTOR_BACKBONES",
    "Detector",
    "DetectorOptions",
    "EnsembleDetector",
    "Predictor",
    "build_detector",
    "convert_torchvision_detector",
    "load_detector",
    "save_detector",
]
