"""CIFAR-10 held on the training device: decoded once into uint8 tensors, augmented in batches there.

The per-sample path (DataLoader -> PIL -> v2 transforms) costs a CPU decode and a dozen small
tensor ops per image, which starves a GPU training ResNet-20. Here the whole set sits on the device
(60000 x 3 x 40 x 40 uint8, already padded by 4 pixels: 288 MB), and one batch is one gather:
random 32x32 crop of the padded image and horizontal flip (Sec. 4.2), then per-channel
normalisation. Crop offsets and flips are those the per-sample path draws for the same
(index, seed) keys of `ResumableBatchSampler`: `cifar_crop_flip_params` replays torch's CPU
generator (mt19937) for all seeds of an epoch at once, so a run resumes exactly and the two paths
train on identical pixels.

`python -m training.device_data pack` writes the packed uint8 file `load_cifar_arrays` reads in a second.
"""

import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbone.files import write_atomically
from training.classification_data import DatasetError, build_dataset, extract_once, find_split_root
from training.sampler import ResumableBatchSampler

PACKED_FORMAT = "resdet.cifar_uint8"
PACKED_SUFFIX = ".pt"

# mt19937 constants (Matsumoto & Nishimura 1998), as in ATen's at::mt19937.
_MT_N, _MT_M = 624, 397
_MT_INIT_MULTIPLIER = 1812433253
_MT_MATRIX_A, _MT_UPPER, _MT_LOWER = 0x9908B0DF, 0x80000000, 0x7FFFFFFF
_U32 = 0xFFFFFFFF


