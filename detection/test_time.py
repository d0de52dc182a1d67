"""Test-time options of the detector: augmentation, refinement, voting and tiles, one call applies them.

Test-time augmentation: each image at several test sizes, optionally mirrored, merged by NMS + box voting.

Beyond the paper (as detectron2's TEST.AUG and mmdetection's --tta): every variant runs through the
detector's own forward (its resize rule at that size), its boxes come back in source pixels (mirrored
back for the flipped variant), and the pooled detections of all variants are merged per class by NMS
at the model's IoU threshold and box voting (detection/box_voting.py). `TestTimeOptions` holds every
rung of the test-time ladder; its defaults are the baseline.
"""

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from backbone.flags import option
from detection.box_voting import VOTE_IOU_THRESHOLD, merge_detections
from detection.detector import Detector
from detection.slicing import detect_sliced_batch, tile_windows


@dataclass(frozen=True)
class TestTimeOptions:
    """The test-time ladder, each field a flag of train_det.py (--eval-only); the defaults run the plain
    detector (the cheapest). Fields have one type each (flags): 0 switches a number off."""

    __test__ = False  # not a pytest class, whatever its name says

    refine_boxes: bool = option(
        False, "Box refinement at test time (paper, appendix): pool again from the regressed boxes, run the head "
        "again, NMS at IoU 0.3 over both passes, then box voting.",
    )  # fmt: skip
    vote_threshold: float = option(
        0.0, "Box voting at test time: each kept box becomes the score-weighted mean of the boxes overlapping it "
        "at this IoU (Detectron: 0.8); 0 is off, except where refinement or merging use 0.8.",
    )  # fmt: skip
    test_flip: bool = option(
        False, "Test-time augmentation: each image mirrored left-right too, merged by NMS + voting."
    )
    test_sizes: tuple[int, ...] = option(
        (), "Test-time augmentation: shorter sides to test at, merged by NMS + box voting (none: the model's own)."
    )
    maxout_sizes: tuple[int, ...] = option(
        (), "Multi-scale testing with maxout (paper, appendix; C4 only) on this pyramid of shorter sides, e.g. "
        "200 400 600 800 1000; the RPN stays at the test size.",
    )  # fmt: skip
    tile_size: int = option(
        0, "Sliced inference: square tiles of this many pixels through the detector, merged across tiles (0: off)."
    )
    tile_overlap: float = option(0.2, "Sliced inference: the fraction of a tile its neighbours share (SAHI: 0.2).")
    tile_full_image: bool = option(False, "Sliced inference: the whole image as one more tile, for large objects.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.vote_threshold <= 1.0:
            raise ValueError(f"vote_threshold must lie in [0, 1] (0: off), got {self.vote_threshold}")
        for name in ("test_sizes", "maxout_sizes"):
            sizes = getattr(self, name)
            if isinstance(sizes, list):  # JSON round trips give lists
                object.__setattr__(self, name, tuple(sizes))
                sizes = tuple(sizes)
            if any(not isinstance(size, int) or size < 1 for size in sizes):
                raise ValueError(f"{name} must be positive pixel counts, got {sizes}")
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"{name} repeats a size: {sizes}")
        if self.tile_size < 0:
            raise ValueError(f"tile_size must be >= 0 (0: off), got {self.tile_size}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap is a fraction of a tile in [0, 1), got {self.tile_overlap}")
        if self.tile_full_image and not self.tile_size:
            raise ValueError("tile_full_image needs a tile_size")
        if self.tile_size:
            tile_windows(self.tile_size, self.tile_size, tile_size=self.tile_size, overlap=self.overlap)  # checks

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as it reads back from JSON (sizes as lists): settings files compare equal across runs."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @property
    def overlap(self) -> int:
        """The tile overlap in pixels."""
        return round(self.tile_size * self.tile_overlap)

    @property
    def from_source(self) -> bool:
        """Whether a rung resizes the source image itself (other sizes, mirroring, a pyramid, tiles): such
        images cannot be prepared at the model's one input size beforehand."""
        return self.augmented or bool(self.maxout_sizes) or bool(self.tile_size)

    @property
    def augmented(self) -> bool:
        return self.test_flip or bool(self.test_sizes)

    @property
    def vote(self) -> float | None:
        """The voting IoU, None when off."""
        return self.vote_threshold or None


