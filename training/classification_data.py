"""Image classification datasets: ImageNet-style class folders, CIFAR-10 python batches, tarballs.

Every dataset yields (image, label) with the image undecorated (PIL, or a uint8 tensor with the
torchvision decoder); augmentation is applied by `SeededDataset`. Problems stop with an error
naming the folder or file: a missing split, an empty class folder, an unreadable image, a CIFAR
batch file of the wrong size.
"""

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import check_integrity
from torchvision.io import ImageReadMode, decode_image, read_file

DECODERS = ("pil", "torchvision")


class DatasetError(RuntimeError):
    """A dataset folder or file that is missing, empty or unreadable; the message names it."""


def load_pil(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def load_tensor(path: str) -> torch.Tensor:
    """uint8 CHW RGB through torchvision.io (libjpeg-turbo for JPEG)."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def check_class_folders(root: Path) -> list[str]:
    """Class names of `root/<class>/<image>`; errors name a missing root or an empty class folder."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root} (expected {root}/<class>/<image files>)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(f"{root} has no class folders (expected {root}/<class>/<image files>)")
    for name in classes:
        folder = root / name
        if not any(f.lower().endswith(IMG_EXTENSIONS) for f in os.listdir(folder)):
            raise DatasetError(f"class folder {folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return classes


class ClassFolderDataset(ImageFolder):
    """torchvision's ImageFolder with checked folders and decode errors that name the file."""

    def __init__(self, root: str | os.PathLike, *, decoder: str = "pil") -> None:
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        root = Path(root)
        check_class_folders(root)
        super().__init__(str(root), loader=load_pil if decoder == "pil" else load_tensor)


class CheckedCIFAR10(Dataset):
    """The original CIFAR-10 python batches through torchvision (download=False), files checked first."""

    def __init__(self, root: str | os.PathLike, *, train: bool) -> None:
        root = Path(root)
        if root.name == CIFAR10.base_folder:
            root = root.parent  # accept the batches folder itself as well as its parent
        folder = root / CIFAR10.base_folder
        if not folder.is_dir():
            raise DatasetError(
                f"CIFAR-10 batches not found: {folder} (extract cifar-10-python.tar.gz there; nothing is downloaded)"
            )
        files = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
        for name, md5 in files:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"CIFAR-10 batch file missing: {path}")
            if not check_integrity(str(path), md5):
                raise DatasetError(
                    f"CIFAR-10 batch file {path} has the wrong size or content ({path.stat().st_size} bytes, "
                    f"md5 differs from the original cifar-10-python.tar.gz); re-extract it"
                )
        self.cifar = CIFAR10(str(root), train=train, download=False)
        self.classes = list(self.cifar.classes)

    def __len__(self) -> int:
        return len(self.cifar)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.cifar[index]


def extract_once(archive: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Extract a .tar/.tar.gz into `cache_dir/<archive name>/` the first time; later calls reuse it.

    Extraction goes to a temp folder renamed at the end, so a killed extraction is redone, never used.
    Every process of a node may call it at once: a file lock lets one extract while the others wait.
    """
    archive, cache_dir = Path(archive), Path(cache_dir)
    if not archive.is_file():
        raise DatasetError(f"dataset archive not found: {archive}")
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = cache_dir / name
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        return target if target.is_dir() else _extract(archive, target)


def _extract(archive: Path, target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # "data" refuses absolute paths and links out of the folder
        os.replace(tmp, target)
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"cannot extract {archive}: {error}") from error
    return target


def find_split_root(root: Path, split: str) -> Path:
    """`root` itself, or its only subfolder, when it holds `split/` (tarballs often wrap one folder)."""
    if (root / split).is_dir():
        return root
    children = [child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")]
    if len(children) == 1 and (children[0] / split).is_dir():
        return children[0]
    raise DatasetError(f"no '{split}' folder in {root} (expected {root}/{split}/<class>/<image files>)")


def build_dataset(*, kind: str, root: Path, split: str, decoder: str = "pil") -> Any:
    """kind "folder" (root/split/<class>/*) or "cifar10" (python batches; split "train" or "test"/"val")."""
    if kind == "folder":
        return ClassFolderDataset(root / split, decoder=decoder)
    if kind == "cifar10":
        return CheckedCIFAR10(root, train=split == "train")
    raise ValueError(f"dataset kind must be 'folder' or 'cifar10', got {kind!r}")
