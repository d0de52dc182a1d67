"""The GPU suite: every speed figure of the project on one device in one command, as JSON and a markdown table.

    python -m bench.gpu_suite --out runs/gpu_suite                 # one GPU, about 2.5 minutes on an H200
    python -m bench.gpu_suite --out runs/gpu_suite --no-compile    # without the torch.compile row
    python -m bench.gpu_suite --out /tmp/suite --smoke             # tiny sizes on the CPU, seconds (CI)

Sections, each against torchvision's model in a plain loop measured in the same run (bench/timing.py):
1. ResNet-50 classification training images/s, batch generated on the device: fp32, channels_last, bf16
   autocast, and (last, only while the budget allows) torch.compile (bench/pretrain.py's variants).
2. Faster R-CNN R50-FPN inference ms/image at 800 px, batch 1 and a batch of 8, fp32 and bf16, against
   torchvision's fasterrcnn_resnet50_fpn with the same weights; "same detections" as bench/detector.py.
3. Detection training s/iteration against torchvision's model (like for like: frozen BN, stem+res2 frozen;
   bench/train_det.py's variants plus our NCHW rows, since channels_last can be slower for detection on GPU).
4. `torchrun --nproc_per_node=1` (NCCL on CUDA, gloo on CPU) for both trainers, a few iterations each.
5. The service (`python -m service`, DEVICE=<device>) under a short load: the R50-FPN at 800 px (the
   weights of section 2, as a torchvision .pth) with the defaults, then with BF16=true.
A section that fails is recorded with its error and the others still run; results.json and results.md
are rewritten after every section, so a run stopped by a time limit keeps what it measured.
Goals for one H200 (issue 11): ResNet-50 bf16 training >= 3,000 images/s, detector <= 15 ms/image in bf16
at 800 px, every row of ours >= 1.3x its torchvision anchor.
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import torch
import torchvision
from PIL import Image

from backbone.weights import load_checked
from bench import detector as detector_bench
from bench import pretrain as pretrain_bench
from bench import train_det as train_det_bench
from bench.processes import repo_env
from bench.service import DEMO_DETECTOR, Server, measure, percentile
from bench.timing import autocast, ratio_table, synchronize, time_round_robin
from detection import build_detector
from detection.data import generate_synthetic
from detection.torchvision_compat import describe_torchvision_detector, rename_torchvision_detector
from training.synthetic import COLOURS, write_class_folders

REPO_ROOT = Path(__file__).resolve().parents[1]


class Suite:
    """Collects each section's rows (or its error) and writes results.json and results.md after each."""

    def __init__(self, out: Path, *, header: dict) -> None:
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"header": header, "sections": {}}
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run(self, name: str, section: Callable[[], list[dict]]) -> None:
        began = time.perf_counter()
        print(f"\n== {name} ({self.elapsed():.0f} s into the suite)", flush=True)
        try:
            entry = {"rows": section()}
        except Exception as error:  # one broken section must not cost the figures of the others
            traceback.print_exc()
            entry = {"error": f"{type(error).__name__}: {error}"}
        entry["seconds"] = round(time.perf_counter() - began, 1)
        self.results["sections"][name] = entry
        self.write()

    def write(self) -> None:
        self.results["header"]["total_seconds"] = round(self.elapsed(), 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "results.md").write_text(markdown(self.results))


def markdown(results: dict) -> str:
    """One table per section: its rows' keys as columns, floats to 3-4 significant digits."""
    header = results["header"]
    lines = [f"# GPU suite: {header['device_name']}, torch {header['torch']}, torchvision {header['torchvision']}",
             "", f"{header['date']}, {header['total_seconds']} s in all, smoke={header['smoke']}", ""]  # fmt: skip
    for name, entry in results["sections"].items():
        lines += [f"## {name} ({entry['seconds']} s)", ""]
        if "error" in entry:
            lines += [f"FAILED: {entry['error']}", ""]
            continue
        rows = entry["rows"]
        if not rows:
            lines += ["(no rows)", ""]
            continue
        columns = list(rows[0])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --- 1. classification training ----------------------------------------------------------------------


