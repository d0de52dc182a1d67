"""One command for a GPU machine: the CUDA paths issue 17 found broken, run and summarised.

    PYTHONPATH=. python -m bench.gpu_checks runs/gpu_checks            # GPU machine (about 60 s on an H200)
    PYTHONPATH=. python -m bench.gpu_checks runs/gpu_checks_smoke --smoke   # CPU, tiny sizes (the test suite)

Each check is recorded as ok or failed (with its error) and the others still run:
- service: uvicorn serving `create_app` with the default OPTIMIZE=true on DEVICE=cuda, /readyz, then 20 POST /detect of
  ../shared/data/demo-images/bus.jpg (a generated image where absent), latency per request;
- train_bf16: training/train_det.py's main on generated shapes with --amp bf16, uninterrupted vs stopped
  half way and resumed from last.pt (the loss difference after resume: 0 where kernels are deterministic);
- resume_fewer_gpus: that last.pt rewritten as saved by 2 ranks on 2 GPUs (two CUDA RNG states, the
  format before the fix) and resumed by one process that sees one GPU;
- anchors: fp32 vs bf16 autocast at 800x1344 on the device, ours and torchvision's generator as called
  before the fix; frozen_bn: FrozenBatchNorm2d keeps bf16 under autocast.
Writes OUT/gpu_checks.json and OUT/gpu_checks.md; exits 1 when a check failed.
"""

