"""Detection data: COCO and VOC datasets, box-aware transforms, aspect-ratio groups, synthetic shapes."""

from detection.data.annotations import AnnotationError, ImageAnnotation
from detection.data.batching import DEFAULT_WORKERS, aspect_ratio_group_ids, collate_fn
from detection.data.coco import CocoDetection
from detection.data.concat import ConcatDetection
from detection.data.dataset import DetectionDataset
from detection.data.synthetic_shapes import SHAPE_CLASSES, SyntheticLayout, generate_synthetic
from detection.data.transforms import build_transforms
from detection.data.voc import VOC_CLASSES, VocDetection, read_class_names

__all__ = [
    "DEFAULT_WORKERS",
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "AnnotationError",
    "CocoDetection",
    "ConcatDetection",
    "DetectionDataset",
    "ImageAnnotation",
    "SyntheticLayout",
    "VocDetection",
    "aspect_ratio_group_ids",
    "build_transforms",
    "collate_fn",
    "generate_synthetic",
    "read_class_names",
]
