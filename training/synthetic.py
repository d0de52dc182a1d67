"""Generated classification data: class folders of noisy images whose class is their dominant colour, for
smoke runs and tests of the classification pipeline (the counterpart of detection.data.synthetic)."""

from pathlib import Path

import torch
from PIL import Image

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def write_class_folders(
    root: Path,
    *,
    per_class: dict[str, int],
    colours: dict[str, tuple[int, int, int]] = COLOURS,
    size: int = 32,
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """root/<split>/<class>/<i><suffix>, `per_class[split]` images of each class; the same seed, the same files."""
    generator = torch.Generator().manual_seed(seed)
    for split, count in per_class.items():
        for name, rgb in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                noise = torch.randint(-60, 61, (size, size, 3), generator=generator)
                pixels = (torch.tensor(rgb) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{index}{suffix}")
    return root
