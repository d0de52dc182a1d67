"""Faster R-CNN (Ren et al. 2015) on a ResNet of He et al. 2015, as the paper's appendix runs it.

The forward pass reads like the paper: features -> region proposals -> per-RoI heads -> boxes in the
original images. Each stage lives in its own file (features.py, rpn.py, roi_heads.py,
postprocess.py); build one with `detection.build_detector`.

Labels: 0 is background inside the model; `class_names[i - 1]` is the name of label i (1..K).
"""

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.image_list import ImageList

from backbone.weights import load_checked
from detection.multiscale import MaxoutPyramidPooler
from detection.optimize import optimize_detector
from detection.poolers import SingleLevelRoIAlign
from detection.postprocess import to_original_coordinates
from detection.roi_heads import RoIHeads
from detection.transform import DetectorTransform, check_images, prepare_targets


class Detector(nn.Module):
    """Faster R-CNN with a C4 or FPN head; `config` holds the `build_detector` kwargs that rebuild it."""

    def __init__(
        self,
        *,
        transform: DetectorTransform,
        features: nn.Module,
        rpn: nn.Module,
        roi_heads: RoIHeads,
        class_names: Sequence[str],
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        if len(class_names) != roi_heads.num_classes:
            raise ValueError(f"{len(class_names)} class names for {roi_heads.num_classes} classes")
        self.transform = transform
        self.features = features
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.class_names = list(class_names)
        self.config = dict(config)
        # Set by optimize_for_inference: folded BN cannot be trained or saved, and an autocast dtype
        # (e.g. torch.bfloat16) is the hook for reduced-precision inference in predict().
        self.optimized = False
        self.inference_autocast_dtype: torch.dtype | None = None

    @property
    def num_classes(self) -> int:
        return self.roi_heads.num_classes

    def scaled_max_size(self, test_size: int) -> int:
        """The longer side's cap at another test size: the model's max_size scaled by the same factor (the
        paper's pyramid gives only shorter sides; detectron2's TTA keeps one cap of 4000 instead)."""
        if not isinstance(test_size, int) or test_size < 1:
            raise ValueError(f"test_size must be a positive number of pixels, got {test_size!r}")
        return max(1, round(self.transform.max_size * test_size / self.transform.min_size[-1]))

    def forward(
        self,
        images: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        iou_threshold: float | None = None,
        vote_threshold: float | None = None,
        refine_boxes: bool = False,
        test_size: int | None = None,
        maxout_sizes: Sequence[int] = (),
        targets_prepared: bool = False,
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Return (losses, detections) for a list of RGB float images [3, H, W] in [0, 1].

        Training mode: targets required, detections is empty. Eval mode: detections per image
        (boxes x1, y1, x2, y2 in original pixels, scores, labels 1..K), plus the same losses when
        targets are given (a validation loss). score_threshold, max_detections and iou_threshold override
        the built-in box_score_thresh, box_detections_per_img and box_nms_thresh (per class) for this call.
        vote_threshold: box voting after NMS (detection/box_voting.py); refine_boxes: the appendix's box
        refinement (RoIHeads.forward); both off by default. test_size: the shorter side to test at in this
        call (eval only; the longer side's cap scales with it; None: the model's own test size).
        maxout_sizes: multi-scale testing with maxout on this pyramid of shorter sides (C4 only; e.g.
        detection.multiscale.PYRAMID_SIZES); the RPN stays at the test size.
        targets_prepared: the targets come from `detection.transform.batch_to_device`, checked on the CPU
        (checks here would sync a GPU).
        """
        check_images(images)
        if targets is None:
            if self.training:
                raise ValueError("training mode needs targets (call model.eval() to detect without them)")
        elif not targets_prepared:
            targets = prepare_targets(targets, num_images=len(images), num_classes=self.num_classes)
        if self.training and self.optimized:
            raise RuntimeError("this detector was optimized for inference (BN folded); it cannot be trained")
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        if test_size is None:
            batch, targets = self.transform(images, targets)
        else:
            if targets is not None:
                raise ValueError("test_size is for detection without targets (losses are at the training sizes)")
            batch = self.transform.batch_at_size(images, min_size=test_size, max_size=self.scaled_max_size(test_size))
        region_pooler = None
        if maxout_sizes:
            if targets is not None:
                raise ValueError("maxout_sizes is for detection without targets")
            region_pooler = self.maxout_pooler(images, batch.image_sizes, sizes=maxout_sizes)
        return self.detect(
            batch, original_sizes, targets,
            score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold,
            vote_threshold=vote_threshold, refine_boxes=refine_boxes, region_pooler=region_pooler,
        )  # fmt: skip

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
        """`forward` after the transform: the normalised, padded batch (and each image's resized size in it) ->
        (losses, detections in pixels of `original_sizes`). `detection.predictor.Predictor` calls this.
        vote_threshold and refine_boxes as in `forward`; region_pooler: `maxout_pooler`'s, for multi-scale testing."""
        features = self.features(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(
            features,
            proposals,
            batch.image_sizes,
            targets,
            score_thresh=score_threshold,
            detections_per_img=max_detections,
            nms_thresh=iou_threshold,
            vote_thresh=vote_threshold,
            refine=refine_boxes,
            region_pooler=region_pooler,
        )
        detections = to_original_coordinates(detections, batch.image_sizes, original_sizes)
        return {**rpn_losses, **head_losses}, detections

    def check_maxout(self) -> None:
        """ValueError unless this detector can test with maxout over a pyramid (the C4 head's one pooled map)."""
        if not isinstance(self.roi_heads.box_roi_pool, SingleLevelRoIAlign):
            raise ValueError(
                "multi-scale testing with maxout is the C4 head's (one pooled map); for FPN test at several "
                "sizes merged by NMS + voting (detection.test_time.TestTimeOptions(test_sizes=...))"
            )

    def maxout_pooler(
        self, images: list[torch.Tensor], image_sizes: list[tuple[int, int]], *, sizes: Sequence[int]
    ) -> MaxoutPyramidPooler:
        """The pooler of multi-scale testing: the head's feature map of `images` at each shorter side in sizes."""
        self.check_maxout()
        pooler = self.roi_heads.box_roi_pool
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"maxout_sizes repeats a size: {tuple(sizes)}")
        maps, level_sizes = [], []
        for size in sorted(sizes):
            level = self.transform.batch_at_size(images, min_size=size, max_size=self.scaled_max_size(size))
            maps.append(self.features(level.tensors)[pooler.feature_name])
            level_sizes.append(level.image_sizes)
        return MaxoutPyramidPooler(
            pooler=pooler, feature_maps=maps, level_image_sizes=level_sizes, image_sizes=image_sizes
        )

    def predict(
        self,
        images: Sequence[Image.Image | torch.Tensor],
        score_threshold: float = 0.5,
        max_detections: int = 100,
        *,
        batch_size: int = 4,
        iou_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """Detect objects in PIL images or uint8/uint16/float tensors, through `detection.predictor.Predictor`
        (the one inference path) on this model as it is: its device, not optimized further, fp32 unless
        `optimize_for_inference(bf16=True)` asked for bf16. Returns per image boxes FloatTensor[N, 4] (x1, y1,
        x2, y2, original pixels), scores, labels (1..K), names (list of class names), highest score first.
        """
        from detection.predictor import Cut, Predictor  # the predictor module imports this one

        if isinstance(images, (Image.Image, torch.Tensor)):
            raise TypeError("predict takes a list of images; wrap a single image in a list")
        was_training = self.training
        precision = "bf16" if self.inference_autocast_dtype == torch.bfloat16 else "fp32"
        try:
            predictor = Predictor(self, device=next(self.parameters()).device, precision=precision, optimize=False)
            prepared = []
            for index, image in enumerate(images):
                if not isinstance(image, (Image.Image, torch.Tensor)):
                    raise TypeError(f"image {index}: expected a PIL image or a tensor, got {type(image).__name__}")
                prepared.append(predictor.prepare(image, index=index))
            cut = Cut(score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold)
            results = predictor.detect(prepared, [cut] * len(prepared), batch_size=batch_size)
        finally:
            self.train(was_training)
        return [
            {**result, "names": [self.class_names[label - 1] for label in result["labels"].tolist()]}
            for result in results
        ]

    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
        """Initialise from a classifier's weights in our key names (backbone.torchvision_compat.from_torchvision
        converts torchvision's); fc.* is ignored, and for C4 res5.* goes to the per-RoI head."""
        backbone = self.features.backbone
        stages = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        if hasattr(self.roi_heads.box_head, "res5"):
            res5 = {k.removeprefix("res5."): v for k, v in stages.items() if k.startswith("res5.")}
            load_checked(self.roi_heads.box_head.res5, res5, source=f"{source} (res5)")
            stages = {k: v for k, v in stages.items() if not k.startswith("res5.")}
        load_checked(backbone, stages, source=source)

    def optimize_for_inference(
        self, *, fold_bn: bool = True, fuse: bool | None = None, channels_last: bool = True, bf16: bool = False
    ) -> "Detector":
        """Eval mode; BN folded into the convs; conv+ReLU(+residual add) fused; channels_last convs;
        bf16=True turns on bf16 autocast in predict() (changes numerics; off by default). The fp32
        detections stay those of the unoptimized model (docs/BENCHMARKS.md). fuse defaults to fold_bn
        (it needs BN folded). Irreversible: no training or saving afterwards."""
        fuse = fold_bn if fuse is None else fuse
        return optimize_detector(self, fold_bn=fold_bn, fuse=fuse, channels_last=channels_last, bf16=bf16)
