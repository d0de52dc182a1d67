"""Running averages of per-step metrics, kept as tensors until a log step so the loop never syncs.

`.item()` on a CUDA tensor is a CPU-GPU sync point; summing detached tensors and reading them
once per log interval (one all-reduce for all ranks) keeps the GPU busy in between.
"""

from collections.abc import Mapping

import torch

from training.distributed import DistributedContext, all_reduce_sum


class MetricWindow:
    """Sums of named scalar metrics over the steps since the last `reduce`, averaged over ranks on read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def update(self, metrics: Mapping[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def reduce(self, ctx: DistributedContext) -> dict[str, float]:
        """Mean over steps and ranks of every metric, then start a new window."""
        if self.steps == 0:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[name] for name in names]) / self.steps
        stacked = all_reduce_sum(stacked, ctx) / ctx.world_size
        values = dict(zip(names, stacked.tolist()))
        self.sums, self.steps = {}, 0
        return values

    def state_dict(self) -> dict:
        """So that a resumed run averages the same steps as an uninterrupted one."""
        return {"sums": {name: value.cpu() for name, value in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict, *, device: torch.device) -> None:
        self.sums = {name: value.to(device) for name, value in state["sums"].items()}
        self.steps = state["steps"]
