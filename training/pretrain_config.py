"""The settings of a pretraining run (training/pretrain.py): the config dataclass and the paper's recipes. No
torch here, so that `pretrain.py --help` answers at once."""

from dataclasses import dataclass

from backbone.flags import option, with_default
from backbone.pixel_statistics import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from training.run_options import RunOptions

# Sec. 3.4: "the fully-convolutional form ... average the scores at multiple scales
# (images are resized such that the shorter side is in {224, 256, 384, 480, 640})".
PAPER_TEST_SCALES = (224, 256, 384, 480, 640)


@dataclass
class PretrainConfig(RunOptions):
    """Every setting of a pretraining run. The defaults are the paper's ImageNet recipe (Sec. 3.4)."""

    # --- data
    dataset: str = option(
        "folder", '"folder": data_path/<split>/<class>/<images>; "cifar10": the python batches (cifar-10-batches-py).'
    )
    data_path: str = option("", "A folder, or a .tar/.tar.gz of one (extracted once into cache_dir).")
    train_split: str = option("train", "The training split: a sub-folder of data_path (or a CIFAR-10 part).")
    val_split: str = option("val", "The validation split: a sub-folder of data_path (CIFAR-10: test).")
    cache_dir: str = option("", 'Where archives are extracted; "" means data_cache/ in the repository (gitignored).')
    decoder: str = option("pil", '"pil" or "torchvision" (torchvision.io.decode_image) JPEG decoding.')
    workers: int = option(4, "DataLoader worker processes per rank.")
    data_on_device: bool = option(
        False, "CIFAR only: the whole set as uint8 on the training device, cropped and flipped there in batches "
        "(training.device_cifar): the same pixels as the per-sample path, without a DataLoader.",
    )  # fmt: skip
    # --- model
    model: str = option("resnet50", "Any name of backbone.list_models(); the classifier gets one output per class.")
    norm: str = option("bn", '"bn" (batch norm, as in the paper) or "frozen_bn" (fixed statistics and affine).')
    zero_init_residual: bool = option(
        False, "Start each residual branch's last BN at zero (Goyal et al. 2017; the paper does not use it)."
    )
    # --- optimisation: SGD, momentum 0.9, weight decay 1e-4, lr 0.1 for batch 256 (Sec. 3.4); no dropout
    batch_size: int = option(
        256,
        "Global batch size: images per iteration over all processes together (torchvision's --batch-size "
        "counts per process).",
    )
    lr: float = option(0.1, "Learning rate at lr_reference_batch, scaled linearly with batch_size (Goyal et al. 2017).")
    lr_reference_batch: int = option(256, "The batch size at which lr applies unscaled.")
    momentum: float = option(0.9, "SGD momentum (paper: 0.9).")
    weight_decay: float = option(1e-4, "SGD weight decay (paper: 0.0001).")
    lr_milestones: tuple[int, ...] = option((30, 60), "The learning rate is divided by 10 at each, in schedule_unit.")
    # paper: /10 when the error plateaus, up to 60e4 iterations (~120 epochs); fixed steps are the
    # reproducible standard (torchvision's reference). --plateau_patience N gives the paper's rule.
    schedule_unit: str = option("epochs", '"epochs" or "iterations": the unit of lr_milestones.')
    epochs: int = option(90, "Training length in epochs (unless max_iterations is set).")
    max_iterations: int = option(0, "Training length in iterations; when above 0 it overrides epochs.")
    plateau_patience: int = option(
        0, "Evaluations without improvement before the learning rate is divided by 10 (the paper's rule); 0 is off."
    )
    warmup_iterations: int = option(0, "Upper bound on the warm-up, in iterations.")
    warmup_factor: float = option(1.0, "Learning rate multiplier during the warm-up.")
    warmup_until_error: float = option(
        0.0, "End the warm-up once the training error falls below this (Sec. 4.2, ResNet-110: 0.8)."
    )
    # --- augmentation
    augmentation: str = option(
        "imagenet", '"imagenet" (scale + crop + flip + PCA lighting) or "cifar" (pad + crop + flip).'
    )
    train_scale_range: tuple[int, ...] = option(
        (256, 480), "Shorter side sampled uniformly from this range (Sec. 3.4)."
    )
    crop_size: int = option(224, "Side of the square training crop and of the centre crop, in pixels.")
    eval_resize: int = option(256, "Shorter side before the centre crop or the 10 crops, in pixels.")
    padding: int = option(4, "CIFAR: pixels padded on each side before the random crop.")
    lighting_std: float = option(0.1, "Strength of AlexNet's PCA colour augmentation; 0 is off.")
    mean: tuple[float, ...] = option(IMAGENET_MEAN, "Per-channel mean subtracted from RGB inputs in [0, 1].")
    std: tuple[float, ...] = option(IMAGENET_STD, "Per-channel standard deviation the inputs are divided by.")
    # --- evaluation
    eval_every: int = option(0, "Iterations between evaluations (centre crop); 0 means once per epoch.")
    final_eval: tuple[str, ...] = option(
        ("center", "ten_crop", "multi_scale"), "Evaluations at the end of training: center, ten_crop, multi_scale."
    )
    test_scales: tuple[int, ...] = option(
        PAPER_TEST_SCALES, "Shorter sides of the multi-scale evaluation (paper: 224, 256, 384, 480, 640)."
    )
    eval_batch_size: int = option(0, "Evaluation batch per rank; 0 means the training batch per rank.")
    eval_only: str = option("", "A model.safetensors to evaluate (final_eval modes) instead of training.")
    # --- infrastructure (the rest, shared with train_det.py, in training/run_options.py)
    output_dir: str = with_default(RunOptions, "output_dir", "runs/pretrain")  # each command its own folder
    channels_last: bool = option(True, "Run the model in the channels-last memory format.")
    compile: bool = option(False, "Compile the model with torch.compile.")
    compile_mode: str = option(
        "default", 'The torch.compile mode; "reduce-overhead" adds CUDA graphs (small nets on CUDA).'
    )
    sync_bn: bool = option(False, "Batch norm statistics over the global batch (CUDA only); the paper's are per GPU.")


CIFAR10_RECIPE = dict(
    model="cifar_resnet20",
    augmentation="cifar",
    crop_size=32,
    eval_resize=32,
    padding=4,
    lighting_std=0.0,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    val_split="test",
    batch_size=128,
    lr=0.1,
    lr_reference_batch=128,  # Sec. 4.2: mini-batch 128, lr 0.1
    lr_milestones=(32000, 48000),
    schedule_unit="iterations",
    max_iterations=64000,  # /10 at 32k, 48k; stop at 64k
    eval_every=1000,
    final_eval=("center",),  # the paper tests CIFAR on the single 32x32 view
)
RECIPES = {
    "imagenet": {},  # the PretrainConfig defaults
    "cifar10": CIFAR10_RECIPE,
    # Sec. 4.2, ResNet-110: lr 0.01 until training error < 80% (about 400 iterations), then 0.1.
    # The 2000-iteration bound is ours: the paper gives none.
    "cifar10_warmup": {
        **CIFAR10_RECIPE,
        "model": "cifar_resnet110",
        "warmup_factor": 0.1,
        "warmup_iterations": 2000,
        "warmup_until_error": 0.8,
    },
}
