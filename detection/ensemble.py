"""Ensembles of detectors at test time (the paper's COCO ensemble, appendix): shared proposals, averaged heads.

`EnsembleDetector(models)` is a Detector, so the one inference path (`Predictor`) and every test-time rung
run it as they run one model. The first model's transform, backbone and RPN propose; every model classifies
and regresses those same proposals on its own features; the class probabilities and box deltas are averaged
over the models; then the first model's postprocessing runs (threshold, per-class NMS) followed by box
voting (Detectron's 0.8 unless a vote_threshold is given). Box refinement re-pools from the averaged boxes
and averages again. The models must agree on what these averages mean: the same classes, classifier
columns, input transform and box coding.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from detection.box_voting import VOTE_IOU_THRESHOLD
from detection.detector import Detector
from detection.multiscale import MaxoutPyramidPooler
from detection.postprocess import to_original_coordinates

# What the averages need the members to share (build_detector options).
SHARED_OPTIONS = ("min_size", "max_size", "size_divisible", "image_mean", "image_std", "bbox_reg_weights")
NO_MAXOUT = (
    "multi-scale testing with maxout pools one model's feature pyramid; an ensemble tests at several sizes with "
    "test_sizes instead"
)


def check_compatible(models: Sequence[Detector]) -> None:
    """Raise ValueError naming the first difference that would make averaged head outputs meaningless."""
    if len(models) < 1:
        raise ValueError("an ensemble needs at least one model")
    if isinstance(models, torch.nn.Module) or any(not isinstance(model, Detector) for model in models):
        raise ValueError("an ensemble takes a list of detectors")
    first = models[0]
    for index, model in enumerate(models[1:], start=1):
        if model.class_names != first.class_names:
            raise ValueError(f"model {index} names other classes than model 0: {model.class_names}")
        if not torch.equal(model.roi_heads.label_to_column.cpu(), first.roi_heads.label_to_column.cpu()):
            raise ValueError(f"model {index} maps labels to other classifier columns than model 0")
        for key in SHARED_OPTIONS:
            if _as_tuple(model.config[key]) != _as_tuple(first.config[key]):
                raise ValueError(f"model {index} has {key}={model.config[key]}, model 0 {first.config[key]}")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def average_head_outputs(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits, box deltas) of each model on the same proposals -> the log of the mean class probabilities
    (the heads' postprocessing applies a softmax, which gives the mean probabilities back) and the mean deltas."""
    probabilities = torch.stack([class_logits.softmax(dim=-1) for class_logits, _ in outputs])
    deltas = torch.stack([box_regression for _, box_regression in outputs])
    return probabilities.mean(dim=0).log(), deltas.mean(dim=0)


class EnsembleDetector(Detector):
    """Several compatible detectors as one (see the module docstring); its first model's parts are its own."""

    def __init__(self, models: Sequence[Detector]) -> None:
        check_compatible(models)
        first = models[0]
        super().__init__(
            transform=first.transform, features=first.features, rpn=first.rpn, roi_heads=first.roi_heads,
            class_names=first.class_names, config=first.config,
        )  # fmt: skip
        self.others = nn.ModuleList(models[1:])
        self.optimized = all(model.optimized for model in models)
        self.training = first.training

    @property
    def size(self) -> int:
        """How many models vote."""
        return 1 + len(self.others)

    def detect(
        self,
        batch: ImageList,
        original_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        iou_threshold: float | None = None,
        vote_threshold: float | None = None,
        refine_boxes: bool = False,
        region_pooler: MaxoutPyramidPooler | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """`Detector.detect` with every member's head averaged on the first model's proposals (no losses)."""
        if targets is not None:
            raise ValueError("an ensemble only detects; train its members one by one")
        if self.training or any(model.training for model in self.others):
            raise ValueError("ensemble members must be in eval mode (call .eval())")
        if region_pooler is not None:
            raise ValueError(NO_MAXOUT)
        features = self.features(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        heads = [
            (self.roi_heads, features),
            *((model.roi_heads, model.features(batch.tensors)) for model in self.others),
        ]

        def classify(regions: list[torch.Tensor], image_shapes: list[tuple[int, int]]):
            return average_head_outputs([head.classify(maps, regions, image_shapes) for head, maps in heads])

        detections, _ = self.roi_heads(
            features, proposals, batch.image_sizes,
            score_thresh=score_threshold, detections_per_img=max_detections, nms_thresh=iou_threshold,
            vote_thresh=VOTE_IOU_THRESHOLD if vote_threshold is None else vote_threshold,
            refine=refine_boxes, classify=classify,
        )  # fmt: skip
        return {}, to_original_coordinates(detections, batch.image_sizes, original_sizes)

    def check_maxout(self) -> None:
        raise ValueError(NO_MAXOUT)
