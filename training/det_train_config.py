"""The settings of a detection run (training/train_det.py): the config dataclass, its recipes and the checks
that need no data or model. No torch here, so that `train_det.py --help` answers at once."""

from dataclasses import dataclass

from backbone.flags import option, with_default
from detection.data.batching import DEFAULT_WORKERS
from detection.options import DetectorOptions
from detection.test_time_options import TestTimeOptions
from training.run_options import RunOptions

# Splits when --train_split / --val_split are not given: COCO 2017's names, VOC's ImageSets/Main names.
DEFAULT_SPLITS = {"coco": (("train2017",), "val2017"), "voc": (("train",), "val")}


# Multi-scale training (detectron2's and torchvision's "1x"): one shorter side drawn per image, the last for testing.
TRAIN_MIN_SIZES = (640, 672, 704, 736, 768, 800)


@dataclass
class DetTrainConfig(RunOptions):
    """Every setting of a detection run. Defaults: the modern "1x" schedule (detectron2/torchvision).

    The detector's own options are one nested `DetectorOptions` (detection/options.py): its fields are
    flags of this command under their own names (`--min_size`, `--box_head`) and go to build_detector whole.
    """

    # --- data
    dataset: str = option("", '"coco" (any COCO-format instances json) or "voc" (VOC folder layout).')
    data_path: str = option(
        "", "COCO: the folder holding annotations/instances_<split>.json and <split>/; VOC: the folder holding the "
        "VOC folders.",
    )  # fmt: skip
    train_split: tuple[str, ...] = option(
        (), "Training splits, several are concatenated; none given means train2017 (COCO) or train (VOC); VOC "
        "names a folder too, e.g. VOC2007/trainval.",
    )  # fmt: skip
    val_split: str = option("", 'The validation split; "" means val2017 (COCO) or val (VOC); e.g. "VOC2007/test".')
    keep_empty: bool = option(False, "Keep training images without boxes (torchvision's reference drops them).")
    flip_prob: float = option(
        0.5, "Probability of a horizontal flip (paper: flipping, Faster R-CNN's only augmentation)."
    )
    group_aspect_ratio: bool = option(True, "Batch images of similar aspect ratio together (less padding).")
    workers: int = option(DEFAULT_WORKERS, "DataLoader workers per rank: 4, or the cores this process has if fewer.")
    # --- model
    backbone: str = option("resnet50", "The backbone: resnet18..152 or plain18..152.")
    head: str = option("fpn", '"fpn", or "c4" (the paper\'s appendix).')
    detector: DetectorOptions = option(
        DetectorOptions(min_size=TRAIN_MIN_SIZES), "The detector's options (each is a flag of its own)."
    )
    test_time: TestTimeOptions = option(
        TestTimeOptions(), "How evaluation runs the detector: the test-time ladder (each is a flag of its own; the "
        "defaults run the plain detector).",
    )  # fmt: skip
    init: str = option(
        "", '"" trains from scratch; a classifier (.safetensors of pretrain.py, torchvision ResNet .pth) initialises '
        "the backbone; a detector (our .safetensors, torchvision Faster R-CNN .pth) initialises the whole model "
        "and fixes its architecture.",
    )  # fmt: skip
    # --- optimisation: SGD; the "1x" schedule: lr 0.02 at batch 16, steps at 2/3 and 8/9, 1000-it warm-up
    batch_size: int = option(
        16,
        "Global batch size: images per iteration over all processes together (torchvision's --batch-size "
        "counts per process).",
    )
    lr: float = option(
        0.02, "Learning rate at lr_reference_batch, scaled linearly with batch_size (Goyal et al. 2017)."
    )
    lr_reference_batch: int = option(16, "The batch size at which lr applies unscaled.")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(1e-4, "SGD weight decay.")
    max_iterations: int = option(90000, "Training length in iterations.")
    lr_milestones: tuple[int, ...] = option(
        (), "Iterations at which the learning rate is divided by 10; none given means 2/3 and 8/9 of max_iterations."
    )
    warmup_iterations: int = option(1000, "Iterations of the linear warm-up.")
    warmup_factor: float = option(0.001, "The warm-up ramps linearly from lr * warmup_factor.")
    max_grad_norm: float = option(0.0, "Gradient norm clipping threshold; 0 means no clipping.")
    # --- evaluation
    metrics: tuple[str, ...] = option(
        (), '"coco" and/or "voc"; none given means coco for COCO data, both for VOC data.'
    )
    eval_every: int = option(0, "Iterations between evaluations; 0 means once per epoch.")
    eval_batch_size: int = option(
        2, "Images per rank decoded together for evaluation; the Predictor runs those of one padded shape together."
    )
    # fp32 as the paper and torchvision's references evaluate: metrics comparable across machines and amp settings
    eval_precision: str = option(
        "fp32", 'Precision of the evaluation detections, the Predictor\'s policy: "fp32", "bf16" or '
        '"auto" (bf16 where the device computes it natively); fp32 by default, as the paper and torchvision evaluate.',
    )  # fmt: skip
    eval_only: str = option("", "A model.safetensors to evaluate instead of training.")
    # --- infrastructure (the rest, shared with pretrain.py, in training/run_options.py)
    output_dir: str = with_default(RunOptions, "output_dir", "runs/detection")  # each command its own folder
    channels_last: str = option(
        "auto", '"auto" (on for CPU, off for CUDA: measured per device), "true" or "false": the model in the '
        "channels-last memory format.",
        switch=True,
    )  # fmt: skip
    compile: bool = option(False, "Compile the feature extractor (backbone + FPN) with torch.compile.")


