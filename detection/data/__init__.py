"""Detection data: COCO and VOC datasets, box-aware transforms, aspect-ratio batching, synthetic shapes."""

from detection.data.annotations import AnnotationError, ImageAnnotation
from detection.data.batching import DEFAULT_WORKERS, GroupedBatchSampler, aspect_ratio_group_ids, collate_fn
from detection.data.coco import CocoDetection
from detection.data.concat import ConcatDetection
from detection.data.dataset import DetectionDataset
from detection.data.synthetic_shapes import SHAPE_CLASSES, SyntheticLayout, generate_synthetic
from detection.data.transforms import TRANSFORM_PRESETS, ResizePreset, build_transforms, preset_transforms
from detection.data.voc import VOC_CLASSES, VocDetection, read_class_names

__all__ = [
    "DEFAULT_WORKERS",
    "SHAPE_CLASSES",
    "TRANSFORM_PRESETS",
    "VOC_CLASSES",
    "AnnotationError",
    "CocoDetection",
    "ConcatDetection",
    "DetectionDataset",
    "GroupedBatchSampler",
    "ImageAnnotation",
    "ResizePreset",
    "SyntheticLayout",
    "VocDetection",
    "aspect_ratio_group_ids",
    "build_transforms",
    "collate_fn",
    "generate_synthetic",
    "preset_transforms",
    "read_class_names",
]
