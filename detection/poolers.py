"""RoIAlign poolers: FPN (RoIs assigned to P2..P5 by size) and C4 (one map), using every CPU core.

torchvision's CPU `roi_align` kernel runs on one thread; at inference we split the RoIs into one chunk
per intra-op thread and pool the chunks concurrently (the op releases the GIL). Every RoI is pooled
independently, so the result is bit-identical to one call. With autograd on, one plain call is made.
"""

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=max(torch.get_num_threads(), 1), thread_name_prefix="roi_align")
    return _EXECUTOR


def pooled_rois(
    feature: torch.Tensor,
    rois: torch.Tensor,
    *,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """roi_align of rois [K, 5] (batch index, x1, y1, x2, y2), chunked over threads when no gradient is needed."""
    kwargs = dict(output_size=output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned)
    threads = torch.get_num_threads()
    if torch.is_grad_enabled() or feature.device.type != "cpu" or threads < 2 or len(rois) < 2 * threads:
        return roi_align(feature, rois, **kwargs)
    # Autocast is thread-local: do here what its roi_align rule does (compute in fp32, return the input's
    # dtype). contiguous() once here, not once per chunk inside the kernel.
    dtype = feature.dtype
    feature = feature.to(rois.dtype).contiguous()
    chunks = rois.split(math.ceil(len(rois) / threads))
    return torch.cat(list(_executor().map(lambda chunk: roi_align(feature, chunk, **kwargs), chunks))).to(dtype)


def to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image boxes -> one [K, 5] tensor whose first column is the image index."""
    image_index = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([image_index, torch.cat(boxes)], dim=1)


class MultiLevelRoIAlign(nn.Module):
    """torchvision's MultiScaleRoIAlign (FPN Eqn. 1: level = floor(4 + log2(sqrt(area) / 224)), clamped to
    the levels), with scales taken from the known strides instead of inferred, and threaded pooling."""

    def __init__(self, *, strides: dict[str, int], output_size: int, sampling_ratio: int) -> None:
        super().__init__()
        self.featmap_names = list(strides)
        self.scales = [1.0 / strides[name] for name in self.featmap_names]
        levels = [int(math.log2(strides[name])) for name in self.featmap_names]
        self.map_levels = LevelMapper(levels[0], levels[-1], canonical_scale=224, canonical_level=4)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        maps = [features[name] for name in self.featmap_names]
        rois = to_rois(proposals)
        levels = self.map_levels(proposals)
        result = maps[0].new_zeros((len(rois), maps[0].shape[1], self.output_size, self.output_size))
        for level, (feature, scale) in enumerate(zip(maps, self.scales)):
            index = torch.where(levels == level)[0]
            pooled = pooled_rois(
                feature, rois[index], output_size=self.output_size, spatial_scale=scale,
                sampling_ratio=self.sampling_ratio, aligned=False,
            )  # fmt: skip
            result.index_put_((index,), pooled.to(result.dtype))
        return result


class SingleLevelRoIAlign(nn.Module):
    """RoIAlign from one named map (C4: res4, 14x14). aligned=True is the half-pixel-correct RoIAlign
    (detectron2's ROIAlignV2); the paper used RoI pooling, and torchvision's FPN pooler keeps aligned=False."""

    def __init__(self, *, feature_name: str, stride: int, output_size: int) -> None:
        super().__init__()
        self.feature_name = feature_name
        self.spatial_scale = 1.0 / stride
        self.output_size = output_size

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        return self.pool_rois(features[self.feature_name], to_rois(proposals))

    def pool_rois(self, feature: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """Pool rois [K, 5] (image index, x1, y1, x2, y2 in input pixels) from this one map."""
        return pooled_rois(
            feature, rois, output_size=self.output_size, spatial_scale=self.spatial_scale, sampling_ratio=0,
            aligned=True,
        )  # fmt: skip