RECIPES = {
    "1x": {},  # the defaults
    # ResNet paper, appendix (COCO): 8 GPUs, 8 images per RPN mini-batch, 16 per Fast R-CNN one; lr 0.001 for
    # 240k iterations, 0.0001 for 80k more; 600 px. Departures: we train RPN and Fast R-CNN jointly (one
    # batch of 8) instead of the paper's alternating steps, and keep a short warm-up off.
    "paper_coco": dict(
        head="c4", min_size=(600,), max_size=1000, batch_size=8, lr=0.001, lr_reference_batch=8,
        max_iterations=320000, lr_milestones=(240000,), warmup_iterations=0, box_batch_size_per_image=128,
    ),
    # VOC, with Faster R-CNN's hyper-parameters (the ResNet paper keeps them): lr 0.001 for 60k mini-batches
    # of one image, 0.0001 for 20k more; 600 px.
    "paper_voc": dict(
        head="c4", min_size=(600,), max_size=1000, batch_size=1, lr=0.001, lr_reference_batch=1,
        max_iterations=80000, lr_milestones=(60000,), warmup_iterations=0, box_batch_size_per_image=128,
    ),
    # generated shapes from scratch on a CPU (quickstart, demo model, CI): a narrow ResNet-18 (width 16, a
    # quarter of the paper's), small images, BN trained (nothing pretrained to freeze)
    "synthetic": dict(
        backbone="resnet18", head="fpn", base_width=16, fpn_channels=64, representation_size=256, frozen_bn=False,
        freeze_at=0, min_size=(128,), max_size=128, anchor_sizes=(16, 32, 64, 128, 256), batch_size=4, lr=0.02,
        lr_reference_batch=8, max_iterations=2000, warmup_iterations=100, rpn_post_nms_top_n_train=500,
        rpn_post_nms_top_n_test=300, box_batch_size_per_image=128, eval_every=500, workers=1,
        train_split=("train",), val_split="val",
    ),
}  # fmt: skip
# The same for the paper's C4 head: it learns more slowly from scratch (held-out AP50 0.39 / 0.61 / 0.82 /
# 0.93 at 500 / 1000 / 1500 / 2000 iterations with lr still 0.01), so twice the schedule: AP50 0.990, AP 0.858
# at 4000 (docs/BENCHMARKS.md).
RECIPES["synthetic_c4"] = dict(RECIPES["synthetic"], head="c4", max_iterations=4000)


def resolve_splits(cfg: DetTrainConfig) -> tuple[tuple[str, ...], str]:
    """(train splits, val split): the flags, or the dataset kind's default names where they are empty."""
    default_train, default_val = DEFAULT_SPLITS.get(cfg.dataset, ((), ""))
    return cfg.train_split or default_train, cfg.val_split or default_val


def check_test_time_options(cfg: DetTrainConfig) -> None:
    """The test-time ladder evaluates a checkpoint (--eval_only); training evaluates the plain detector."""
    if cfg.test_time != TestTimeOptions() and not cfg.eval_only:
        raise ValueError(
            "the test-time options (--refine_boxes, --test_flip, --tile_size, ...) apply to --eval_only: train "
            "without them, then evaluate the checkpoint with them"
        )


def check_frozen_layers(cfg: DetTrainConfig) -> None:
    """Frozen layers only make sense on pretrained weights: frozen random layers never learn, and a frozen
    BN with its initial statistics is the identity (no normalisation at all)."""
    frozen_bn, freeze_at = cfg.detector.frozen_bn, cfg.detector.freeze_at
    if cfg.init or cfg.eval_only or not (frozen_bn or freeze_at > 0):
        return
    raise ValueError(
        f"training from scratch (no --init) with frozen_bn={str(frozen_bn).lower()}, freeze_at={freeze_at} "
        "would keep randomly initialised layers fixed: pass --frozen_bn false --freeze_at 0 to train every layer, "
        "or --init with pretrained weights (a classifier or detector checkpoint)"
    )
