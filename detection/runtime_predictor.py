"""The Predictor with a runtime of detection/runtimes.py (the exported graph under ONNX Runtime or OpenVINO, or
the same graph eager or compiled) as its network call.

Only `forward` differs: decoding, the resize, grouping, the cut and the records are the Predictor's, so every
runtime answers as the CLI, the service and the Python API do (tests/test_one_inference_path.py). The graph's
score threshold, NMS overlap and detections per image were fixed at export (the model's box_score_thresh,
box_nms_thresh and box_detections_per_img): a cut can narrow them, not widen them.
"""

import os

import torch

from detection.builder import build_detector
from detection.detector import Detector
from detection.detector_checkpoint import load_detector
from detection.predictor import Predictor
from detection.runtimes import AUTO, Network, load_network


class RuntimePredictor(Predictor):
    """`model` gives the transform and class names (the detector the graph was exported from)."""

    def __init__(self, model: Detector, network: Network) -> None:
        if network.kind != "detector":
            raise ValueError(f"a {network.kind} network cannot run a detector's Predictor")
        super().__init__(model, device="cpu", precision="fp32", optimize=False)
        self.network = network
        self.runtime = network.runtime  # what runs the network, for the predict settings
        self.precision = network.precision  # what runs: fp32, bf16 or int8 (reported in every answer)
        self.nms_threshold = float(model.roi_heads.nms_thresh)

    @classmethod
    def from_source(
        cls, source: str | os.PathLike, *, runtime: str = AUTO, precision: str = "fp32", threads: int | None = None
    ) -> "RuntimePredictor":
        """A checkpoint, its .onnx export or a quantized model; the transform is rebuilt from the manifest."""
        network = load_network(source, runtime=runtime, precision=precision, threads=threads)
        if str(source).endswith(".safetensors"):
            return cls(load_detector(source)[0], network)
        return cls.from_network(network)

    @classmethod
    def from_network(cls, network: Network) -> "RuntimePredictor":
        """The transform and class names rebuilt from the network's manifest: only they are used, no weights."""
        manifest = network.manifest
        return cls(
            build_detector(**manifest["architecture_kwargs"], class_names=manifest["class_names"]).eval(), network
        )

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        original_sizes: torch.Tensor,
        *,
        score_threshold: float,
        max_detections: int,
        iou_threshold: float | None,
    ) -> list[dict[str, torch.Tensor]]:
        if iou_threshold is not None and iou_threshold != self.nms_threshold:
            raise ValueError(
                f"iou_threshold {iou_threshold}: the {self.network.runtime} graph's NMS runs at {self.nms_threshold} "
                "(another overlap needs runtime 'torch')"
            )
        boxes, scores, labels, counts = self.network(images, image_sizes, original_sizes)
        return [
            {"boxes": box[:n], "scores": score[:n], "labels": label[:n]}
            for box, score, label, n in zip(boxes, scores, labels, counts.tolist())
        ]
