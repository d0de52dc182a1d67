"""The body of a training loop, shared by pretraining and detection training.

`start_process` joins torchrun's process group and seeds the process, `prepare_model` wraps a model
for this process (channels_last, torch.compile, DDP),
`iterate_batches` walks epochs from any iteration (exact mid-epoch resume through
`ResumableBatchSampler`) and yields `Step`s that say when logging, evaluation and checkpoints are due,
`train_step` does one optimizer step under autocast, `log_training` reads the metric window (stopping on
a non-finite loss), and `BestMetric` tracks the best evaluation so far. The scripts keep the loop itself,
flat, so each reads top to bottom.
"""

import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from training.distributed import DistributedContext, init_distributed, shutdown_distributed
from training.meters import MetricWindow
from training.precision import Precision, flush_denormals
from training.run_log import RunLog
from training.sampler import ResumableBatchSampler

LossFunction = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def start_process(*, device: str, seed: int) -> DistributedContext:
    """Join the process group (when torchrun launched us), flush CPU subnormals, seed torch/random/numpy.

    Every rank takes the same seed: the model starts identical everywhere and the samplers split one
    global order; augmentation is seeded per sample by the sampler (training.sampler.SeededDataset).
    """
    ctx = init_distributed(device=device)
    flush_denormals(ctx.device)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return ctx


def describe_run(ctx: DistributedContext, *, global_batch_size: int) -> str:
    """The start-of-run line of both training scripts: processes, device and the batch as both conventions count it
    (our --batch_size is global; torchvision's --batch-size is per process)."""
    per_process = global_batch_size / ctx.world_size
    shown = int(per_process) if per_process.is_integer() else round(per_process, 2)
    return (
        f"processes: {ctx.world_size}, device: {ctx.device}, batch: {global_batch_size} images per iteration over "
        f"all processes ({shown} per process)"
    )


def prepare_model(
    model: nn.Module,
    *,
    ctx: DistributedContext,
    channels_last: bool = True,
    compile_model: bool = False,
    compile_mode: str = "default",
    sync_bn: bool = False,
) -> nn.Module:
    """Move to the device and wrap; returns the module to call in training (keep `model` for saving)."""
    if sync_bn and ctx.is_distributed:
        if ctx.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm does not run on CPU")
        # Batch statistics over the global batch instead of each rank's share.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    wrapped: nn.Module = model
    if ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Buffers are re-sent from rank 0 every step only where training changes them (BN statistics);
        # FrozenBN's are constants, and re-sending them is pure traffic.
        wrapped = DistributedDataParallel(
            model, device_ids=device_ids, broadcast_buffers=buffers_change_in_training(model)
        )
    if compile_model:
        wrapped = torch.compile(wrapped, mode=compile_mode)
    return wrapped


def buffers_change_in_training(model: nn.Module) -> bool:
    """Whether a training step updates any buffer: BatchNorm's running statistics (FrozenBN has none)."""
    return any(
        isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats for module in model.modules()
    )


def seed_per_rank(seed: int, ctx: DistributedContext) -> None:
    """Give each rank its own torch stream (rank 0 keeps `seed`): draws such as the detector's multi-scale
    training size must differ between ranks, or every rank trains at the same size each step."""
    torch.manual_seed(seed + 1_000_003 * ctx.rank)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers (what checkpoints store)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


class Step(NamedTuple):
    """One training iteration: its epoch, its 0-based index, its batch, and when it is due to report."""

    epoch: int
    iteration: int
    batch: Any
    max_iterations: int

    @property
    def done(self) -> int:
        """Iterations completed once this one is: what logs and checkpoints count."""
        return self.iteration + 1

    @property
    def finished(self) -> bool:
        return self.done == self.max_iterations

    def due(self, every: int) -> bool:
        """Whether something done every `every` iterations (and always at the end) is due after this one."""
        return self.done % every == 0 or self.finished