def add_test_time_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TestTimeOptions field (`--refine-boxes`, `--tile-size 512`, ...), its help the field's own;
    `options_from_args` reads them back. For commands with a plain argparse parser (the predict CLI)."""
    for each in fields(TestTimeOptions):
        flag = "--" + each.name.replace("_", "-")
        text = each.metadata["help"]  # the defaults are all "off" and the texts say what off is
        if isinstance(each.default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        elif isinstance(each.default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=each.default, help=text)
        else:
            parser.add_argument(flag, type=type(each.default), default=each.default, help=text)


def options_from_args(args: argparse.Namespace) -> TestTimeOptions:
    """The TestTimeOptions of parsed `add_test_time_flags` flags (ValueError naming a bad value)."""
    return TestTimeOptions(**{each.name: _plain(getattr(args, each.name)) for each in fields(TestTimeOptions)})


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def detect_with_options(
    model: Detector,
    images: list[torch.Tensor],
    options: TestTimeOptions,
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Detections of float images [3, H, W] in their own pixels, with the ladder's options applied."""
    if options.tile_size:
        untiled = replace(options, tile_size=0, tile_full_image=False)
        return detect_sliced_batch(
            lambda tiles: detect_with_options(
                model, tiles, untiled, score_threshold=score_threshold, max_detections=max_detections,
                iou_threshold=iou_threshold,
            ),
            images, tile_size=options.tile_size, overlap=options.overlap, full_image=options.tile_full_image,
            max_detections=model.roi_heads.detections_per_img if max_detections is None else max_detections,
        )  # fmt: skip
    if not options.augmented:
        _, detections = model(
            images, score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold,
            vote_threshold=options.vote, refine_boxes=options.refine_boxes,
            maxout_sizes=options.maxout_sizes,
        )  # fmt: skip
        return detections
    return detect_augmented(
        model, images, flip=options.test_flip, test_sizes=options.test_sizes,
        vote_threshold=options.vote or VOTE_IOU_THRESHOLD,
        score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold,
        refine_boxes=options.refine_boxes, maxout_sizes=options.maxout_sizes,
    )  # fmt: skip


def detect_augmented(
    model: Detector,
    images: list[torch.Tensor],
    *,
    flip: bool,
    test_sizes: Sequence[int],
    vote_threshold: float | None = VOTE_IOU_THRESHOLD,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    **forward_kwargs: Any,
) -> list[dict[str, torch.Tensor]]:
    """Run every (test size, mirrored or not) variant of `images` and merge each image's detections.

    test_sizes: shorter sides (empty: the model's own); the merge's NMS runs at iou_threshold (None: the
    model's box_nms_thresh) and keeps max_detections (None: the model's); forward_kwargs go to the model.
    """
    sizes: list[int | None] = list(test_sizes) or [None]
    mirrors = (False, True) if flip else (False,)
    kwargs = dict(score_threshold=score_threshold, max_detections=max_detections, iou_threshold=iou_threshold)
    pooled: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
    for size in sizes:
        for mirrored in mirrors:
            inputs = [image.flip(-1) for image in images] if mirrored else images
            _, detections = model(inputs, test_size=size, **kwargs, **forward_kwargs)
            for index, (image, detection) in enumerate(zip(images, detections)):
                if mirrored:
                    detection = {**detection, "boxes": mirror_boxes(detection["boxes"], width=image.shape[-1])}
                pooled[index].append(detection)
    nms_threshold = model.roi_heads.nms_thresh if iou_threshold is None else iou_threshold
    limit = model.roi_heads.detections_per_img if max_detections is None else max_detections
    return [
        merge_detections(
            *(torch.cat([d[key] for d in variants]) for key in ("boxes", "scores", "labels")),
            nms_threshold=nms_threshold,
            vote_threshold=vote_threshold,
            max_detections=limit,
        )  # fmt: skip
        for variants in pooled
    ]


def mirror_boxes(boxes: torch.Tensor, *, width: int) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of a left-right mirrored image of this width, in the unmirrored image."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
