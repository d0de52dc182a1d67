"""Do the entry points agree? The same images through the predict CLI, the service over HTTP, the Python API
(one batch of mixed shapes) and ONNX Runtime, all in fp32; the table compares each with the CLI.

    python -m bench.agreement                          # demo detector, the dozen images of the test
    python -m bench.agreement --r50-fpn                # also a converted torchvision-architecture R50-FPN
    python -m bench.agreement --score-threshold 0.05

Detections are matched by class and box (each of one to its nearest of the other, IoU >= 0.5); a pair
reports the images whose counts differ, the box distance of matched detections (max and median, px)
and the images whose top detection differs (its class, or its box by more than 0.05 px).
tests/test_one_inference_path.py runs `answers` and holds every pair to the same answer.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from detection import load_detector
from detection.predict import main as predict_main
from detection.prediction_pipeline import PREDICTIONS_FILE
from detection.predictor import Predictor
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import load_network

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEMO_DETECTOR = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
ENTRY_POINTS = ("cli", "service", "api", "onnx")

Records = list[dict[str, Any]]


def shared_images(*, coco: int = 10) -> list[Path]:
    """The demo images and the first `coco` coco-mini val images, where ../shared holds them."""
    demo = sorted((SHARED_DATA / "demo-images").glob("*.jpg"))
    val = sorted((SHARED_DATA / "coco-mini" / "val2017").glob("*.jpg"))[:coco]
    return demo + val


def off_rule_size(model, *, start: int) -> tuple[int, int]:
    """A (width, height) whose resized size, resized again, moves by a pixel: where the service's own 8-bit
    resize to `input_size` used to differ from the model's resize of the original."""
    transform = model.transform
    for height in range(start, start + 400):
        width = height * 4 // 3 + 1
        once = transform.resized_size(height, width)
        if transform.resized_size(*once) != once:
            return width, height
    raise RuntimeError("no size off the rule near {start}")


def generated_images(folder: Path, model) -> list[Path]:
    """Odd inputs that need no ../shared: sizes 1 px off the resize rule, extreme aspect ratios, 16-bit grey,
    an EXIF-rotated JPEG, a palette PNG, 8-bit grey. Drawn shapes, which the demo detector finds."""
    from detection.data.synthetic_shapes import render_image

    rng = np.random.default_rng(23)

    def shapes(width: int, height: int) -> Image.Image:
        side = max(width, height)
        image = render_image(rng, image_size=max(96, min(side, 640)), max_objects=4)[0].convert("RGB")
        return image.resize((width, height), resample=Image.Resampling.BILINEAR)

    paths = []

    def save(name: str, image: Image.Image, **options) -> None:
        paths.append(folder / name)
        image.save(paths[-1], **options)

    for index, start in enumerate((200, 500)):
        save(f"off_rule_{index}.png", shapes(*off_rule_size(model, start=start)))
    save("wide_1000x90.png", shapes(1000, 90))
    save("tall_70x700.png", shapes(70, 700))
    grey16 = np.asarray(shapes(160, 120).convert("L"), dtype=np.uint16) * 257
    save("grey_16bit.png", Image.fromarray(grey16))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    save("exif_rotated.jpg", shapes(180, 120), exif=exif, quality=95)
    save("palette.png", shapes(150, 110).quantize(64))
    save("grey_8bit.png", shapes(130, 170).convert("L"))
    return paths


