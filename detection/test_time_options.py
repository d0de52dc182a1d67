"""The test-time ladder's options (`TestTimeOptions`) and their command-line flags, without torch: commands
define their flags from here and answer --help at once; detection/test_time.py applies the options."""

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from backbone.flags import option


@dataclass(frozen=True)
class TestTimeOptions:
    """The test-time ladder, each field a flag of train_det.py (--eval-only); the defaults run the plain
    detector (the cheapest). Fields have one type each (flags): 0 switches a number off."""

    __test__ = False  # not a pytest class, whatever its name says

    refine_boxes: bool = option(
        False, "Box refinement at test time (paper, appendix): pool again from the regressed boxes, run the head "
        "again, NMS at IoU 0.3 over both passes, then box voting.",
    )  # fmt: skip
    vote_threshold: float = option(
        0.0, "Box voting at test time: each kept box becomes the score-weighted mean of the boxes overlapping it "
        "at this IoU (Detectron: 0.8); 0 is off, except where refinement or merging use 0.8.",
    )  # fmt: skip
    test_flip: bool = option(
        False, "Test-time augmentation: each image mirrored left-right too, merged by NMS + voting."
    )
    test_sizes: tuple[int, ...] = option(
        (), "Test-time augmentation: shorter sides to test at, merged by NMS + box voting (none: the model's own)."
    )
    maxout_sizes: tuple[int, ...] = option(
        (), "Multi-scale testing with maxout (paper, appendix; C4 only) on this pyramid of shorter sides, e.g. "
        "200 400 600 800 1000; the RPN stays at the test size.",
    )  # fmt: skip
    tile_size: int = option(
        0, "Sliced inference: square tiles of this many pixels through the detector, merged across tiles (0: off)."
    )
    tile_overlap: float = option(0.2, "Sliced inference: the fraction of a tile its neighbours share (SAHI: 0.2).")
    tile_full_image: bool = option(False, "Sliced inference: the whole image as one more tile, for large objects.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.vote_threshold <= 1.0:
            raise ValueError(f"vote_threshold must lie in [0, 1] (0: off), got {self.vote_threshold}")
        for name in ("test_sizes", "maxout_sizes"):
            sizes = getattr(self, name)
            if isinstance(sizes, list):  # JSON round trips give lists
                object.__setattr__(self, name, tuple(sizes))
                sizes = tuple(sizes)
            if any(not isinstance(size, int) or size < 1 for size in sizes):
                raise ValueError(f"{name} must be positive pixel counts, got {sizes}")
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"{name} repeats a size: {sizes}")
        if self.tile_size < 0:
            raise ValueError(f"tile_size must be >= 0 (0: off), got {self.tile_size}")
        if not 0.0 <= self.tile_overlap < 1.0:
            raise ValueError(f"tile_overlap is a fraction of a tile in [0, 1), got {self.tile_overlap}")
        if self.tile_full_image and not self.tile_size:
            raise ValueError("tile_full_image needs a tile_size")
        if self.tile_size and self.overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap {self.tile_overlap} of a {self.tile_size}-pixel tile rounds to the whole tile"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TestTimeOptions":
        """The options a JSON object gives (a service setting), each value of its field's JSON type: ValueError
        naming an unknown key, a value of the wrong type or a bad value."""
        if not isinstance(values, Mapping):
            raise ValueError(f"expected an object of test-time options, got {values!r}")
        defaults = {each.name: each.default for each in fields(cls)}
        unknown = [key for key in values if key not in defaults]
        if unknown:
            raise ValueError(f"unknown test-time option {', '.join(map(repr, unknown))}; known: {', '.join(defaults)}")
        for key, value in values.items():
            expected = _json_type(defaults[key])
            if not _is_json_type(value, expected):
                raise ValueError(f"{key} must be {expected}, got {value!r}")
        return cls(**{
            key: float(value) if isinstance(defaults[key], float) else _plain(value) for key, value in values.items()
        })  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as it reads back from JSON (sizes as lists): settings files compare equal across runs."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    def changed_flags(self) -> list[str]:
        """The flags (`--refine-boxes`, ...) set away from their defaults: the rungs this run asks for."""
        return ["--" + each.name.replace("_", "-") for each in fields(self) if getattr(self, each.name) != each.default]

    @property
    def overlap(self) -> int:
        """The tile overlap in pixels."""
        return round(self.tile_size * self.tile_overlap)

    @property
    def from_source(self) -> bool:
        """Whether a rung resizes the source image itself (other sizes, mirroring, a pyramid, tiles): such
        images cannot be prepared at the model's one input size beforehand."""
        return self.augmented or bool(self.maxout_sizes) or bool(self.tile_size)

    @property
    def augmented(self) -> bool:
        return self.test_flip or bool(self.test_sizes)

    @property
    def vote(self) -> float | None:
        """The voting IoU, None when off."""
        return self.vote_threshold or None


def add_test_time_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TestTimeOptions field (`--refine-boxes`, `--tile-size 512`, ...), its help the field's own;
    `options_from_args` reads them back. For commands with a plain argparse parser (the predict CLI)."""
    for each in fields(TestTimeOptions):
        flag = "--" + each.name.replace("_", "-")
        text = each.metadata["help"]  # the defaults are all "off" and the texts say what off is
        if isinstance(each.default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        elif isinstance(each.default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=each.default, help=text)
        else:
            parser.add_argument(flag, type=type(each.default), default=each.default, help=text)


def options_from_args(args: argparse.Namespace) -> TestTimeOptions:
    """The TestTimeOptions of parsed `add_test_time_flags` flags (ValueError naming a bad value)."""
    return TestTimeOptions(**{each.name: _plain(getattr(args, each.name)) for each in fields(TestTimeOptions)})


def _json_type(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, tuple):
        return "a list of whole numbers"
    return "a number" if isinstance(default, float) else "a whole number"


def _is_json_type(value: Any, expected: str) -> bool:
    def whole(item: Any) -> bool:
        return isinstance(item, int) and not isinstance(item, bool)

    if expected == "true or false":
        return isinstance(value, bool)
    if expected == "a list of whole numbers":
        return isinstance(value, (list, tuple)) and all(whole(item) for item in value)
    if expected == "a number":
        return whole(value) or isinstance(value, float)
    return whole(value)


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
