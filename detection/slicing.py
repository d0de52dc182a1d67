"""Sliced inference for large images: overlapping tiles through the detector, boxes merged across tiles.

Each tile is detected at the detector's own test size, so small objects of a large photograph are
seen at a useful resolution. An object cut by a tile border appears in two or more tiles, often once
whole and once in part; plain NMS keeps both (a part's IoU with the whole is its fraction of it). So,
as SAHI's default (greedy merging by intersection over the smaller box), boxes of the same class from
different tiles that overlap by at least `merge_threshold` of the smaller one are merged into the box
enclosing them, with the best score. Boxes from the same tile never merge: the detector's own NMS
already decided between them. The whole image can be added as one more tile for the large objects.
"""

from collections.abc import Callable, Sequence

import torch

Detections = dict[str, torch.Tensor]
# images [3, H, W] (floats in [0, 1]) -> their detections in their own pixels
DetectFn = Callable[[list[torch.Tensor]], list[Detections]]

FULL_IMAGE = -1  # the source index of the whole image's detections


def tile_windows(height: int, width: int, *, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(x1, y1, x2, y2) windows of tile_size (or the image's side, when smaller) that cover the image, each
    overlapping its neighbour by at least `overlap` pixels; the last window of a row or column is moved
    back to end at the image's border, so every window has the same size (tiles batch together)."""
    if tile_size < 1:
        raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile_size {tile_size}")
    xs = _starts(width, tile=min(tile_size, width), step=tile_size - overlap)
    ys = _starts(height, tile=min(tile_size, height), step=tile_size - overlap)
    tile_w, tile_h = min(tile_size, width), min(tile_size, height)
    return [(x, y, x + tile_w, y + tile_h) for y in ys for x in xs]


def _starts(length: int, *, tile: int, step: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, step))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def detect_sliced(
    detect: DetectFn,
    image: torch.Tensor,
    *,
    tile_size: int,
    overlap: int,
    full_image: bool = False,
    merge_threshold: float = 0.5,
    batch_size: int = 4,
    max_detections: int | None = None,
) -> Detections:
    """Detections of one image [3, H, W] from its tiles (and the whole image when full_image), in its pixels."""
    if image.dim() != 3:
        raise ValueError(f"expected one image [3, H, W], got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    windows = tile_windows(image.shape[-2], image.shape[-1], tile_size=tile_size, overlap=overlap)
    parts: list[Detections] = []
    sources: list[torch.Tensor] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = [image[:, y1:y2, x1:x2] for x1, y1, x2, y2 in chunk]
        for offset, ((x1, y1, _, _), found) in enumerate(zip(chunk, detect(tiles))):
            shift = torch.tensor([x1, y1, x1, y1], dtype=found["boxes"].dtype, device=found["boxes"].device)
            parts.append({**found, "boxes": found["boxes"] + shift})
            sources.append(torch.full((len(found["boxes"]),), start + offset, dtype=torch.int64))
    if full_image and len(windows) > 1:
        (found,) = detect([image])
        parts.append(found)
        sources.append(torch.full((len(found["boxes"]),), FULL_IMAGE, dtype=torch.int64))
    merged = merge_across_tiles(
        *(torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels")),
        torch.cat(sources).to(image.device),
        merge_threshold=merge_threshold,
    )
    if max_detections is not None:
        merged = {key: value[:max_detections] for key, value in merged.items()}
    return merged


def merge_across_tiles(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    sources: torch.Tensor,
    *,
    merge_threshold: float,
) -> Detections:
    """Greedy, best score first: each remaining box grows by absorbing the remaining boxes of its class from
    sources not yet in its group whose intersection with it covers at least merge_threshold of the smaller
    of the two, until none is left to absorb (an object wider than a tile is seen in parts that only
    overlap their neighbours); the result is the box enclosing the group, with its best score."""
    if not 0.0 < merge_threshold <= 1.0:
        raise ValueError(f"merge_threshold must lie in (0, 1], got {merge_threshold}")
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, labels, sources = boxes[order], scores[order], labels[order], sources[order]
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    kept_boxes, kept = [], []
    for index in range(len(boxes)):
        if not alive[index]:
            continue
        alive[index] = False
        box, group_sources = boxes[index], sources[index : index + 1]
        while True:
            joining = (
                alive
                & (labels == labels[index])
                & ~torch.isin(sources, group_sources)
                & (_intersection_over_smaller(box, boxes) >= merge_threshold)
            )
            if not joining.any():
                break
            members = torch.cat([box[None], boxes[joining]])
            box = torch.cat([members[:, :2].min(dim=0).values, members[:, 2:].max(dim=0).values])
            group_sources = torch.cat([group_sources, sources[joining]]).unique()
            alive &= ~joining
        kept_boxes.append(box)
        kept.append(index)
    index = torch.tensor(kept, dtype=torch.int64, device=boxes.device)
    merged_boxes = torch.stack(kept_boxes) if kept_boxes else boxes.new_zeros((0, 4))
    return {"boxes": merged_boxes, "scores": scores[index], "labels": labels[index]}


def _intersection_over_smaller(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """For one box [4] and boxes [N, 4]: intersection / the smaller of the two areas, per box."""
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:], boxes[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    smaller = torch.minimum((box[2:] - box[:2]).prod(), (boxes[:, 2:] - boxes[:, :2]).prod(dim=1))
    return intersection / smaller.clamp(min=torch.finfo(boxes.dtype).tiny)


def detect_sliced_batch(
    detect: DetectFn, images: Sequence[torch.Tensor], *, tile_size: int, overlap: int, **kwargs
) -> list[Detections]:
    """`detect_sliced` for each image of a list (a DetectFn itself, so it composes with the other rungs)."""
    return [detect_sliced(detect, image, tile_size=tile_size, overlap=overlap, **kwargs) for image in images]
