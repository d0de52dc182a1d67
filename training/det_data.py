"""The datasets of a detection run: COCO- or VOC-layout training splits (concatenated, augmented per sample in
SeededDataset for exact resume) and the validation split, from the config's flags."""

from pathlib import Path

from detection.data import (
    VOC_CLASSES,
    CocoDetection,
    ConcatDetection,
    VocDetection,
    build_transforms,
    read_class_names,
)
from training.det_train_config import DetTrainConfig, resolve_splits
from training.sampler import SeededDataset


def describe_datasets(train, val) -> str:
    """The start-of-run line about the data: images, classes, and what the readers left out."""
    return (
        f"{len(train)} training images ({getattr(train, 'num_empty_images_removed', 0)} without boxes "
        f"left out), {len(val)} validation images, {len(val.class_names)} classes; "
        f"{getattr(train, 'num_degenerate_boxes', 0)} degenerate boxes dropped"
    )


def build_datasets(cfg: DetTrainConfig, *, eval_only: bool):
    """(train, val): COCO splits are <data_path>/annotations/instances_<split>.json + <data_path>/<split>/."""
    if cfg.dataset not in ("coco", "voc"):
        raise ValueError(
            "pass --dataset coco (any COCO-format json) or --dataset voc, and --data_path (see --help); "
            "for a first run generate data: python -m detection.data.synthetic --out runs/shapes"
        )
    if not cfg.data_path:
        raise ValueError("pass --data_path: the folder holding the dataset (see --help)")
    root = Path(cfg.data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_path {root} is not a folder")
    # uint8 out of the workers (a quarter of float32's bytes to pin and copy); batch_to_device makes floats
    train_transform = build_transforms(flip_prob=cfg.flip_prob, to_float=False)  # the detector resizes
    eval_transform = build_transforms(to_float=False)

    def load(split: str, *, transforms, keep_empty: bool):
        if cfg.dataset == "coco":
            return CocoDetection(
                root / "annotations" / f"instances_{split}.json", root / split, keep_empty=keep_empty,
                transforms=transforms,
            )  # fmt: skip
        folder, _, image_set = split.rpartition("/")
        # a custom VOC-layout dataset lists its classes in classes.txt (one per line, label order)
        names_file = root / folder / "classes.txt"
        class_names = read_class_names(names_file) if names_file.is_file() else VOC_CLASSES
        return VocDetection(
            root / folder, image_set, class_names=class_names, keep_empty=keep_empty, transforms=transforms
        )

    train_splits, val_split = resolve_splits(cfg)
    val = load(val_split, transforms=eval_transform, keep_empty=True)
    if eval_only:
        return None, val
    # the augmentation runs in SeededDataset (seeded per sample, for exact resume), not in the dataset
    parts = [load(split, transforms=None, keep_empty=cfg.keep_empty) for split in train_splits]
    train = parts[0] if len(parts) == 1 else ConcatDetection(parts)
    if train.class_names != val.class_names:
        raise ValueError(f"training classes {train.class_names} differ from validation classes {val.class_names}")
    return SeededDataset(train, train_transform, joint=True), val
