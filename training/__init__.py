"""Training: the engine shared by pretraining and detection training, and the pretraining script.

Engine pieces, one concept per module: config (dataclass <-> flags), distributed (torchrun setup),
sampler (resumable distributed batches), precision (AMP), schedule (LR), engine (model wrapping,
the iteration loop, one optimizer step, logging and the best metric), checkpoint (resumable checkpoints:
last.pt, best.pt, resume), meters, run_log (progress bar, metrics.jsonl, TensorBoard), plots (PNG curves).
"""

import importlib

from training.checkpoint import (
    RunCheckpoints,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from training.config import config_to_dict, format_config, parse_config
from training.distributed import DistributedContext, init_distributed, shutdown_distributed
from training.engine import (
    BestMetric,
    Step,
    iterate_batches,
    log_training,
    make_loader,
    prepare_model,
    run_command,
    train_step,
    unwrap_model,
)
from training.meters import MetricWindow
from training.precision import Precision
from training.run_log import RunLog
from training.sampler import ResumableBatchSampler, SeededDataset
from training.schedule import LRSchedule

# The plots come on first use: they need matplotlib (the `train` extra), and `python -m training.plots`
# runs that module itself, which runpy warns about when the package has imported it already.
LAZY = {"plot_error_curves": "training.plots", "plot_run": "training.plots"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")


__all__ = [
    "BestMetric",
    "DistributedContext",
    "LRSchedule",
    "MetricWindow",
    "Precision",
    "ResumableBatchSampler",
    "RunCheckpoints",
    "RunLog",
    "SeededDataset",
    "Step",
    "capture_rng_state",
    "config_to_dict",
    "format_config",
    "init_distributed",
    "iterate_batches",
    "load_training_checkpoint",
    "log_training",
    "make_loader",
    "parse_config",
    "plot_error_curves",
    "plot_run",
    "prepare_model",
    "restore_rng_state",
    "run_command",
    "save_training_checkpoint",
    "shutdown_distributed",
    "train_step",
    "unwrap_model",
]