def classification(*, device: torch.device, batch_size: int, image_size: int, seconds: float,
                   compile_model: bool, arch: str) -> list[dict]:  # fmt: skip
    variants = pretrain_bench.training_variants(batch_size=batch_size, image_size=image_size, device=device,
                                                bf16=True, compile_model=compile_model, arch=arch)  # fmt: skip
    # two warm-up steps: cuDNN picks its algorithms on the first, torch.compile compiles on the first
    times = time_round_robin(variants, seconds=seconds, warmup=2, min_repeats=3, device=device)
    return ratio_table(times, batch_size=batch_size, reference=pretrain_bench.REFERENCE,
                       goal=pretrain_bench.CLASSIFICATION_GOAL)  # fmt: skip


# --- 2. detector inference ---------------------------------------------------------------------------


def inference_images(*, count: int, size: int, smoke: bool) -> list[torch.Tensor]:
    """Demo and coco-mini images when ../shared is there (not in smoke mode), else generated ones."""
    if not smoke:
        try:
            return detector_bench.load_images(count)
        except SystemExit:
            pass
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, size, size * 4 // 3, generator=generator) for _ in range(count)]


def detector_inference(*, device: torch.device, size: int, rounds: int, batch_size: int, smoke: bool) -> list[dict]:
    anchor = detector_bench.torchvision_anchor(None)
    anchor.transform.min_size, anchor.transform.max_size = (size,), size * 5 // 3
    state = anchor.state_dict()
    ours = build_detector(**{**describe_torchvision_detector(state), "min_size": (size,), "max_size": size * 5 // 3})
    load_checked(ours, rename_torchvision_detector(state), source="torchvision anchor")
    anchor.to(device)
    ours.eval().to(device)

    def run_anchor(dtype):
        def run(images):
            with torch.no_grad(), autocast(device, dtype):
                return anchor(images)

        return run

    def run_ours(model, dtype):
        def run(images):
            with torch.inference_mode(), autocast(device, dtype):
                return model(images)[1]

        return run

    optimized = copy.deepcopy(ours).optimize_for_inference()
    nchw = copy.deepcopy(ours).optimize_for_inference(channels_last=False)
    variants = {
        f"{detector_bench.ANCHOR}, fp32": run_anchor(None),
        "ours, optimize_for_inference(), fp32": run_ours(optimized, None),
        "ours, optimize_for_inference(channels_last=False), fp32": run_ours(nchw, None),
        "torchvision, bf16 autocast": run_anchor(torch.bfloat16),
        "ours, optimize_for_inference(), bf16 autocast": run_ours(optimized, torch.bfloat16),
        "ours, optimize_for_inference(channels_last=False), bf16 autocast": run_ours(nchw, torch.bfloat16),
    }
    images = [image.to(device) for image in inference_images(count=max(batch_size, 2), size=size, smoke=smoke)]
    reference = [detections for image in images for detections in variants[next(iter(variants))]([image])]
    rows = []
    for name, run in variants.items():  # warm-up and the detections check
        checks = [
            detector_bench.same_detections(
                {k: v.cpu() for k, v in ref.items()},
                {k: v.cpu() for k, v in run([image])[0].items()},
                our_labels=name.startswith("ours"),
            )  # fmt: skip
            for ref, image in zip(reference, images)
        ]
        run(images[:batch_size])
        rows.append({"variant": name, "same_detections": all(c[0] for c in checks),
                     "max_box_diff_px": max(c[1] for c in checks),
                     "max_score_diff": max(c[2] for c in checks)})  # fmt: skip
    single: dict[str, list[float]] = {name: [] for name in variants}
    batched: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            for image in images:
                synchronize(device)
                start = time.perf_counter()
                run([image])
                synchronize(device)
                single[name].append(time.perf_counter() - start)
            synchronize(device)
            start = time.perf_counter()
            run(images[:batch_size])
            synchronize(device)
            batched[name].append(time.perf_counter() - start)
    anchor_single = statistics.median(next(iter(single.values())))
    anchor_batched = statistics.median(next(iter(batched.values())))
    for row in rows:
        one, many = statistics.median(single[row["variant"]]), statistics.median(batched[row["variant"]])
        row.update({"ms_per_image_batch1": 1000 * one, "vs_anchor_batch1": anchor_single / one,
                    f"ms_per_image_batch{batch_size}": 1000 * many / batch_size,
                    f"vs_anchor_batch{batch_size}": anchor_batched / many})  # fmt: skip
        print(row, flush=True)
    return rows


# --- 3. detection training ---------------------------------------------------------------------------


def detection_training(*, device: torch.device, size: int, batch_size: int, steps: int, smoke: bool) -> list[dict]:
    variants = train_det_bench.training_variants(device=device, min_size=size, max_size=size * 5 // 3, bf16=True,
                                                 ours_nchw=True, arch="resnet18" if smoke else "resnet50")  # fmt: skip
    data_path = Path(tempfile.mkdtemp()) if smoke else train_det_bench.COCO_MINI  # smoke: generated shapes
    data = train_det_bench.batches(count=steps + 1, batch_size=batch_size, data_path=data_path)
    times = train_det_bench.time_steps(variants, data, device=device)
    return ratio_table(times, batch_size=batch_size, reference=train_det_bench.REFERENCE,
                       goal=train_det_bench.DETECTION_GOAL)  # fmt: skip


# --- 4. torchrun -------------------------------------------------------------------------------------


def torchrun(*, device: torch.device, smoke: bool, timeout: float) -> list[dict]:
    work = Path(tempfile.mkdtemp())
    shapes = generate_synthetic(work / "shapes", num_train=16, num_val=4, image_size=128, seed=0)
    # two classes of noisy images, 16 per split, for a few pretraining iterations
    folders = write_class_folders(work / "classes", per_class={"train": 16, "val": 16},
                                  colours={"red": COLOURS["red"], "blue": COLOURS["blue"]},
                                  size=32 if smoke else 64, suffix=".jpg")  # fmt: skip
    common = ["--device", device.type, "--workers", "0", "--tensorboard", "false"]
    commands = {
        "train_det.py (synthetic recipe, 4 iterations, batch 4)": [
            "training/train_det.py", "--recipe", "synthetic", "--dataset", "coco", "--data_path",
            str(shapes.root / "coco"), "--max_iterations", "4", "--eval_every", "4", "--log_every", "1",
            "--output_dir", str(work / "det"), *common,
        ],
        "pretrain.py (cifar10 recipe on 64 images, 4 iterations, batch 16)": [
            "training/pretrain.py", "--recipe", "cifar10", "--data_path", str(folders), "--val_split", "val",
            "--batch_size", "16", "--lr_reference_batch", "16", "--max_iterations", "4", "--lr_milestones", "2",
            "--eval_every", "4", "--log_every", "1", "--output_dir", str(work / "cls"), *common,
        ],
    }  # fmt: skip
    env = repo_env(OMP_NUM_THREADS="1")
    rows = []
    for name, arguments in commands.items():
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                 *arguments], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=timeout)  # fmt: skip
        output = result.stdout + result.stderr
        rows.append({"command": name, "returncode": result.returncode, "seconds": time.perf_counter() - started,
                     "backend": "nccl" if device.type == "cuda" else "gloo",
                     "processes_line": next((line for line in output.splitlines() if line.startswith("processes:")),
                                            "")})  # fmt: skip
        print(rows[-1], flush=True)
        if result.returncode != 0:
            raise RuntimeError(f"{name} exited {result.returncode}: {output[-2000:]}")
    return rows