def mt19937_first_outputs(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` 32-bit outputs of torch's CPU generator after `manual_seed(seed)`, for every seed.

    torch keeps only the low 32 bits of the seed. Output i needs the initial state words i, i+1 and
    i+397 alone, so the initialisation recurrence stops at word 397+count instead of 624: vectorised
    over an epoch's 50000 seeds this is ~2000 int64 tensor ops instead of 50000 generator calls, and it
    runs on the seeds' device (on a GPU, ~2000 small kernels per epoch).
    """
    if not 0 < count < _MT_N - _MT_M:
        raise ValueError(f"count must be in [1, {_MT_N - _MT_M}), got {count}")
    word = seeds.to(torch.int64) & _U32
    words = {0: word}  # only the words the outputs read, not all 400
    for index in range(1, _MT_M + count):
        word = (word ^ (word >> 30)).mul_(_MT_INIT_MULTIPLIER).add_(index).bitwise_and_(_U32)
        if index <= count or index >= _MT_M:
            words[index] = word
    outputs = []
    for index in range(count):
        y = (words[index] & _MT_UPPER) | (words[index + 1] & _MT_LOWER)
        y = words[index + _MT_M] ^ (y >> 1) ^ ((y & 1) * _MT_MATRIX_A)
        y = y ^ (y >> 11)  # tempering
        y = y ^ ((y << 7) & 0x9D2C5680)
        y = y ^ ((y << 15) & 0xEFC60000)
        outputs.append((y ^ (y >> 18)) & _U32)
    return torch.stack(outputs, dim=1)


def cifar_crop_flip_params(seeds: torch.Tensor, *, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) that `cifar_train_transform` draws under each seed (training.sampler.SeededDataset).

    v2.RandomCrop draws top then left with `torch.randint(0, 2 * padding + 1, ())` (32-bit output
    modulo the range), then v2.RandomHorizontalFlip flips when `torch.rand(1) < 0.5` (the low 24
    bits of the next output over 2**24).
    """
    outputs = mt19937_first_outputs(seeds, 3)
    positions = 2 * padding + 1
    top, left = outputs[:, 0] % positions, outputs[:, 1] % positions
    flip = (outputs[:, 2] & 0xFFFFFF).to(torch.float64) / 2**24 < 0.5
    return top, left, flip


@dataclass
class CifarArrays:
    """CIFAR-10 as uint8 (N, 32, 32, 3) images and int64 labels per split, and the class names."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]


def _split_arrays(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of a dataset yielding (PIL image or CHW uint8 tensor, label)."""
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = dataset[index]
        pixels = np.asarray(image) if isinstance(image, Image.Image) else image.permute(1, 2, 0).numpy()
        if pixels.shape != (32, 32, 3):
            raise DatasetError(f"image {index} of the {len(dataset)} is {pixels.shape}, not 32x32 RGB")
        images.append(pixels)
        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _arrays_from_tarball(path: Path, *, train_split: str, test_split: str) -> CifarArrays:
    """Decode `[<wrapper>/]<split>/<class>/<image>` members straight from the archive (no extraction:
    60000 small files are slower to write than to decode), in ImageFolder's order: sorted classes,
    sorted file names within each."""
    members: dict[str, dict[str, list[tuple[str, bytes]]]] = {train_split: {}, test_split: {}}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or len(parts) < 3 or parts[-3] not in members:
                    continue
                if parts[-1].lower().endswith(IMG_EXTENSIONS):
                    members[parts[-3]].setdefault(parts[-2], []).append((parts[-1], tar.extractfile(member).read()))
    except (tarfile.TarError, OSError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    classes = sorted(members[train_split])
    for split, by_class in members.items():
        if sorted(by_class) != classes or not classes:
            raise DatasetError(
                f"{path}: '{split}' has classes {sorted(by_class)}, expected those of '{train_split}' {classes} "
                f"(layout: [<folder>/]{train_split}|{test_split}/<class>/<image files>)"
            )
    arrays = []
    for split in (train_split, test_split):
        samples = [
            (name, data, label) for label, cls in enumerate(classes) for name, data in sorted(members[split][cls])
        ]
        images = []
        for name, data, _ in samples:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except (OSError, ValueError) as error:
                raise DatasetError(f"cannot read image {name} in {path}: {error}") from error
        if any(image.shape != (32, 32, 3) for image in images):
            raise DatasetError(f"{path}: the {split} images are not all 32x32 RGB")
        arrays += [torch.from_numpy(np.stack(images)), torch.tensor([s[2] for s in samples], dtype=torch.int64)]
    return CifarArrays(*arrays, classes)


def is_packed(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and Path(path).name.endswith(PACKED_SUFFIX)


def load_cifar_arrays(
    path: str | os.PathLike,
    *,
    kind: str = "folder",
    train_split: str = "train",
    test_split: str = "test",
    cache_dir: str | os.PathLike = "data_cache",
) -> CifarArrays:
    """From a packed .pt, a .tar(.gz) or folder of class folders (decoded with PIL, as the per-sample
    path, in ImageFolder's order), or the python batches (`kind="cifar10"`)."""
    path = Path(path)
    if is_packed(path):
        try:
            packed = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated zip, foreign pickle: torch raises several types
            raise DatasetError(f"cannot read packed CIFAR file {path}: {error}") from error
        if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
            raise DatasetError(f"{path} is not a packed CIFAR file (made by `python -m training.device_data pack`)")
        return CifarArrays(**{key: packed[key] for key in CifarArrays.__dataclass_fields__})
    if not path.exists():
        raise DatasetError(f"CIFAR data not found: {path}")
    if path.is_file() and kind == "folder" and tarfile.is_tarfile(path):
        return _arrays_from_tarball(path, train_split=train_split, test_split=test_split)
    if path.is_file():
        path = find_split_root(extract_once(path, cache_dir), test_split)
    train = build_dataset(kind=kind, root=path, split=train_split)
    test = build_dataset(kind=kind, root=path, split=test_split)
    if list(train.classes) != list(test.classes):
        raise DatasetError(f"classes of {path / train_split} and {path / test_split} differ")
    train_images, train_labels = _split_arrays(train)
    test_images, test_labels = _split_arrays(test)
    return CifarArrays(train_images, train_labels, test_images, test_labels, list(train.classes))


def pack(arrays: CifarArrays, output: str | os.PathLike) -> Path:
    """Write the arrays to one .pt file (atomically: a killed pack leaves nothing half-written)."""
    output = Path(output)
    if not output.name.endswith(PACKED_SUFFIX):
        raise ValueError(f"packed file must end with {PACKED_SUFFIX}, got {output}")
    return write_atomically(output, lambda temporary: torch.save({"format": PACKED_FORMAT, **vars(arrays)}, temporary))


class DeviceImages(torch.utils.data.Dataset):
    """One split on the device: uint8 images stored padded (N, 3, H+2p, W+2p), labels, class names.

    Indexing gives (CHW uint8 CPU tensor, label) like `build_dataset(decoder="torchvision")`, so the
    per-sample evaluation views (10-crop, multi-scale) still work on it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[str], padding: int,
                 device: torch.device) -> None:  # fmt: skip
        self.padding = padding
        chw = images.permute(0, 3, 1, 2)
        self.padded = torch.nn.functional.pad(chw, (padding,) * 4).to(device)  # zeros, as v2.RandomCrop's fill
        self.labels = labels.to(device)
        self.classes = list(classes)
        self.size = images.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        p = self.padding
        return self.padded[index, :, p : p + self.size, p : p + self.size].cpu(), int(self.labels[index])


class Normalizer:
    """uint8 batch -> float32 (x / 255 - mean) / std, in the same operations as v2.ToDtype + v2.Normalize."""

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def crop_and_flip(split: DeviceImages, indices: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  flip: torch.Tensor, *, crop_size: int) -> torch.Tensor:  # fmt: skip
    """uint8 (B, C, crop, crop): crops of the padded `split[indices]` at (top, left), mirrored where `flip`."""
    device = split.padded.device
    offsets = torch.arange(crop_size, device=device)
    rows = top.to(device)[:, None] + offsets
    cols = left.to(device)[:, None] + offsets
    cols = torch.where(flip.to(device)[:, None], cols.flip(1), cols)
    channels = torch.arange(split.padded.shape[1], device=device)
    return split.padded[
        indices.to(device)[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # one gather  # fmt: skip


def augment(split: DeviceImages, indices: torch.Tensor, seeds: torch.Tensor, *, crop_size: int) -> torch.Tensor:
    """uint8 crops of `split[indices]` with the per-sample path's crops and flips for `seeds`."""
    top, left, flip = cifar_crop_flip_params(seeds, padding=split.padding)
    return crop_and_flip(split, indices, top, left, flip, crop_size=crop_size)


class DeviceTrainBatches:
    """Training batches of `sampler`'s current epoch (from its start step), made on the device.

    Stands in for the training DataLoader in `training.loop.iterate_batches`: the same
    `set_epoch(epoch, start_step)` contract, so resuming at iteration k gives batch k exactly.
    The crop parameters of a whole epoch are computed once, when its first batch is asked for.
    """

    def __init__(self, split: DeviceImages, *, sampler: ResumableBatchSampler, crop_size: int,
                 normalizer: Normalizer) -> None:  # fmt: skip
        self.split, self.sampler, self.crop_size, self.normalizer = split, sampler, crop_size, normalizer

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.sampler.epoch_batches(self.sampler.epoch)[self.sampler.start_step :]
        if not batches:
            return
        device = self.split.padded.device
        keys = torch.from_numpy(np.array(batches, dtype=np.int64)).to(device)  # (steps, batch, 2): index, seed
        indices = keys[..., 0]
        # One pass for the epoch's crop parameters (on the device: a few thousand small kernels).
        top, left, flip = (
            p.view(indices.shape) for p in cifar_crop_flip_params(keys[..., 1].flatten(), padding=self.split.padding)
        )
        for step in range(len(batches)):
            crops = crop_and_flip(self.split, indices[step], top[step], left[step], flip[step],
                                  crop_size=self.crop_size)  # fmt: skip
            yield self.normalizer(crops), self.split.labels[indices[step]]


class DeviceEvalBatches:
    """The centre view (the whole 32x32 image) of `indices`, in batches; labels on the CPU, as
    `training.evaluation.evaluate` expects of a DataLoader's."""

    def __init__(self, split: DeviceImages, *, indices: Sequence[int], batch_size: int, normalizer: Normalizer) -> None:
        self.split, self.batch_size, self.normalizer = split, batch_size, normalizer
        self.indices = torch.as_tensor(list(indices), dtype=torch.int64)

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        p, size = self.split.padding, self.split.size
        for start in range(0, len(self.indices), self.batch_size):
            chunk = self.indices[start : start + self.batch_size]
            images = self.split.padded[chunk.to(self.split.padded.device), :, p : p + size, p : p + size]
            yield self.normalizer(images), self.split.labels[chunk.to(self.split.labels.device)].cpu()
