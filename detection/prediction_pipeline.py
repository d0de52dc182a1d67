"""The predict command's pipeline: sources -> decoded and prepared images (threads) -> the Predictor's batches
-> one JSON line per image or video frame, continued where a killed run stopped; annotated pictures and
videos; COCO results. detection/predict.py is its command line.
"""

import argparse
import glob
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from backbone.files import write_atomically
from backbone.progress import progress
from detection import decoding
from detection.annotate import draw_detections
from detection.evaluation import to_coco_results, write_json
from detection.predictor import Cut, Predictor, Prepared

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
GLOB_CHARACTERS = ("*", "?", "[")
PREDICTIONS_FILE = "predictions.jsonl"
SETTINGS_FILE = "predict_settings.json"
log = logging.getLogger(__name__)


class PredictError(Exception):
    """A user error (a source that is not there, a missing extra, another run's output): one line, no traceback."""


@dataclass
class Decoded:
    """One image or video frame, decoded and prepared for the model, or not (error)."""

    file: str
    frame: int | None
    pixels: torch.Tensor | None = None  # uint8 (float for 16-bit images) [3, H, W], as displayed; for drawing
    error: str | None = None
    prepared: Prepared | None = None  # what the Predictor runs

    @property
    def key(self) -> tuple[str, int | None]:
        return self.file, self.frame

    def record(self, detections: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON line: its identity, then size and detections, or the error."""
        record: dict[str, Any] = {"file": self.file}
        if self.frame is not None:
            record["frame"] = self.frame
        if self.error is not None:
            return {**record, "error": self.error}
        height, width = self.prepared.source_size
        return {**record, "width": int(width), "height": int(height), "detections": detections}


# --- sources -------------------------------------------------------------------------------------------


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def expand_sources(sources: Sequence[str]) -> list[str]:
    """Every file the SOURCE arguments name, in order, each once; PredictError for one that names nothing."""
    files: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES
            ]
            if not found:
                raise PredictError(f"folder {source} holds no images or videos ({', '.join(IMAGE_SUFFIXES)} ...)")
            files += [str(p) for p in found]
        elif path.is_file() and path.suffix.lower() == ".txt":
            files += _read_path_list(path)
        elif path.exists():  # a FIFO or device too: the decoder refuses it in an error record, without opening it
            files.append(source)
        elif any(character in source for character in GLOB_CHARACTERS):
            matched = [p for p in sorted(glob.glob(source, recursive=True)) if Path(p).is_file()]
            if not matched:
                raise PredictError(f"no file matches {source!r}")
            files += matched
        else:
            raise PredictError(f"source not found: {source} (an image, a folder, a glob, a .txt list or a video)")
    return list(dict.fromkeys(files))


def _read_path_list(path: Path) -> list[str]:
    """A .txt list: one path per line, relative to the list's own folder; blank lines and # comments skipped."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [str(path.parent / line) if not os.path.isabs(line) else line for line in lines if line and line[0] != "#"]


# --- decoding --------------------------------------------------------------------------------------------


def decode_image(file: str) -> Decoded:
    """The image as displayed (`detection.decoding`, the service's decoder); an error record if unreadable."""
    try:
        decoded = decoding.decode_image(file, label="the file")
    except decoding.ImageDecodeError as error:
        return Decoded(file=file, frame=None, error=str(error))
    return Decoded(file=file, frame=None, pixels=torch.from_numpy(decoded.pixels).permute(2, 0, 1))


def import_av():
    """PyAV, or a PredictError saying how to get it."""
    try:
        import av
    except ImportError:
        raise PredictError("reading videos needs PyAV: pip install 'resdet[video]' (or pip install av)") from None
    return av


def count_frames(file: str) -> int:
    """The frame count the container declares (0 when it does not say)."""
    av = import_av()
    try:
        with av.open(file) as container:
            return container.streams.video[0].frames if container.streams.video else 0
    except (av.FFmpegError, OSError):
        return 0


def decode_video(file: str) -> Iterator[Decoded]:
    """Every frame of the first video stream as RGB uint8; one error record if the file cannot be read."""
    av = import_av()
    frame_index = 0
    try:
        with av.open(file) as container:
            if not container.streams.video:
                yield Decoded(file=file, frame=None, error="holds no video stream")
                return
            for frame in container.decode(container.streams.video[0]):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield Decoded(file=file, frame=frame_index, pixels=pixels)
                frame_index += 1
    except (av.FFmpegError, OSError) as error:
        yield Decoded(file=file, frame=frame_index if frame_index else None, error=f"cannot decode video: {error}")


class DecodingPipeline:
    """Decodes and prepares ahead of the model in threads: images in a pool of `workers`, videos frame by frame
    in a reader thread (prepared in the pool); yields in source order. The bounded queue keeps at most
    `prefetch` items ahead. The decoded pixels are kept only where `keep_pixels` (to draw on them)."""

    def __init__(
        self,
        files: Sequence[str],
        *,
        done: set,
        workers: int,
        prefetch: int,
        prepare: Callable[[torch.Tensor], Prepared],
        keep_pixels: bool,
    ) -> None:
        self.files = files
        self.done = done
        self.prepare = prepare
        self.keep_pixels = keep_pixels
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode")
        self.queue: queue.Queue[Future | None] = queue.Queue(maxsize=max(1, prefetch))
        self.stopped = threading.Event()
        self.reader = threading.Thread(target=self._read, name="read-sources", daemon=True)

    def __iter__(self) -> Iterator[Decoded]:
        self.reader.start()
        try:
            while (future := self.queue.get()) is not None:
                yield future.result()
        finally:
            self.stopped.set()
            while not self.queue.empty():  # unblock a reader waiting on a full queue
                self.queue.get_nowait()
            self.reader.join()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _decoded(self, file: str) -> Decoded:
        return self._prepared(decode_image(file))

    def _prepared(self, item: Decoded) -> Decoded:
        if item.error is None:
            item.prepared = self.prepare(item.pixels)
            if not self.keep_pixels:
                item.pixels = None
        return item

    def _put(self, item: Future | None) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for file in self.files:
                if is_video(file):
                    if (file, None) in self.done:  # recorded as unreadable as a whole
                        continue
                    for decoded in decode_video(file):
                        if decoded.key not in self.done and not self._put(self.pool.submit(self._prepared, decoded)):
                            return
                elif (file, None) not in self.done and not self._put(self.pool.submit(self._decoded, file)):
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            failed: Future = Future()
            failed.set_exception(error)
            self._put(failed)
            return
        self._put(None)


# --- the output file -------------------------------------------------------------------------------------


def read_done(path: Path) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The records already written, by (file, frame); a trailing partial line (a killed run) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as handle:
            handle.truncate(len(complete))
    records = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PredictError(f"{path}: line {number} is not JSON ({error}); delete the file to start over") from None
        records[(record["file"], record.get("frame"))] = record
    return records


def check_settings(output: Path, settings: dict[str, Any]) -> None:
    """A continued run must make the same predictions as the one it continues."""
    path = output / SETTINGS_FILE
    if (output / PREDICTIONS_FILE).exists() and path.exists():
        previous = json.loads(path.read_text())
        changed = {key: (previous.get(key), value) for key, value in settings.items() if previous.get(key) != value}
        if changed:
            shown = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise PredictError(
                f"{output} holds predictions made with other settings ({shown}): pass another --output, "
                f"or delete {output / PREDICTIONS_FILE} to start over"
            )
    write_json(path, settings)


# --- annotated pictures and videos -----------------------------------------------------------------------


def annotated_names(sources: Sequence[str], files: Sequence[str]) -> dict[str, Path]:
    """Each file's path under OUTPUT/annotated/: relative to the deepest SOURCE root holding it (a folder itself, a
    file's or a .txt list's folder, a glob's fixed prefix), so `photos/a/x.jpg` from `photos/` lands at `a/x.jpg`.
    A name two files would share, or a file outside every root, keeps its whole path (anchor and .. dropped)."""
    roots = sorted({_source_root(source) for source in sources}, key=lambda root: len(root.parts), reverse=True)
    names: dict[str, Path] = {}
    taken: set[Path] = set()
    for file in files:
        absolute = Path(os.path.abspath(file))
        root = next((root for root in roots if absolute.is_relative_to(root)), None)
        name = absolute.relative_to(root) if root is not None else None
        if name is None or name in taken:
            name = Path(*[part for part in Path(file).parts if part not in ("..", Path(file).anchor)])
        taken.add(name)
        names[file] = name
    return names


def _source_root(source: str) -> Path:
    path = Path(os.path.abspath(source))
    if any(character in source for character in GLOB_CHARACTERS) and not Path(source).exists():
        fixed = source[: min(source.index(c) for c in GLOB_CHARACTERS if c in source)]
        return Path(os.path.abspath(os.path.dirname(fixed) or "."))
    return path if path.is_dir() else path.parent


def annotated_path(output: Path, name: Path, *, suffix: str | None = None) -> Path:
    """OUTPUT/annotated/<name> (a name from `annotated_names`)."""
    path = output / "annotated" / name
    return path.with_suffix(suffix) if suffix else path


def save_annotated_image(output: Path, name: Path, item: Decoded, detections: list[dict[str, Any]]) -> None:
    pixels = item.pixels
    if pixels.dtype != torch.uint8:
        pixels = pixels.mul(255).round().to(torch.uint8)
    path = annotated_path(output, name)
    if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
        path = path.with_suffix(".png")
    write_atomically(path, F.to_pil_image(draw_detections(pixels, detections)).save)


def save_annotated_video(
    output: Path, name: Path, file: str, records: dict[tuple[str, int | None], dict[str, Any]]
) -> None:
    """Re-read the video and draw each frame's detections from its records; written once, atomically."""
    path = annotated_path(output, name, suffix=".mp4")
    if not path.exists():
        write_atomically(path, lambda temporary: encode_annotated_video(file, records, temporary))


def encode_annotated_video(file: str, records: dict[tuple[str, int | None], dict[str, Any]], target_path: Path) -> None:
    """Encode `file`'s frames with their detections drawn to `target_path` (MPEG-4)."""
    av = import_av()
    with av.open(file) as source, av.open(str(target_path), mode="w") as target:
        video = source.streams.video[0]
        stream = target.add_stream("mpeg4", rate=video.average_rate or 25)
        stream.width, stream.height, stream.pix_fmt = video.codec_context.width, video.codec_context.height, "yuv420p"
        try:
            for index, frame in enumerate(source.decode(video)):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                detections = records.get((file, index), {}).get("detections", [])
                drawn = draw_detections(pixels, detections).permute(1, 2, 0).contiguous().numpy()
                target.mux(stream.encode(av.VideoFrame.from_ndarray(drawn, format="rgb24")))
        except av.FFmpegError:
            pass  # a damaged tail: the frames read before it (the records name the frame that failed)
        target.mux(stream.encode())


# --- COCO results ----------------------------------------------------------------------------------------


def write_coco_results(
    records: Sequence[dict[str, Any]], *, class_names: Sequence[str], annotations: Path, path: Path
) -> str:
    """COCO results ([x, y, w, h], category ids by class name, image ids by file name) from the annotation file."""
    try:
        ground_truth = json.loads(annotations.read_text())
        images, categories = ground_truth["images"], ground_truth["categories"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PredictError(f"--coco-annotations {annotations}: not a COCO annotation file ({error})") from None
    ids_by_name = {category["name"]: category["id"] for category in categories}
    category_ids = [ids_by_name.get(name, -1) for name in class_names]
    image_ids = {image["file_name"].replace("\\", "/"): image["id"] for image in images}
    predictions, unmatched = {}, 0
    for record in records:
        if "detections" not in record or record.get("frame") is not None:
            continue
        parts = Path(record["file"]).parts
        # the longest tail of the path that the annotation file names: "val2017/x.jpg" or "x.jpg"
        image_id = next((image_ids[t] for k in range(len(parts)) if (t := "/".join(parts[k:])) in image_ids), None)
        if image_id is None:
            unmatched += 1
            continue
        kept = [d for d in record["detections"] if category_ids[d["label"] - 1] != -1]
        predictions[image_id] = {
            "boxes": torch.tensor([d["box"] for d in kept], dtype=torch.float32).reshape(-1, 4).numpy(),
            "scores": torch.tensor([d["score"] for d in kept], dtype=torch.float32).numpy(),
            "labels": torch.tensor([d["label"] for d in kept], dtype=torch.int64).numpy(),
        }
    write_json(path, to_coco_results(predictions, category_ids=[max(i, 0) for i in category_ids]))
    missing = [name for name, category_id in zip(class_names, category_ids) if category_id == -1]
    notes = [f"wrote {path}: {len(predictions)} images of {annotations.name}"]
    if unmatched:
        notes.append(f"{unmatched} images not in the annotation file left out")
    if missing:
        notes.append(f"classes not in its categories left out: {', '.join(missing)}")
    return "; ".join(notes)


# --- the run ---------------------------------------------------------------------------------------------


def run_batches(
    predictor: Predictor, items: Iterator[Decoded], *, batch_size: int, cut: Cut
) -> Iterator[list[tuple[Decoded, list[dict[str, Any]] | None]]]:
    """Records per item, in source order, a few batches at a time: the Predictor groups them by input shape."""
    waiting: list[Decoded] = []

    def run() -> list[tuple[Decoded, list[dict[str, Any]] | None]]:
        ready = [item for item in waiting if item.error is None]
        records = iter(predictor.run([item.prepared for item in ready], [cut] * len(ready)))
        done = [(item, None if item.error is not None else next(records)) for item in waiting]
        waiting.clear()
        return done

    for item in items:
        waiting.append(item)
        if len(waiting) == 4 * batch_size:  # several shapes wait at once, so most passes run full batches
            yield run()
    if waiting:
        yield run()


def predict_files(
    predictor: Predictor, manifest: dict[str, Any], files: Sequence[str], *, args: argparse.Namespace
) -> str:
    """Decode, detect and write the records of `files` (the command after loading the model)."""
    videos = [file for file in files if is_video(file)]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    check_settings(output, {
        "checkpoint": str(args.checkpoint), "class_names": manifest["class_names"], "precision": predictor.precision,
        "score_threshold": args.score_threshold, "max_detections": args.max_detections,
        "test_time": predictor.test_time.to_dict(), "runtime": predictor.runtime,
        **({"ensemble_checkpoints": args.ensemble_checkpoints} if args.ensemble_checkpoints else {}),
    })  # fmt: skip
    predictions_path = output / PREDICTIONS_FILE
    done = read_done(predictions_path)
    total = sum(1 for file in files if not is_video(file)) + sum(count_frames(file) for file in videos)
    listed = set(files)
    already = sum(1 for file, _ in done if file in listed)
    if already:
        log.info("resuming %s: %d of %d done, %d left", predictions_path, already, total, max(total - already, 0))
    else:
        log.info("writing %s: %d images and frames", predictions_path, total)
    names = annotated_names(args.sources, files) if args.save_annotated else {}
    pipeline = DecodingPipeline(
        files, done=set(done), workers=args.workers, prefetch=2 * args.batch_size + args.workers,
        prepare=predictor.prepare, keep_pixels=args.save_annotated,
    )  # fmt: skip
    cut = Cut(score_threshold=args.score_threshold, max_detections=args.max_detections)
    batches = run_batches(predictor, iter(pipeline), batch_size=args.batch_size, cut=cut)
    errors = 0
    with (
        predictions_path.open("a", encoding="utf-8") as handle,
        progress(
            total=max(total, already), initial=already, unit="img", desc="predict", dynamic_ncols=True, smoothing=0.1
        ) as bar,
    ):
        for batch in batches:
            lines = []
            for item, detections in batch:
                if args.save_annotated and item.error is None and item.frame is None:
                    save_annotated_image(output, names[item.file], item, detections)
                record = item.record(detections)
                done[item.key] = record
                errors += item.error is not None
                lines.append(json.dumps(record) + "\n")
            handle.write("".join(lines))  # whole lines only, flushed per batch: a killed run loses no finished line
            handle.flush()
            bar.update(len(batch))
    if args.save_annotated:
        for file in videos:
            if (file, None) not in done:  # not a video we could read
                save_annotated_video(output, names[file], file, done)
    summary = f"wrote {predictions_path} ({len(done)} records, {errors} unreadable this run)"
    if args.coco_results:
        summary += "\n" + write_coco_results(
            list(done.values()), class_names=manifest["class_names"], annotations=Path(args.coco_annotations),
            path=Path(args.coco_results),
        )  # fmt: skip
    return summary
