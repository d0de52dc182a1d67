"""Training: the engine shared by pretraining and detection training, and the pretraining script.

Engine pieces, one concept per module: config (dataclass <-> flags), distributed (torchrun setup),
sampler (resumable distributed batches), precision (AMP), schedule (LR), loop (model wrapping,
the iteration loop, one optimizer step, logging and the best metric), run_checkpoint (resumable checkpoints:
last.pt, best.pt, resume), meters, run_log (progress bar, metrics.jsonl, TensorBoard), plots (PNG curves).
"""

from backbone.lazy_exports import lazy_exports

# Every name comes on first use: `--help` of the commands stays free of torch, the plots need matplotlib (the
# `train` extra) only when used, and `python -m training.plots` runs that module itself, which runpy warns
# about when the package has imported it already.

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "RunCheckpoints": "training.run_checkpoint",
        "capture_rng_state": "training.run_checkpoint",
        "load_training_checkpoint": "training.run_checkpoint",
        "restore_rng_state": "training.run_checkpoint",
        "save_training_checkpoint": "training.run_checkpoint",
        "config_to_dict": "training.config",
        "format_config": "training.config",
        "parse_config": "training.config",
        "DistributedContext": "training.distributed",
        "init_distributed": "training.distributed",
        "shutdown_distributed": "training.distributed",
        "BestMetric": "training.loop",
        "Step": "training.loop",
        "iterate_batches": "training.loop",
        "log_training": "training.loop",
        "make_loader": "training.loop",
        "prepare_model": "training.loop",
        "run_command": "training.loop",
        "train_step": "training.loop",
        "unwrap_model": "training.loop",
        "MetricWindow": "training.meters",
        "Precision": "training.precision",
        "RunLog": "training.run_log",
        "ResumableBatchSampler": "training.sampler",
        "SeededDataset": "training.sampler",
        "LRSchedule": "training.schedule",
        "plot_error_curves": "training.plots",
        "plot_run": "training.plots",
    },
)

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
