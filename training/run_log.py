"""Where a run reports: a progress bar (it/s, ETA, losses, img/s; plain lines when not on a terminal),
metrics.jsonl and TensorBoard events.

Only rank 0 writes; on other ranks every method is a no-op. Resuming from iteration k drops the
records after k from metrics.jsonl (and TensorBoard purges them) so the files read like one
uninterrupted run.
"""

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backbone.files import write_atomically
from backbone.progress import progress
from training.config import REPORT_LOGGER
from training.distributed import DistributedContext


def reporting(level: int = logging.INFO) -> bool:
    """Whether a report line at `level` shows: training.config.parse_command sets the level from --quiet (warnings
    only) or --verbose (debug lines too); a run started from Python, which sets none, reports at INFO."""
    return level >= (logging.getLogger(REPORT_LOGGER).level or logging.INFO)


def report(message: str, *, ctx: DistributedContext | None = None, level: int = logging.INFO) -> None:
    """One line of the run's report on stdout (where scripts and the GPU suite read the start line), from rank 0,
    when its level shows. Errors end the command on stderr (training.loop.run_command)."""
    if (ctx is None or ctx.is_main) and reporting(level):
        print(message, flush=True)


class RunLog:
    """Progress bar plus metrics.jsonl plus TensorBoard for one training run."""

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike,
        ctx: DistributedContext,
        total_iterations: int,
        start_iteration: int = 0,
        images_per_iteration: int = 0,
        tensorboard: bool = True,
    ) -> None:
        self.enabled = ctx.is_main
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.images_per_iteration = images_per_iteration
        self.writer = None
        self.bar = None
        self._last_time = time.perf_counter()
        self._last_iteration = start_iteration
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_iteration)
        if tensorboard:
            try:  # imports TensorBoard: only on the main rank
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ImportError(
                    "TensorBoard logs need the `train` extra (pip install -e '.[train]'), or pass --no-tensorboard"
                ) from error

            self.writer = SummaryWriter(
                log_dir=str(self.output_dir / "tensorboard"), purge_step=start_iteration or None
            )
        self.bar = progress(
            total=total_iterations, initial=start_iteration, unit="it", dynamic_ncols=True, desc="train",
            smoothing=0.05, disable=not reporting(),
        )  # fmt: skip

    def _truncate_after(self, iteration: int) -> None:
        """Keep only records up to `iteration` (a resumed run rewrites what came after)."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["iteration"] <= iteration:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a kill
        text = "".join(line + "\n" for line in kept)
        write_atomically(self.metrics_path, lambda temporary: temporary.write_text(text))

    def step(self, iterations: int = 1) -> None:
        """Advance the bar (cheap: no metric is read)."""
        if self.bar is not None:
            self.bar.update(iterations)

    def log(self, kind: str, iteration: int, metrics: Mapping[str, Any]) -> None:
        """Append one record ({"kind": "train"|"eval"|..., "iteration": ..., metrics}) everywhere."""
        if not self.enabled:
            return
        record = {"kind": kind, "iteration": iteration, "time": round(time.time(), 3), **metrics}
        if kind == "train" and self.images_per_iteration:
            now = time.perf_counter()
            elapsed = max(now - self._last_time, 1e-9)
            record["images_per_s"] = round((iteration - self._last_iteration) * self.images_per_iteration / elapsed, 2)
            self._last_time, self._last_iteration = now, iteration
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name not in ("kind", "iteration", "time") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{kind}/{name}", value, iteration)
        if kind == "train" and self.bar is not None:
            shown = {k: v for k, v in record.items() if k not in ("kind", "iteration", "time")}
            self.bar.set_postfix(
                {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}, refresh=False
            )

    def print(self, message: str) -> None:
        """Print on rank 0 without breaking the progress bar, when report lines show (not under --quiet)."""
        if not self.enabled or not reporting():
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