import argparse
import dataclasses
import io
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
BUS = REPO_ROOT.parent / "shared" / "data" / "demo-images" / "bus.jpg"
READY_TIMEOUT_S = 60  # the demo models warm up in about 1 s on a GPU


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each check does: the GPU run, or the smoke run that a CPU does in seconds."""

    device: str
    requests: int
    iterations: int  # training iterations of the uninterrupted run (even: the resume point is half way)
    train_images: int
    image_size: int
    workers: int


GPU = Sizes(device="cuda", requests=20, iterations=40, train_images=64, image_size=128, workers=2)
SMOKE = Sizes(device="cpu", requests=3, iterations=4, train_images=8, image_size=64, workers=0)


def http(url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a POST when `body` is given; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_service(sizes: Sizes, work: Path) -> dict[str, Any]:
    """The default OPTIMIZE=true on the device, served by uvicorn as in production: ready, and /detect answers."""
    import uvicorn

    from service import Settings, create_app

    if BUS.is_file():
        image, source = BUS.read_bytes(), "../shared/data/demo-images/bus.jpg"
    else:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8, generator=generator)
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, format="JPEG")
        image, source = buffer.getvalue(), "generated 640x480 JPEG"
    boundary = "resdet-gpu-checks"
    upload = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bus.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    settings = Settings(device=sizes.device)  # every other setting at its default: optimize=True, demo models
    started = time.perf_counter()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive() or time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        # Ready = models loaded and warmed up; the crash of issue 17 kept it at 503 for ever.
        while (ready := http(f"{base}/readyz"))[0] != 200:
            if b"warm-up failed" in ready[1] or time.perf_counter() - started > READY_TIMEOUT_S:
                raise RuntimeError(f"/readyz answered {ready[0]}: {ready[1][:500].decode(errors='replace')}")
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
        latencies, detections = [], 0
        for _ in range(sizes.requests):
            sent = time.perf_counter()
            status, answer = http(
                f"{base}/detect", body=upload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
            )
            latencies.append((time.perf_counter() - sent) * 1000)
            if status != 200:
                raise RuntimeError(f"/detect answered {status}: {answer[:500].decode(errors='replace')}")
            detections = len(json.loads(answer)["detections"])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return {
        "optimize": settings.optimize,
        "image": source,
        "ready_after_s": round(ready_s, 2),
        "requests": sizes.requests,
        "latency_ms_median": round(statistics.median(latencies), 1),
        "latency_ms_max": round(max(latencies), 1),
        "latency_ms_first": round(latencies[0], 1),
        "detections_last": detections,
    }


def train_config(sizes: Sizes, data: Path, output_dir: Path, **overrides):
    from training.config import make_config
    from training.train_det import RECIPES, DetTrainConfig

    half = sizes.iterations // 2
    values = {
        **RECIPES["synthetic"], "dataset": "coco", "data_path": str(data / "coco"), "output_dir": str(output_dir),
        "device": sizes.device, "amp": "bf16", "min_size": (sizes.image_size,), "max_size": sizes.image_size,
        "max_iterations": sizes.iterations, "warmup_iterations": half, "lr_milestones": (sizes.iterations * 4,),
        "eval_every": half, "log_every": 1, "workers": sizes.workers, "tensorboard": False, "seed": 0,
        "group_aspect_ratio": False, **overrides,
    }  # fmt: skip
    return make_config(DetTrainConfig, values)


def train_losses(output_dir: Path) -> dict[int, float]:
    from training.plots import read_metrics

    return {r["iteration"]: r["loss"] for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


def check_train_bf16(sizes: Sizes, work: Path) -> dict[str, Any]:
    """bf16 training, and resume from last.pt half way: same losses as the uninterrupted run?"""
    from detection.data import generate_synthetic
    from training.train_det import main

    data = work / "shapes"
    generate_synthetic(data, num_train=sizes.train_images, num_val=sizes.train_images // 4, image_size=sizes.image_size)
    half = sizes.iterations // 2
    started = time.perf_counter()
    results = main(train_config(sizes, data, work / "straight"))
    straight_s = time.perf_counter() - started
    main(train_config(sizes, data, work / "resumed", max_iterations=half))
    main(train_config(sizes, data, work / "resumed", resume="auto"))
    straight, resumed = train_losses(work / "straight"), train_losses(work / "resumed")
    after = range(half + 1, sizes.iterations + 1)
    if not all(i in resumed for i in after):
        raise RuntimeError(f"the resumed run logged iterations {sorted(resumed)}, not {half + 1}..{sizes.iterations}")
    difference = max(abs(straight[i] - resumed[i]) for i in after)
    return {
        "iterations": sizes.iterations,
        "resumed_at": half,
        "seconds_uninterrupted_run": round(straight_s, 1),
        "final_loss": round(straight[sizes.iterations], 4),
        "max_loss_difference_after_resume": difference,
        "AP50": round(results.get("AP50", float("nan")), 4),
    }


def check_resume_fewer_gpus(sizes: Sizes, work: Path) -> dict[str, Any]:
    """A last.pt saved by 2 ranks, each with 2 CUDA RNG states (before the fix), resumed by 1 process."""
    from training.run_checkpoint import load_training_checkpoint, save_training_checkpoint
    from training.train_det import main

    source = load_training_checkpoint(work / "resumed" / "last.pt")
    rank_state = dict(source["rng"][0])
    own = rank_state.get("cuda")
    own = own[0] if isinstance(own, list) else own
    if own is None:  # saved on a CPU: stand in this process's CUDA state, or the CPU generator's bytes
        own = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()
    rank_state["cuda"] = [own, own.clone()]
    save_training_checkpoint(work / "two_gpus" / "last.pt", {**source, "rng": [rank_state, dict(rank_state)]})
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    more = sizes.iterations + max(sizes.iterations // 4, 1)
    main(train_config(sizes, work / "shapes", work / "two_gpus", resume="auto", max_iterations=more))
    losses = train_losses(work / "two_gpus")
    if more not in losses:
        raise RuntimeError(f"the resumed run stopped before iteration {more}: logged {sorted(losses)}")
    return {"saved_device_states": 2, "saved_ranks": 2, "visible_gpus": visible, "continued_to": more}


def check_anchors(sizes: Sizes, work: Path) -> dict[str, Any]:
    """Anchors at 800x1344 in fp32 and under bf16 autocast on the device (ours), and torchvision's
    generator handed bf16 feature maps (what ran before the fix)."""
    from torchvision.models.detection.image_list import ImageList

    from detection import build_detector

    device = torch.device(sizes.device)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=3, base_width=8, fpn_channels=16)
    rpn = model.rpn.to(device).eval()
    seen: dict[str, list[torch.Tensor]] = {}
    rpn.anchor_generator.register_forward_hook(lambda module, args, output: seen.__setitem__("anchors", output))
    images = ImageList(torch.zeros(1, 3, 800, 1344, device=device), [(800, 1344)])
    generator = torch.Generator().manual_seed(0)
    features = {
        str(level): torch.randn(1, 16, -(-800 // 2**level), -(-1344 // 2**level), generator=generator).to(device)
        for level in range(2, 7)
    }
    with torch.no_grad():
        rpn(images, features)
        fp32 = seen["anchors"][0]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            rpn(images, {name: feature.bfloat16() for name, feature in features.items()})
        ours = seen["anchors"][0]
        before = rpn.anchor_generator(images, [feature.bfloat16() for feature in features.values()])[0].float()
    if not torch.equal(ours, fp32):
        raise RuntimeError(f"bf16 anchors differ from fp32 by up to {(ours - fp32).abs().max().item():.2f} px")
    return {
        "anchors": fp32.shape[0],
        "bf16_equal_fp32": True,
        "before_fix_max_px_off": round((before - fp32).abs().max().item(), 2),
        "before_fix_duplicates": fp32.shape[0] - torch.unique(before, dim=0).shape[0],
    }


def check_frozen_bn(sizes: Sizes, work: Path) -> dict[str, Any]:
    from backbone.resnet import NORM_LAYERS

    device = torch.device(sizes.device)
    norm = NORM_LAYERS["frozen_bn"](64).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = norm(torch.randn(2, 64, 32, 32, device=device, dtype=torch.bfloat16))
    if out.dtype != torch.bfloat16:
        raise RuntimeError(f"FrozenBatchNorm2d returned {out.dtype} for bf16 input under autocast")
    return {"output_dtype": str(out.dtype)}


CHECKS: dict[str, Callable[[Sizes, Path], dict[str, Any]]] = {
    "service": check_service,
    "train_bf16": check_train_bf16,
    "resume_fewer_gpus": check_resume_fewer_gpus,  # reads train_bf16's last.pt
    "anchors": check_anchors,
    "frozen_bn": check_frozen_bn,
}


def run_checks(sizes: Sizes, work: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            results[name] = {"ok": True, **check(sizes, work)}
        except Exception as error:  # a failed check is the finding: record it and run the others
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=6)}  # fmt: skip
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED ' + results[name]['error']}", flush=True)
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU checks ({report['date']})",
        "",
        f"{report['device']}; torch {report['torch']}, Python {report['python']}; {report['command']}",
        "",
        "| check | ok | seconds | details |",
        "|---|---|---|---|",
    ]
    for name, result in report["checks"].items():
        details = {k: v for k, v in result.items() if k not in ("ok", "seconds", "traceback")}
        shown = ", ".join(f"{k}: {v}" for k, v in details.items()).replace("|", "/")
        lines.append(f"| {name} | {'yes' if result['ok'] else '**no**'} | {result['seconds']} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for gpu_checks.json and gpu_checks.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the checks in seconds")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else GPU
    if sizes.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device visible: run on the GPU machine, or pass --smoke for the CPU run")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_checks.") as work:
        checks = run_checks(sizes, Path(work))
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name() if sizes.device == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python -m bench.gpu_checks" + (" --smoke" if args.smoke else ""),
        "seconds": round(time.perf_counter() - started, 1),
        "checks": checks,
    }
    (args.out / "gpu_checks.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_checks.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    return 0 if all(result["ok"] for result in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
