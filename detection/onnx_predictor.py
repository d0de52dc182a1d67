"""The Predictor with an exported graph (detection/exportable.py, run by ONNX Runtime) as its network call.

Only `forward` differs: decoding, the resize, grouping, the cut and the records are the Predictor's, so
ONNX Runtime answers as the CLI, the service and the Python API do (tests/test_one_inference_path.py).
The graph's score threshold, NMS overlap and detections per image were fixed at export (the model's
box_score_thresh, box_nms_thresh and box_detections_per_img): a cut can narrow them, not widen them.
"""

import os

import torch

from detection.detector import Detector
from detection.predictor import Predictor


class OnnxRuntimePredictor(Predictor):
    """`model` gives the transform and class names (the checkpoint the graph was exported from); fp32, CPU."""

    def __init__(self, model: Detector, onnx_path: str | os.PathLike, *, threads: int | None = None) -> None:
        import onnxruntime  # the `export` extra: imported only when an exported graph is run

        super().__init__(model, device="cpu", precision="fp32", optimize=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.nms_threshold = float(model.roi_heads.nms_thresh)

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
        from detection.export import DETECTOR_INPUTS, DETECTOR_OUTPUTS

        if iou_threshold is not None and iou_threshold != self.nms_threshold:
            raise ValueError(f"iou_threshold {iou_threshold}: the exported graph's NMS runs at {self.nms_threshold}")
        inputs = {name: tensor.numpy() for name, tensor in zip(DETECTOR_INPUTS, (images, image_sizes, original_sizes))}
        boxes, scores, labels, counts = (
            torch.from_numpy(output) for output in self.session.run(list(DETECTOR_OUTPUTS), inputs)
        )
        return [
            {"boxes": box[:n], "scores": score[:n], "labels": label[:n]}
            for box, score, label, n in zip(boxes, scores, labels, counts.tolist())
        ]
