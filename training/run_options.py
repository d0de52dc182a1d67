"""The settings every training command shares: where a run writes, its device and precision, its seed,
how often it logs and checkpoints, and what it resumes from.

`PretrainConfig` and `DetTrainConfig` inherit them, so each is declared once with its help and both
commands take the same flags; a config stores them flat beside its own fields, as it always has, so
checkpoints written before this class existed resume unchanged.
"""

from dataclasses import dataclass

from backbone.flags import option


@dataclass
class RunOptions:
    """Output folder, device, precision, seed, logging, checkpointing, resume and TensorBoard of a run.

    Each command gives `output_dir` its own default with `backbone.flags.with_default` (the help stays this
    one). The memory-format and torch.compile switches stay with each command, as they differ: pretraining's
    `channels_last` is a bool, on by default, and its `compile` covers the whole classifier; detection's
    `channels_last` is "auto" (measured per device) and its `compile` covers the feature extractor alone.
    """

    output_dir: str = option("runs", "Folder for checkpoints, metrics.jsonl, TensorBoard logs, reports and plots.")
    device: str = option("auto", '"auto", "cuda" or "cpu".')
    amp: str = option(
        "auto", '"auto" (bf16 on CUDA and on CPUs with AVX512-BF16/AMX, else fp32), "none", "bf16" or "fp16".'
    )
    seed: int = option(0, "Seed of every random stream (data order, augmentation, initialisation).")
    log_every: int = option(20, "Iterations between metrics.jsonl records (and DDP metric reductions).")
    checkpoint_every: int = option(0, "Iterations between last.pt writes; 0 means at every evaluation.")
    resume: str = option("", 'A last.pt or best.pt to continue from, or "auto": output_dir/last.pt when it exists.')
    tensorboard: bool = option(True, "Write TensorBoard event files to output_dir/tensorboard.")
