"""Multi-scale testing with maxout (the paper's appendix, after SPPnet): a C4 head on an image pyramid.

The RPN runs once, at the model's own test size. The backbone's res4 map is computed at every
pyramid size (shorter side 200, 400, 600, 800, 1000 by default); each RoI is pooled from the two
adjacent pyramid levels on which its side is closest to the pre-training size (224 px, SPPnet's rule),
and the two pooled features are merged by their element-wise maximum (maxout) before the head.
For FPN models, whose pyramid is inside the network, the image pyramid merged by NMS + box voting is
`TestTimeOptions(test_sizes=...)` (detection/test_time.py).
"""

from collections.abc import Sequence

import torch

from detection.poolers import SingleLevelRoIAlign, to_rois

PYRAMID_SIZES = (200, 400, 600, 800, 1000)  # the appendix's shorter sides
PRETRAIN_SIZE = 224  # ImageNet crops: the RoI side a level is chosen to be closest to


def select_scale_pairs(sides: torch.Tensor, *, target: float = PRETRAIN_SIZE) -> torch.Tensor:
    """For RoI sides [R, S] (pixels on each of S pyramid levels, smallest level first), the [R, 2] indices
    of the two adjacent levels to pool from: the level whose side is closest to target, and the nearer of
    its neighbours (its only one at either end). One level gives (0, 0)."""
    if sides.dim() != 2 or sides.shape[1] < 1:
        raise ValueError(f"sides must be [RoIs, levels] with at least one level, got {tuple(sides.shape)}")
    levels = sides.shape[1]
    distance = (sides - target).abs()
    best = distance.argmin(dim=1)
    if levels == 1:
        return torch.stack([best, best], dim=1)
    rows = torch.arange(len(sides), device=sides.device)
    below, above = (best - 1).clamp(min=0), (best + 1).clamp(max=levels - 1)
    inf = torch.full_like(distance[:, 0], float("inf"))
    below_distance = torch.where(best > 0, distance[rows, below], inf)
    above_distance = torch.where(best < levels - 1, distance[rows, above], inf)
    other = torch.where(below_distance < above_distance, below, above)
    return torch.stack([torch.minimum(best, other), torch.maximum(best, other)], dim=1)


class MaxoutPyramidPooler:
    """Pools RoIs given in the RPN's input pixels from two adjacent pyramid levels each, element-wise max."""

    def __init__(
        self,
        *,
        pooler: SingleLevelRoIAlign,
        feature_maps: Sequence[torch.Tensor],
        level_image_sizes: Sequence[Sequence[tuple[int, int]]],
        image_sizes: Sequence[tuple[int, int]],
        target: float = PRETRAIN_SIZE,
    ) -> None:
        """feature_maps: one batch map per level; level_image_sizes[level][image]: each image's resized
        (height, width) on that level; image_sizes: the same at the RPN's size (the RoIs' frame)."""
        if len(feature_maps) != len(level_image_sizes) or not feature_maps:
            raise ValueError(f"{len(feature_maps)} feature maps for {len(level_image_sizes)} levels")
        self.pooler = pooler
        self.feature_maps = list(feature_maps)
        # [levels, images, 2]: (x, y) factors from the RPN's frame to each level's
        base = torch.tensor(image_sizes, dtype=torch.float64)
        self.factors = torch.stack(
            [(torch.tensor(sizes, dtype=torch.float64) / base).flip(-1) for sizes in level_image_sizes]
        )
        self.target = target

    def __call__(self, proposals: list[torch.Tensor]) -> torch.Tensor:
        rois = to_rois(proposals)
        image_index = rois[:, 0].long()
        factors = self.factors[:, image_index.cpu()].to(device=rois.device, dtype=rois.dtype)  # [S, R, 2]
        scaled = [torch.cat([rois[:, :1], rois[:, 1:] * f.repeat(1, 2)], dim=1) for f in factors]
        sides = torch.stack([((r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2])).clamp(min=0).sqrt() for r in scaled], dim=1)
        pairs = select_scale_pairs(sides, target=self.target)
        result: torch.Tensor | None = None
        for slot in (0, 1):
            for level, feature in enumerate(self.feature_maps):
                index = torch.where(pairs[:, slot] == level)[0]
                if len(index) == 0:
                    continue
                pooled = self.pooler.pool_rois(feature, scaled[level][index])
                if result is None:
                    result = pooled.new_empty((len(rois), *pooled.shape[1:]))
                result[index] = pooled if slot == 0 else torch.maximum(result[index], pooled)
        if result is None:  # no RoIs at all
            channels = self.feature_maps[0].shape[1]
            size = self.pooler.output_size
            return self.feature_maps[0].new_zeros((0, channels, size, size))
        return result
