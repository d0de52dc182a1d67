"""Detection data: COCO and VOC datasets, box-aware transforms, aspect-ratio groups, synthetic shapes."""

from backbone.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "AnnotationError": "detection.data.annotations",
        "ImageAnnotation": "detection.data.annotations",
        "DEFAULT_WORKERS": "detection.data.batching",
        "aspect_ratio_group_ids": "detection.data.batching",
        "collate_fn": "detection.data.batching",
        "CocoDetection": "detection.data.coco",
        "ConcatDetection": "detection.data.concat",
        "DetectionDataset": "detection.data.dataset",
        "SHAPE_CLASSES": "detection.data.synthetic_shapes",
        "SyntheticLayout": "detection.data.synthetic_shapes",
        "generate_synthetic": "detection.data.synthetic_shapes",
        "build_transforms": "detection.data.transforms",
        "VOC_CLASSES": "detection.data.voc",
        "VocDetection": "detection.data.voc",
        "read_class_names": "detection.data.voc",
    },
)

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