def answers(
    checkpoint: Path,
    files: Sequence[Path],
    *,
    onnx_path: Path | None,
    score_threshold: float,
    work: Path,
) -> dict[str, list[Records]]:
    """entry point -> per file its detections, all in fp32."""
    from fastapi.testclient import TestClient

    from service import Settings, create_app

    results: dict[str, list[Records]] = {}
    output = work / "cli"
    predict_main([*map(str, files), "--checkpoint", str(checkpoint), "--output", str(output), "--device", "cpu",
                  "--precision", "fp32", "--score-threshold", str(score_threshold), "--workers", "1"])  # fmt: skip
    by_file = {}
    for line in (output / PREDICTIONS_FILE).read_text().splitlines():
        record = json.loads(line)
        by_file[record["file"]] = record["detections"]
    results["cli"] = [by_file[str(file)] for file in files]

    settings = Settings(detector_checkpoint=checkpoint, classifier_checkpoint=None, bf16=False, max_batch=4)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").status_code != 200:  # the models warm up in the background
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service is not ready after 300 s: {client.get('/readyz').text}")
            time.sleep(0.05)
        results["service"] = []
        for file in files:
            response = client.post(
                "/detect",
                files={"file": (file.name, file.read_bytes(), "application/octet-stream")},
                params={"score_threshold": score_threshold, "max_detections": 100},
            )
            response.raise_for_status()
            results["service"].append(response.json()["detections"])

    api = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    answered = api.predict(list(files), score_threshold=score_threshold, batch_size=len(files))
    assert {answer["precision"] for answer in answered} == {"fp32"}
    results["api"] = [answer["detections"] for answer in answered]

    if onnx_path is not None:
        model, _ = load_detector(checkpoint)
        onnx = RuntimePredictor(model, load_network(onnx_path, runtime="onnxruntime"))
        results["onnx"] = [
            answer["detections"] for answer in onnx.predict(list(files), score_threshold=score_threshold)
        ]
    return results


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    return float(box_iou(torch.tensor([a]), torch.tensor([b]))[0, 0])


def matched(ours: Records, theirs: Records) -> list[tuple[dict, dict]]:
    """Pairs (ours, theirs) of one class, each of ours with its nearest unused one of theirs, IoU >= 0.5."""
    pairs, used = [], set()
    for detection in ours:
        candidates = [
            (max(abs(x - y) for x, y in zip(detection["box"], other["box"])), index)
            for index, other in enumerate(theirs)
            if index not in used
            and other["label"] == detection["label"]
            and _iou(detection["box"], other["box"]) >= 0.5
        ]
        if candidates:
            _, index = min(candidates)
            used.add(index)
            pairs.append((detection, theirs[index]))
    return pairs


def compare(ours: list[Records], theirs: list[Records]) -> dict[str, Any]:
    """One row of the agreement table for two entry points' answers over the same images."""
    other_count = sum(len(a) != len(b) for a, b in zip(ours, theirs))
    distances, score_gaps, top_differs = [], [], 0
    for a, b in zip(ours, theirs):
        pairs = matched(a, b)
        distances += [max(abs(x - y) for x, y in zip(p["box"], q["box"])) for p, q in pairs]
        score_gaps += [abs(p["score"] - q["score"]) for p, q in pairs]
        if a and b:
            top_a, top_b = a[0], b[0]
            gap = max(abs(x - y) for x, y in zip(top_a["box"], top_b["box"]))
            top_differs += top_a["label"] != top_b["label"] or gap > 0.05
        else:
            top_differs += bool(a) != bool(b)
    return {
        "images": len(ours),
        "other_count": other_count,
        "max_px": max(distances, default=0.0),
        "median_px": statistics.median(distances) if distances else 0.0,
        "max_score_gap": max(score_gaps, default=0.0),
        "top_differs": top_differs,
        "detections": sum(len(a) for a in ours),
    }


def table(results: dict[str, list[Records]], *, model: str) -> list[str]:
    lines = []
    for name in ENTRY_POINTS[1:]:
        if name in results:
            row = compare(results["cli"], results[name])
            lines.append(
                f"| CLI vs {name}, {model} | {row['other_count']} of {row['images']} | {row['max_px']:.3f} / "
                f"{row['median_px']:.3f} px | {row['max_score_gap']:.1e} | {row['top_differs']} of {row['images']} "
                f"| {row['detections']} |"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--r50-fpn", action="store_true", help="also the converted R50-FPN of tests/exported_models")
    args = parser.parse_args(argv)
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests"))  # the cached export fixtures of the test suite
    from exported_models import CHECKPOINTS, exported

    lines = [
        "| pair | images with another count | boxes apart (max / median) | scores apart (max) | top detection differs "
        "| detections (CLI) |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for name in ("demo", "r50_fpn") if args.r50_fpn else ("demo",):
            checkpoint = Path(CHECKPOINTS[name]())
            model, _ = load_detector(checkpoint)
            (work / name).mkdir()
            files = shared_images() + generated_images(work / name, model)
            results = answers(checkpoint, files, onnx_path=exported(name), score_threshold=args.score_threshold,
                              work=work / name)  # fmt: skip
            lines += table(results, model=name)
    print(f"{len(files)} images, fp32, score threshold {args.score_threshold}, torch {torch.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
