"""A detection dataset over parsed annotations: decodes an image and builds the target torchvision models take."""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from detection.data.annotations import AnnotationError, ImageAnnotation


class DetectionDataset(Dataset):
    """(image, target) pairs: a uint8 `tv_tensors.Image` (CHW, RGB) and {boxes, labels, image_id}.

    Boxes are `tv_tensors.BoundingBoxes` (XYXY, float32, pixels of the image) so that transforms v2 move
    them with the image; labels are int64 in 1..K (0 is background). Boxes flagged `ignore` (crowd,
    difficult) stay out of the target and remain in `annotations` for evaluation. Subclasses parse a
    format (COCO, VOC) into `ImageAnnotation`s and hand them here.
    """

    def __init__(
        self,
        annotations: Sequence[ImageAnnotation],
        *,
        image_dir: str | os.PathLike,
        class_names: Sequence[str],
        category_ids: Sequence[int],
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
    ) -> None:
        if len(category_ids) != len(class_names):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.image_dir = Path(image_dir)
        self.class_names = list(class_names)
        # original category id of label k is category_ids[k - 1] (COCO results files need the originals)
        self.category_ids = list(category_ids)
        self.transforms = transforms
        # an image without any training box teaches only background; training usually drops them, evaluation keeps them
        kept = list(annotations) if keep_empty else [a for a in annotations if a.num_training_boxes > 0]
        self.num_empty_images_removed = len(annotations) - len(kept)
        self.annotations = kept
        for annotation in self.annotations:
            path = self.image_dir / annotation.file_name
            if not path.is_file():
                raise AnnotationError(f"{path}: image file not found (image id {annotation.image_id})")

    def __len__(self) -> int:
        return len(self.annotations)

    def get_image_size(self, index: int) -> tuple[int, int]:
        """(height, width) from the annotations, without decoding the image (for aspect-ratio grouping)."""
        annotation = self.annotations[index]
        return annotation.height, annotation.width

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        annotation = self.annotations[index]
        path = self.image_dir / annotation.file_name
        # PIL rather than torchvision.io, whose decoders are deprecated since torchvision 0.29; EXIF orientation
        # is not applied, as COCO and VOC annotate the stored pixels
        try:
            with Image.open(path) as stored:
                pixels = pil_to_tensor(stored if stored.mode == "RGB" else stored.convert("RGB"))
        except (OSError, ValueError) as error:
            raise AnnotationError(f"{path}: cannot decode image (image id {annotation.image_id}): {error}") from error
        size = (annotation.height, annotation.width)
        if tuple(pixels.shape[-2:]) != size:
            raise AnnotationError(
                f"{path}: image is {pixels.shape[-1]}x{pixels.shape[-2]} (WxH) but its annotation says "
                f"{annotation.width}x{annotation.height} (image id {annotation.image_id})"
            )
        train = ~annotation.ignore
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(annotation.boxes[train]), format="XYXY", canvas_size=size
            ),
            "labels": torch.from_numpy(annotation.labels[train]),
            "image_id": annotation.image_id,
        }
        image = tv_tensors.Image(pixels)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
