"""A generated CIFAR-like JPEG tarball, for the tests of the on-device pipeline, the analyses and the bench."""

import tarfile
from pathlib import Path

import torch
from PIL import Image

COLOURS = {"bird": (200, 40, 40), "cat": (40, 180, 60), "ship": (50, 60, 210)}


def write_cifar_tarball(path: Path, *, per_split: dict[str, int], seed: int = 0) -> Path:
    """A .tar.gz laid out as ../shared/data/cifar10-jpeg.tar.gz: cifar10/<split>/<class>/<i>.jpg, 32x32,
    noisy images whose class is their dominant colour (with a bright corner, so flips and crops show)."""
    generator = torch.Generator().manual_seed(seed)
    folder = path.parent / "cifar10"
    for split, count in per_split.items():
        for name, rgb in COLOURS.items():
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                pixels = (torch.tensor(rgb) + torch.randint(-60, 61, (32, 32, 3), generator=generator)).clamp(0, 255)
                pixels[:6, :6] = 255
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / split / name / f"{index:04d}.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar10")
    return path
