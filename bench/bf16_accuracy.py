"""What bf16 costs in accuracy on real images: bf16 training and bf16 inference against fp32, same run.

    python -m bench.bf16_accuracy --device cuda --out runs/bf16_accuracy          # GPU: about 100 s on an H200
    python -m bench.bf16_accuracy --parts demo --out runs/bf16_accuracy_demo      # CPU: the demo models
    python -m bench.bf16_accuracy --smoke --out /tmp/bf16_smoke                   # seconds on a CPU (CI)
    python -m bench.bf16_accuracy --parts infer --checkpoint runs/cocomini_fp32/model.safetensors --out DIR

Part "train" (needs a GPU to be quick; the fp32 run took 1 h 51 min on a 2-core CPU): the coco-mini
overfitting check of docs/BENCHMARKS.md (full-width ResNet-18 FPN from scratch, trained and evaluated on
the 80 train2017 images, 320 px, batch 4) run twice with the same schedule and seed, once in fp32
(`--amp none`) and once with bf16 autocast (`--amp bf16`), the two at once on the same device. Their AP
curves go into one PNG (`--plot-dir`, default the output folder). Then the fp32 model (and the bf16-trained
one) is evaluated on the same 80 images with fp32 and with bf16 inference (`optimize_for_inference(bf16=)`,
as the service runs it), on the CPU and on the training device.
Part "demo": fp32 vs bf16 inference of the shipped demo models on the CPU: the detector's AP on the 200
held-out generated shapes it was evaluated on (detection.data.synthetic, seed 0), the classifier's top-1 on
CIFAR-10 test images (../shared/data/cifar10-jpeg.tar.gz, `--cifar-images` of them, every class alike).
The service's default follows from these: bf16 where native if AP moves by at most 0.3 points on the
real-image model. Results: results.json and results.md in `--out`.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import torch

from backbone.preprocessing import ClassifierPreprocessing
from backbone.serving_checkpoint import load_classifier
from bench.detector_bf16 import AP_BUDGET_POINTS
from bench.detector_bf16 import evaluate as evaluate_detector
from detection import load_detector
from detection.data import CocoDetection, generate_synthetic
from training.classification_data import build_dataset, extract_once, find_split_root
from training.plots import read_metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from bench.processes import repo_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SERVICE_MODELS = REPO_ROOT / "service" / "models"

# docs/BENCHMARKS.md, "overfitting real COCO images": the same flags, the schedule set by --iterations
OVERFIT_FLAGS = [
    "--dataset", "coco", "--train_split", "train2017", "--val_split", "train2017", "--backbone", "resnet18",
    "--frozen_bn", "false", "--freeze_at", "0", "--min_size", "320", "--max_size", "512", "--batch_size", "4",
    "--lr", "0.02", "--lr_reference_batch", "8", "--warmup_iterations", "100", "--max_grad_norm", "10",
    "--box_batch_size_per_image", "128", "--rpn_post_nms_top_n_train", "1000", "--rpn_post_nms_top_n_test", "300",
    "--flip_prob", "0", "--tensorboard", "false",
]  # fmt: skip
SMOKE_FLAGS = [  # the synthetic recipe on generated shapes: the same code path in seconds
    "--recipe", "synthetic", "--dataset", "coco", "--train_split", "train", "--val_split", "val",
    "--batch_size", "2", "--warmup_iterations", "1", "--tensorboard", "false",
]  # fmt: skip


def train_both(*, data_path: Path, out: Path, device: str, iterations: int, workers: int,
               smoke: bool) -> dict[str, Path]:  # fmt: skip
    """Start the fp32 and the bf16 run at once (a small model leaves a GPU mostly idle); wait for both."""
    flags = SMOKE_FLAGS if smoke else OVERFIT_FLAGS
    env = repo_env()
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # two runs side by side on a small CPU
    runs, processes = {}, {}
    for name, amp in (("fp32", "none"), ("bf16", "bf16")):
        runs[name] = out / f"train_{name}"
        command = [sys.executable, str(REPO_ROOT / "training" / "train_det.py"), *flags, "--data_path", str(data_path),
                   "--max_iterations", str(iterations), "--eval_every", str(max(1, iterations // 8)),
                   "--log_every", str(max(1, iterations // 50)), "--workers", str(workers), "--device", device,
                   "--amp", amp, "--output_dir", str(runs[name])]  # fmt: skip
        log = (out / f"train_{name}.log").open("w")
        processes[name] = (subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (process, log) in processes.items():
        code = process.wait()
        log.close()
        if code != 0:
            tail = (out / f"train_{name}.log").read_text()[-3000:]
            raise SystemExit(f"the {name} training run failed ({code}):\n{tail}")
    return runs


def curves(runs: dict[str, Path], path: Path) -> Path:
    """AP50 and AP against iterations, fp32 and bf16 training in one figure; training loss beside them."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, run) in enumerate(runs.items()):
        records = read_metrics(run / "metrics.jsonl")
        evals = [r for r in records if r.get("kind") == "eval"]
        trains = [r for r in records if r.get("kind") == "train"]
        colour = f"C{index}"
        left.plot([r["iteration"] for r in evals], [r["AP50"] for r in evals], color=colour, linewidth=2,
                  label=f"{name} training, AP50")  # fmt: skip
        left.plot([r["iteration"] for r in evals], [r["AP"] for r in evals], color=colour, linewidth=1,
                  linestyle="--", label=f"{name} training, AP")  # fmt: skip
        right.plot([r["iteration"] for r in trains], [r["loss"] for r in trains], color=colour, linewidth=1,
                   label=f"{name} training")  # fmt: skip
    left.set(xlabel="iteration", ylabel="COCO AP on the 80 training images", ylim=(0, 1))
    right.set(xlabel="iteration", ylabel="training loss", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("coco-mini overfitting check, ResNet-18 FPN from scratch: fp32 vs bf16 autocast training")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def inference_rows(checkpoint: Path, dataset: CocoDetection, *, label: str, devices: list[str],
                   batch_size: int) -> list[dict]:  # fmt: skip
    """AP of one detector with fp32 and with bf16 inference on each device, the same images."""
    rows = []
    for device in devices:
        stats = {}
        for precision in ("fp32", "bf16"):
            try:
                model, _ = load_detector(checkpoint)
                model.to(device).optimize_for_inference(bf16=precision == "bf16")
                values, seconds = evaluate_detector(model, dataset, batch_size=batch_size)
            except RuntimeError as error:  # e.g. a device path that fails: keep the other rows
                rows.append({"model": label, "device": device, "inference": precision, "error": str(error)[:300]})
                print(rows[-1], flush=True)
                break
            stats[precision] = values
            rows.append({"model": label, "device": device, "inference": precision, "AP": values["AP"],
                         "AP50": values["AP50"], "seconds": seconds,
                         "AP_change_points": 100 * (values["AP"] - stats["fp32"]["AP"])})  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def demo_detector_rows(*, smoke: bool) -> list[dict]:
    """The demo detector on the held-out shapes it was evaluated on (seed 0, val images 0..199)."""
    root = Path(tempfile.mkdtemp())
    layout = generate_synthetic(root, num_train=1, num_val=8 if smoke else 200, image_size=128, seed=0)
    dataset = CocoDetection(layout.coco_annotation_file("val"), layout.coco_image_dir("val"))
    return inference_rows(SERVICE_MODELS / "demo_detector.safetensors", dataset, label="demo detector (shapes)",
                          devices=["cpu"], batch_size=8)  # fmt: skip


def demo_classifier_rows(*, images: int) -> list[dict]:
    """Top-1 of the demo classifier on CIFAR-10 test images, fp32 vs bf16 autocast, CPU."""
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        print(f"skipped the demo classifier: {archive.relative_to(REPO_ROOT.parent)} is absent", flush=True)
        return []
    model, manifest = load_classifier(SERVICE_MODELS / "demo_classifier.safetensors")
    preprocessing = manifest["preprocessing"]
    root = find_split_root(extract_once(archive, REPO_ROOT / "data_cache"), "test")
    dataset = build_dataset(kind="folder", root=root, split="test")
    # the checkpoint's own preprocessing, as training's evaluation and the service build it
    stem = model.config.get("stem", "imagenet")
    transform = ClassifierPreprocessing.from_manifest(preprocessing, stem=stem).transform()
    # every class alike: the first images/10 of each
    per_class = max(1, images // len(dataset.classes))
    indices = [i for c in range(len(dataset.classes)) for i in
               [j for j, target in enumerate(dataset.targets) if target == c][:per_class]]  # fmt: skip
    batch = torch.stack([transform(dataset[i][0]) for i in indices])
    labels = torch.tensor([dataset[i][1] for i in indices])
    rows, reference = [], None
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            predicted = model(batch).float().argmax(dim=1)
        seconds = time.perf_counter() - start
        top1 = (predicted == labels).float().mean().item()
        reference = top1 if reference is None else reference
        rows.append({"model": "demo classifier (CIFAR-10 test)", "device": "cpu", "inference": precision,
                     "images": len(labels), "top1": top1, "seconds": seconds,
                     "top1_change_points": 100 * (top1 - reference)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def compare_inference(results: dict, *, models: dict[str, Path], data_path: Path, split: str,
                      devices: list[str]) -> None:  # fmt: skip
    """fp32 vs bf16 inference of each model on the same images; the verdict rests on the first (fp32-trained)."""
    annotations = data_path / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise SystemExit(f"no annotations/instances_{split}.json under {data_path}: give --data-path and --split")
    dataset = CocoDetection(annotations, data_path / split)
    rows = []
    for label, checkpoint in models.items():
        rows += inference_rows(checkpoint, dataset, label=label, devices=devices, batch_size=8)
    results["tables"]["inference: fp32 vs bf16 on the same images"] = rows
    first = next(iter(models))
    change = next(r["AP_change_points"] for r in rows if r["model"] == first and r["device"] == "cpu"
                  and r["inference"] == "bf16" and "error" not in r)  # fmt: skip
    results["verdict"] = (f"bf16 inference moves the fp32 real-image model's AP by {change:+.2f} points on the "
                          f"CPU: {'within' if abs(change) <= AP_BUDGET_POINTS else 'over'} the "
                          f"{AP_BUDGET_POINTS}-point budget for BF16=auto")  # fmt: skip


def markdown(results: dict) -> str:
    lines = [f"# bf16 accuracy ({results['date']}, torch {results['torch']}, training device "
             f"{results.get('device', '-')}, smoke={results['smoke']})", ""]  # fmt: skip
    for title, rows in results["tables"].items():
        if not rows:
            continue
        columns = list(dict.fromkeys(column for row in rows for column in row))
        lines += [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = (f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [results.get("verdict", ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs, results.json and results.md")
    parser.add_argument("--parts", nargs="+", choices=("train", "infer", "demo"), default=["train", "demo"],
                        help="train: both trainings, then their inference; infer: only the inference comparison of "
                        "--checkpoint; demo: the shipped demo models")  # fmt: skip
    parser.add_argument(
        "--checkpoint",
        type=Path,
        nargs="+",
        default=[],
        help="--parts infer: detectors to evaluate, the fp32-trained one first (its AP change decides)",
    )
    parser.add_argument("--split", default="train2017", help="--parts infer: the coco split evaluated on")
    parser.add_argument("--device", default="cuda", help="where the two trainings run (cuda, or cpu: hours)")
    parser.add_argument("--iterations", type=int, default=1000, help="training schedule (lr /10 at 2/3 and 8/9)")
    parser.add_argument("--data-path", type=Path, default=SHARED_DATA / "coco-mini", help="coco-mini's folder")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers per training run")
    parser.add_argument("--plot-dir", type=Path, help="where the curves PNG goes (default: --out)")
    parser.add_argument("--cifar-images", type=int, default=2000, help="CIFAR-10 test images for the classifier")
    parser.add_argument("--smoke", action="store_true", help="seconds on a CPU: generated shapes, 2 iterations")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__, "smoke": args.smoke,
               "cpu_threads": torch.get_num_threads(), "tables": {}}  # fmt: skip
    if "train" in args.parts:
        device = "cpu" if args.smoke else args.device
        data_path, iterations = args.data_path, args.iterations
        if args.smoke:
            data_path = generate_synthetic(args.out / "shapes", num_train=8, num_val=4, image_size=64, seed=0).root
            data_path, iterations = data_path / "coco", 2
        elif not (data_path / "annotations" / "instances_train2017.json").is_file():
            raise SystemExit(
                "coco-mini not found: no annotations/instances_train2017.json under --data-path "
                "(default ../shared/data/coco-mini)"
            )
        started = time.perf_counter()
        runs = train_both(data_path=data_path, out=args.out, device=device, iterations=iterations,
                          workers=0 if args.smoke else args.workers, smoke=args.smoke)  # fmt: skip
        results.update(device=device, training_seconds=round(time.perf_counter() - started, 1))
        plot_dir = args.plot_dir or args.out
        plot_dir.mkdir(parents=True, exist_ok=True)
        plot = curves(runs, plot_dir / "bf16_accuracy_cocomini_curves.png")
        print(f"wrote {plot}", flush=True)
        results["tables"]["training: fp32 vs bf16 autocast, same schedule (eval on the training images)"] = [
            {"training": name, "iteration": r["iteration"], "AP": r["AP"], "AP50": r["AP50"]}
            for name, run in runs.items() for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "eval"
        ]  # fmt: skip
        models = {f"{name}-trained ResNet-18 FPN": run / "model.safetensors" for name, run in runs.items()}
        compare_inference(results, models=models, data_path=data_path, split="val" if args.smoke else "train2017",
                          devices=["cpu"] + ([device] if device != "cpu" else []))  # fmt: skip
    if "infer" in args.parts:  # models trained elsewhere, e.g. the fp32 run of the overfitting check on a CPU
        if not args.checkpoint:
            raise SystemExit("--parts infer needs --checkpoint: the detector(s) to evaluate")
        missing = [str(path) for path in args.checkpoint if not path.is_file()]
        if missing:
            raise SystemExit(f"--checkpoint: no such file: {', '.join(missing)}")
        # a trainer's OUTPUT_DIR/model.safetensors is named by its run folder
        models = {(path.parent.name if path.name == "model.safetensors" else path.stem): path
                  for path in args.checkpoint}  # fmt: skip
        compare_inference(results, models=models, data_path=args.data_path, split=args.split, devices=["cpu"])
    if "demo" in args.parts:
        results["tables"]["demo detector: fp32 vs bf16 inference, CPU"] = demo_detector_rows(smoke=args.smoke)
        classifier = demo_classifier_rows(images=20 if args.smoke else args.cifar_images)
        results["tables"]["demo classifier: fp32 vs bf16 inference, CPU"] = classifier
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