# --- 5. the service ----------------------------------------------------------------------------------


def service_under_load(*, device: torch.device, smoke: bool, concurrency: int, duration: float) -> list[dict]:
    work = Path(tempfile.mkdtemp())
    if smoke:  # the demo detector at 128 px: seconds on a CPU
        checkpoint = DEMO_DETECTOR
    else:  # the R50-FPN of section 2 as a torchvision weight file: converted on load, served at 800 px
        checkpoint = work / "fasterrcnn_resnet50_fpn_trained_like.pth"
        torch.save(detector_bench.torchvision_anchor(None).state_dict(), checkpoint)
    image = BytesIO()
    bus = detector_bench.SHARED / "demo-images" / "bus.jpg"
    if bus.is_file():
        image.write(bus.read_bytes())
    else:  # a generated 810x1080 photo stand-in (bus.jpg's size)
        Image.fromarray(torch.randint(0, 256, (1080, 810, 3), dtype=torch.uint8).numpy()).save(image, "JPEG")
    settings = {"defaults": {}, "BF16=true": {"BF16": "true"}}
    rows = []
    for name, extra in settings.items():
        env = {"DEVICE": device.type, "DETECTOR_CHECKPOINT": str(checkpoint), "CLASSIFIER_CHECKPOINT": "", **extra}
        server = Server(name=name, env=env, access_log=True)  # the app and access log of python -m service
        try:
            started = time.perf_counter()
            server.wait_ready()
            ready = time.perf_counter() - started
            measure(server, image.getvalue(), concurrency=concurrency, duration=duration / 4)  # warm-up
            point = measure(server, image.getvalue(), concurrency=concurrency, duration=duration)
        finally:
            server.stop()
        rows.append({"settings": f"DEVICE={device.type} {name}", "ready_s": ready, "concurrency": concurrency,
                     "requests_per_s": point.requests_per_s, "p50_ms": 1000 * percentile(point.latencies, 0.5),
                     "p99_ms": 1000 * percentile(point.latencies, 0.99), "mean_batch": point.mean_batch,
                     "other_5xx": point.other_5xx})  # fmt: skip
        print(rows[-1], flush=True)
        if point.other_5xx or not point.latencies:
            raise RuntimeError(f"service {name}: {point.other_5xx} server errors, {len(point.latencies)} answers")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the suite runs")
    parser.add_argument("--device", default="", help="default: cuda when available, else cpu (cpu in --smoke)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--budget-s", type=float, default=150, help="the compile row runs only if this allows")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per row: let cuDNN pick its fastest algorithms
    header = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "device": str(device), "smoke": args.smoke,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "threads": torch.get_num_threads()}  # fmt: skip
    print(header, flush=True)
    suite = Suite(args.out, header=header)
    small = args.smoke
    suite.run("ResNet-50 classification training, images/s", lambda: classification(
        device=device, batch_size=2 if small else 256, image_size=32 if small else 224,
        seconds=0 if small else 6, compile_model=False, arch="resnet18" if small else "resnet50"))  # fmt: skip
    suite.run("Faster R-CNN R50-FPN inference, ms/image", lambda: detector_inference(
        device=device, size=64 if small else 800, rounds=1 if small else 3, batch_size=2 if small else 8,
        smoke=small))  # fmt: skip
    suite.run("Faster R-CNN R50-FPN training, s/iteration", lambda: detection_training(
        device=device, size=64 if small else 800, batch_size=2 if small else 8, steps=1 if small else 6,
        smoke=small))  # fmt: skip
    suite.run("torchrun --nproc_per_node=1, both trainers", lambda: torchrun(
        device=device, smoke=small, timeout=600))  # fmt: skip
    suite.run("service under load", lambda: service_under_load(
        device=device, smoke=small, concurrency=2 if small else 16, duration=1 if small else 4))  # fmt: skip
    # torch.compile of a ResNet-50 training step takes about a minute: last, and only inside the budget
    if not args.no_compile and not small and suite.elapsed() < args.budget_s - 70:
        suite.run("ResNet-50 classification training, compiled", lambda: classification(
            device=device, batch_size=256, image_size=224, seconds=6, compile_model=True, arch="resnet50"))  # fmt: skip
    failed = [name for name, entry in suite.results["sections"].items() if "error" in entry]
    print(f"\nwrote {args.out / 'results.json'} and results.md in {suite.elapsed():.0f} s; "
          f"{'failed: ' + ', '.join(failed) if failed else 'every section ran'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
