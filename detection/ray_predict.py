"""`detection.predict --engine ray`: the same sources, model and records as the local command, run by a pool of
Ray Data actors (each loads the model once) on a cluster (--address) or on a loopback cluster of this machine.

    python -m detection.predict photos/ --checkpoint model.safetensors --output runs/predict --engine ray --actors 2

OUTPUT/parts/part-NNNNN.jsonl are written as the actors' results arrive (each atomically: a part is whole or
absent), then merged into OUTPUT/predictions.jsonl (each input once, in source order; --parquet also writes
predictions.parquet). A rerun skips the inputs of the finished parts. Unreadable files get {file, error}, as in
the local command. Videos stay on the local engine (frames of one file are one sequential decode).
"""

import argparse
import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backbone.files import write_atomically
from detection.prediction_pipeline import (
    PREDICTIONS_FILE,
    DecodingPipeline,
    PredictError,
    check_settings,
    expand_sources,
    is_video,
    run_batches,
)
from detection.predictor import Cut

PARTS_DIR = "parts"
FILES_PER_BLOCK = 16  # inputs per Ray Data block: a part file per block as it finishes


class PredictActor:
    """One Ray Data actor: the Predictor, loaded once, and the local command's path from file to record
    (its decoding pipeline, its batches, its records)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from detection.predict import load_model  # the command's loader (that module imports this one)

        self.args = args
        self.predictor, _ = load_model(args)
        self.cut = Cut(score_threshold=args.score_threshold, max_detections=args.max_detections)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        args = self.args
        pipeline = DecodingPipeline([str(file) for file in batch["file"]], done=set(), workers=args.workers,
                                    prefetch=2 * args.batch_size + args.workers, prepare=self.predictor.prepare,
                                    keep_pixels=False)  # fmt: skip
        files, records = [], []
        for group in run_batches(self.predictor, iter(pipeline), batch_size=args.batch_size, cut=self.cut):
            for item, detections in group:
                files.append(item.file)
                records.append(json.dumps(item.record(detections)))
        return {"file": files, "record": records}


# --- parts and the merged file -------------------------------------------------------------------------------


def read_parts(output: Path) -> dict[str, str]:
    """file -> its JSON line, from every finished part (the first part naming a file wins)."""
    done: dict[str, str] = {}
    for part in sorted((output / PARTS_DIR).glob("part-*.jsonl")):
        for number, line in enumerate(part.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                file = json.loads(line)["file"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PredictError(
                    f"{part}: line {number} is not a record; delete the part to redo its inputs"
                ) from None
            done.setdefault(file, line)
    return done


def write_part(output: Path, index: int, lines: Sequence[str]) -> None:
    path = output / PARTS_DIR / f"part-{index:05d}.jsonl"
    write_atomically(path, lambda temporary: Path(temporary).write_text("".join(f"{line}\n" for line in lines)))


def merge(output: Path, files: Sequence[str], *, parquet: bool) -> tuple[Path, int]:
    """predictions.jsonl from the parts: this run's inputs in source order, then any other file the parts hold."""
    done = read_parts(output)
    ordered = [done[file] for file in files if file in done]
    ordered += [line for file, line in done.items() if file not in set(files)]
    path = output / PREDICTIONS_FILE
    write_atomically(path, lambda temporary: Path(temporary).write_text("".join(f"{line}\n" for line in ordered)))
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [json.loads(line) for line in ordered]
        table = pa.table({"file": [row["file"] for row in rows], "record": ordered})
        write_atomically(output / "predictions.parquet", lambda temporary: pq.write_table(table, temporary))
    return path, sum("error" in json.loads(line) for line in ordered)


# --- the run -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def connected(args: argparse.Namespace) -> Iterator[None]:
    """Joined to the cluster at --address, or to a loopback cluster of this machine started for the run."""
    from detection.ray_local import import_ray, local_cluster

    ray = import_ray()
    if ray.is_initialized():  # called from a program already connected (the tests): run there
        yield
    elif args.address:
        ray.init(address=args.address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
    else:
        cpus = max(args.num_cpus or os.cpu_count() or 1, args.actors * args.cpus_per_actor)
        with local_cluster(num_cpus=cpus, num_gpus=args.actors * args.gpus_per_actor):
            yield


def predict_on_ray(args: argparse.Namespace) -> str:
    """The whole command on Ray; returns the closing summary line. Errors are PredictErrors (one line)."""
    check_ray_flags(args)
    from detection.ray_local import import_ray

    try:
        import_ray()  # first, under the loopback environment
    except ImportError:
        raise PredictError("--engine ray needs Ray: pip install 'resdet[ray]'") from None
    from ray.exceptions import RayError

    try:
        return run_command(args)
    except RayError as error:  # an actor's own error (a checkpoint it cannot load): its last line, not Ray's trace
        lines = [line for line in str(error).splitlines() if line.strip()]
        raise PredictError(f"the Ray job failed: {lines[-1] if lines else type(error).__name__}") from None


def run_command(args: argparse.Namespace) -> str:
    files = expand_sources(args.sources)
    videos = [file for file in files if is_video(file)]
    if videos:
        raise PredictError(f"videos run on the local engine (drop --engine ray for them): {', '.join(videos[:3])}")
    if not Path(args.checkpoint).is_file():  # before starting a cluster; the actors load it (shared storage)
        raise PredictError(f"checkpoint not found: {args.checkpoint}")
    output = Path(args.output)
    (output / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    check_settings(output, {
        "checkpoint": str(args.checkpoint), "precision": args.precision, "score_threshold": args.score_threshold,
        "max_detections": args.max_detections, "engine": "ray",
    })  # fmt: skip
    done = read_parts(output)
    pending = [file for file in files if file not in done]
    next_part = len(list((output / PARTS_DIR).glob("part-*.jsonl")))
    if pending:
        with connected(args):
            for lines in run_on_ray(pending, args=args):
                fresh = [line for file, line in lines if file not in done]  # a retried block: once only
                done.update((file, line) for file, line in lines)
                if fresh:
                    write_part(output, next_part, fresh)
                    next_part += 1
    path, errors = merge(output, files, parquet=args.parquet)
    return f"wrote {path} ({len(files)} inputs, {len(files) - len(pending)} from earlier parts, {errors} unreadable)"


def run_on_ray(files: Sequence[str], *, args: argparse.Namespace) -> Iterator[list[tuple[str, str]]]:
    """(file, JSON line) of every file, a block at a time as the actors finish them."""
    import ray.data
    from ray.data import ActorPoolStrategy

    # enough blocks for every actor to start on one, then a part per FILES_PER_BLOCK inputs
    blocks = max(min(len(files), 2 * args.actors), -(-len(files) // FILES_PER_BLOCK))
    dataset = ray.data.from_items([{"file": file} for file in files], override_num_blocks=blocks)
    predicted = dataset.map_batches(
        PredictActor,
        fn_constructor_kwargs={"args": args},
        batch_size=FILES_PER_BLOCK,
        compute=ActorPoolStrategy(size=args.actors),
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor or None,
    )
    for batch in predicted.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield list(zip(batch.column("file").to_pylist(), batch.column("record").to_pylist()))


def check_ray_flags(args: argparse.Namespace) -> None:
    if args.actors < 1 or args.cpus_per_actor < 0 or args.gpus_per_actor < 0:
        raise PredictError("--actors must be >= 1, --cpus-per-actor and --gpus-per-actor >= 0")
    if args.save_annotated or args.coco_results:
        raise PredictError("--save-annotated and --coco-results run on the local engine (drop --engine ray)")