def iterate_batches(
    loader: DataLoader, sampler: ResumableBatchSampler, *, start_iteration: int, max_iterations: int
) -> Iterator[Step]:
    """Yield a `Step` per iteration from `start_iteration` up to `max_iterations`, epoch after epoch.

    The sampler is told where in the epoch to start, so iteration k gets the same batch whether
    the run started at 0 or resumed at k.
    """
    iteration = start_iteration
    while iteration < max_iterations:
        epoch, step = divmod(iteration, sampler.steps_per_epoch)
        sampler.set_epoch(epoch, start_step=step)
        for batch in loader:
            yield Step(epoch=epoch, iteration=iteration, batch=batch, max_iterations=max_iterations)
            iteration += 1
            if iteration >= max_iterations:
                return


def train_step(
    *,
    model: nn.Module,
    batch: Any,
    compute_loss: LossFunction,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    max_grad_norm: float = 0.0,
    cuda_graphs: bool = False,
) -> dict[str, torch.Tensor]:
    """Forward under autocast, backward (scaled for fp16), optional clipping, optimizer step.

    `compute_loss(model, batch)` returns (total loss, {name: detached scalar}) and moves the batch
    to the device itself. Returns the detached metrics plus "loss"; nothing here syncs with the GPU.
    `cuda_graphs`: the model is compiled with CUDA graphs, whose previous outputs are consumed by now.
    """
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with precision.autocast():
        loss, metrics = compute_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    if max_grad_norm > 0:
        precision.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return {"loss": loss.detach(), **metrics}


def log_training(
    window: MetricWindow, *, step: Step, lr: float, steps_per_epoch: int, ctx: DistributedContext, run_log: RunLog
) -> dict[str, float]:
    """Average the window over its steps and the ranks, stop a diverged run, and record the values."""
    values = window.reduce(ctx)  # the only sync point of a training iteration
    if not math.isfinite(values["loss"]):
        raise FloatingPointError(f"loss is {values['loss']} at iteration {step.done}: training diverged")
    run_log.log("train", step.done, {**values, "lr": lr, "epoch": round(step.done / steps_per_epoch, 3)})
    return values


class BestMetric:
    """The best value of one evaluation metric so far; checkpoints keep it under `key` (best.pt follows it)."""

    def __init__(self, *, key: str, higher_is_better: bool) -> None:
        self.key = key
        self.higher_is_better = higher_is_better
        self.value = -math.inf if higher_is_better else math.inf

    def update(self, value: float) -> bool:
        """Record an evaluation; True when it is a new best."""
        improved = value > self.value if self.higher_is_better else value < self.value
        if improved:
            self.value = value
        return improved


def make_loader(
    dataset,
    *,
    workers: int,
    device: torch.device,
    batch_sampler: Sampler | None = None,
    sampler: Iterable | None = None,
    batch_size: int = 1,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader with this project's settings: persistent workers, pinned memory on CUDA only.

    Training passes `batch_sampler` (a `ResumableBatchSampler`); evaluation passes `sampler` (this
    rank's indices) and `batch_size`. The loader gets its own generator: creating an iterator draws
    a worker base seed, and drawing it from the global RNG would make a resumed run's RNG stream
    differ from an uninterrupted one.
    """
    batching = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"sampler": sampler, "batch_size": batch_size}
    )
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",  # pinning costs a copy on CPU-only machines and buys nothing
        collate_fn=collate_fn,
        generator=torch.Generator(),
        prefetch_factor=4 if workers > 0 else None,
    )


def run_command(main: Callable[[Any], Any], config: Any, *, user_errors: tuple[type[Exception], ...]) -> None:
    """Run a training script's `main(config)`, then leave the process group (`main` itself does not: a test
    or a notebook calls it in a process that goes on). A user's input error (a missing folder, a checkpoint
    on some nodes only, ...) ends the command with one line saying what, without a traceback through our
    internals."""
    try:
        main(config)
    except user_errors as error:
        raise SystemExit(f"error: {error}") from error
    shutdown_distributed()
