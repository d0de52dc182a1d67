"""Process-group setup from torchrun's environment, and the few collectives the trainers need.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK set): one process per GPU with NCCL, or per CPU
worker with gloo. Launched plainly: a single process, no process group, the same code path.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its rank among world_size processes and the device it drives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and plots."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(*, device: str = "auto") -> DistributedContext:
    """Read torchrun's environment and join the process group (NCCL on CUDA, gloo on CPU).

    `device` is "auto" (CUDA when available), "cuda" or "cpu".
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device; pass --device cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        torch_device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch_device)

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        torch_device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=torch_device if device == "cuda" else None)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum over ranks (in place, returned for convenience); a no-op for one process."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's `value`, in rank order (small picklable objects only: RNG states, counts)."""
    if not ctx.is_distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
