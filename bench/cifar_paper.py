"""The paper's CIFAR-10 study in one bounded run: Table 6, Fig. 6 and Fig. 7, on one GPU.

    # on the GPU machine, the JPEG tarball beside it as data_cache/cifar10-jpeg.tar.gz (18.8 MiB; the
    # packed uint8 set, 176 MiB, is made there in seconds and kept in data_cache/, outside OUTDIR)
    bench/cifar_paper.sh OUTDIR --budget 270
    bench/cifar_paper.sh OUTDIR --smoke --data tiny.tar.gz   # CPU, a minute (the test suite runs this)

1. Data: the JPEG tarball is decoded once into a packed uint8 file (training.device_data), which
   every training process loads onto the GPU in a second.
2. Measure (seconds): step times of ResNet-20 as fp32 NCHW eager, bf16 channels_last eager and
   bf16 channels_last torch.compile (CUDA graphs on CUDA), and of every other net eager. A compiled
   net's step time is estimated as its eager time times ResNet-20's compiled/eager ratio, and its
   compile time as ResNet-20's scaled by depth.
3. Plan: the nets run as concurrent processes on the one GPU, each compiled where that shortens its
   own run. A CUDA-graphed step is GPU time, so the estimated wall time of a set is the larger of
   the slowest process alone (startup + compile + its steps) and the sum of all processes' GPU time.
   If the whole set fits the budget with the paper's 64k iterations, all run; else the largest
   prefix of PRIORITY that fits the full schedule; else (or with --prefer all_models) every net
   with the same shortened schedule (milestones at the same 1/2 and 3/4 of it), and the output
   says the fraction.
4. Train (training/pretrain.py's main, --data_on_device true), stopping everything at the budget.
5. Report into OUTDIR: table6.md (ours beside the paper's and akamaster's), results.json,
   fig6_plain.png / fig6_resnet.png (Fig. 6), fig7.png (Fig. 7), runs/<net>/ (train.log,
   metrics.jsonl, model.safetensors; the resumable last.pt/best.pt are deleted at the end).
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from backbone import create_model
from training.classification_data import DatasetError
from training.config import make_config
from training.device_cifar import (
    DeviceImages,
    DeviceTrainBatches,
    Normalizer,
    is_packed,
    load_cifar_arrays,
    pack,
)
from training.distributed import DistributedContext
from training.layer_responses import layer_responses, paper_name, plot_layer_responses
from training.loop import prepare_model, train_step
from training.plots import plot_error_curves, read_metrics
from training.precision import Precision
from training.pretrain import RECIPES, PretrainConfig
from training.pretrain import main as pretrain_main
from training.sampler import ResumableBatchSampler
from training.transforms import CIFAR10_MEAN, CIFAR10_STD

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_ITERATIONS = 64000
# Table 6 test errors (%), and akamaster/pytorch_resnet_cifar10's reimplementation.
PAPER_ERRORS = {"cifar_resnet20": 8.75, "cifar_resnet32": 7.51, "cifar_resnet44": 7.17, "cifar_resnet56": 6.97,
                "cifar_resnet110": 6.43}  # fmt: skip
AKAMASTER_ERRORS = {"cifar_resnet20": 8.27, "cifar_resnet32": 7.37, "cifar_resnet44": 6.90, "cifar_resnet56": 6.61,
                    "cifar_resnet110": 6.32}  # fmt: skip
# What to keep when not everything fits: the Fig. 6 pair at 20 layers first, then at 56, then Table 6's rest.
PRIORITY = ("cifar_resnet20", "cifar_plain20", "cifar_resnet56", "cifar_plain56", "cifar_resnet32",
            "cifar_resnet44", "cifar_resnet110")  # fmt: skip
DEFAULT_DATA = ("data_cache/cifar10_uint8.pt", "data_cache/cifar10-jpeg.tar.gz", "../shared/data/cifar10-jpeg.tar.gz")
REPORT_RESERVE_S = 25.0  # final evaluations, Fig. 7 and the report, after training stops
SMOKE_ITERATIONS = 6


def depth(model: str) -> int:
    """ "cifar_resnet110" -> 110."""
    return int("".join(c for c in model if c.isdigit()))


@dataclass
class Measurement:
    """Seconds per training step (median) and to the first step (compilation included), per variant."""

    step_s: dict[str, float] = field(default_factory=dict)
    first_step_s: dict[str, float] = field(default_factory=dict)
    data_load_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # the timings below are of finished GPU work


def time_steps(*, model_name: str, split: DeviceImages, device: torch.device, amp: str, channels_last: bool,
               compile_mode: str, batch_size: int, steps: int) -> tuple[float, float]:  # fmt: skip
    """(seconds to the first finished step, median seconds per step after warm-up) of one configuration."""
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    model = create_model(model_name, num_classes=len(split.classes))
    net = prepare_model(model, ctx=ctx, channels_last=channels_last, compile_model=bool(compile_mode),
                        compile_mode=compile_mode or "default")  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    precision = Precision(amp=amp, device=device)
    sampler = ResumableBatchSampler(dataset_size=len(split), global_batch_size=batch_size, seed=0)
    normalizer = Normalizer(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=device)
    batches = DeviceTrainBatches(split, sampler=sampler, crop_size=32, normalizer=normalizer)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    cuda_graphs = compile_mode == "reduce-overhead" and device.type == "cuda"

    def compute_loss(module, batch):
        images, labels = batch
        logits = module(images.contiguous(memory_format=memory_format))
        return F.cross_entropy(logits, labels), {}

    times, started = [], time.perf_counter()
    iterator = iter(batches)
    for step in range(steps):
        try:
            batch = next(iterator)
        except StopIteration:
            sampler.set_epoch(sampler.epoch + 1)
            iterator = iter(batches)
            batch = next(iterator)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        step_start = time.perf_counter()
        train_step(model=net, batch=batch, compute_loss=compute_loss, optimizer=optimizer, precision=precision)
        _sync(device)
        times.append(time.perf_counter() - step_start)
        if step == 0:
            first = time.perf_counter() - started
    warm = times[min(3, len(times) - 1) :]  # CUDA graphs record on the first calls
    return first, statistics.median(warm)


def measure(*, models: list[str], data: Path, device: torch.device, smoke: bool, batch_size: int) -> Measurement:
    """Step times: ResNet-20 in the three variants, every other net eager bf16 channels_last."""
    result = Measurement()
    started = time.perf_counter()
    arrays = load_cifar_arrays(data)
    split = DeviceImages(arrays.train_images, arrays.train_labels, classes=arrays.classes, padding=4, device=device)
    result.data_load_s = time.perf_counter() - started
    steps = 3 if smoke else 25
    compile_mode = "reduce-overhead" if device.type == "cuda" else "default"
    variants = {"fp32_nchw_eager": ("none", False, ""), "bf16_cl_eager": ("auto", True, "")}
    if not smoke:  # compiling takes tens of seconds on a CPU: the smoke run leaves it out
        variants["bf16_cl_compiled"] = ("auto", True, compile_mode)
    jobs = [("cifar_resnet20", name, *values) for name, values in variants.items()]
    jobs += [(model, "bf16_cl_eager", "auto", True, "") for model in models if model != "cifar_resnet20"]
    for model, variant, amp, channels_last, mode in jobs:
        key = f"{model}/{variant}"
        try:
            first, step = time_steps(model_name=model, split=split, device=device, amp=amp,
                                     channels_last=channels_last, compile_mode=mode, batch_size=batch_size,
                                     steps=steps if mode == "" else steps + 10)  # fmt: skip
        except Exception as error:  # a compiler failure must not stop the study: eager stays
            result.errors[key] = f"{type(error).__name__}: {error}"[:500]
            print(f"  {key}: failed ({result.errors[key][:200]})", flush=True)
            continue
        result.step_s[key], result.first_step_s[key] = step, first
        print(f"  {key:<40} {1000 * step:8.2f} ms/step, first step after {first:.1f} s", flush=True)
    return result


@dataclass
class Plan:
    models: list[str]
    iterations: int
    compiled: dict[str, bool]  # per net: torch.compile (CUDA graphs) or eager
    estimated_s: float
    reason: str


def estimated_wall(models: list[str], iterations: int, m: Measurement) -> tuple[float, float, dict[str, bool]]:
    """(seconds of the slowest process alone, seconds of GPU time in all, compiled per net); the wall time
    is the larger of the two, see the module docstring.

    Each net compiles when that makes its own process shorter: compiling costs ResNet-20's compile
    time scaled by depth, and saves (1 - compiled/eager ratio) of every step.
    """
    eager20 = m.step_s["cifar_resnet20/bf16_cl_eager"]
    compiled_key = "cifar_resnet20/bf16_cl_compiled"
    ratio = m.step_s[compiled_key] / eager20 if compiled_key in m.step_s else 1.0
    compile20 = m.first_step_s.get(compiled_key, 0.0)
    evaluations = 16 * 0.5  # 16 evaluations of 10000 images, ~0.5 s each, per process
    alone, gpu, compiled = [], 0.0, {}
    for model in models:
        eager = m.step_s[f"{model}/bf16_cl_eager"]
        startup = 8.0 + m.data_load_s + evaluations
        eager_s = startup + iterations * eager
        compiled_s = startup + compile20 * depth(model) / 20 + iterations * eager * ratio
        compiled[model] = ratio < 0.8 and compiled_s < eager_s
        alone.append(compiled_s if compiled[model] else eager_s)
        # An eager step's GPU share is at most its compiled step (the rest is Python launching kernels).
        gpu += iterations * eager * min(ratio, 1.0)
    return max(alone) if alone else 0.0, gpu, compiled


def make_plan(models: list[str], m: Measurement, *, available_s: float, prefer: str) -> Plan:
    models = [model for model in PRIORITY if model in models] + [model for model in models if model not in PRIORITY]
    models = [model for model in models if f"{model}/bf16_cl_eager" in m.step_s]

    def wall(subset: list[str], iterations: int) -> float:
        alone, gpu, _ = estimated_wall(subset, iterations, m)
        return max(alone, gpu)

    def plan(subset: list[str], iterations: int, reason: str) -> Plan:
        compiled = estimated_wall(subset, iterations, m)[2]
        return Plan(subset, iterations, compiled, wall(subset, iterations), reason)

    full = wall(models, PAPER_ITERATIONS)
    if full <= available_s:
        return plan(models, PAPER_ITERATIONS, f"all {len(models)} nets fit the full 64k schedule")
    if prefer == "full_schedule":
        fitting = [n for n in range(len(models), 0, -1) if wall(models[:n], PAPER_ITERATIONS) <= available_s]
        if fitting:
            subset, left_out = models[: fitting[0]], models[fitting[0]]
            return plan(subset, PAPER_ITERATIONS,
                        f"the full 64k schedule fits for {', '.join(map(paper_name, subset))} only: adding "
                        f"{paper_name(left_out)} would take ~{wall(subset + [left_out], PAPER_ITERATIONS):.0f} s "
                        f"of the {available_s:.0f} s left")  # fmt: skip
    low, high = 0, PAPER_ITERATIONS  # the longest common schedule that fits (the estimate grows with it)
    while high - low > 100:
        middle = (low + high) // 2
        low, high = (middle, high) if wall(models, middle) <= available_s else (low, middle)
    iterations = max(low // 100 * 100, 100)
    return plan(models, iterations,
                f"the full 64k schedule does not fit ({full:.0f} s estimated for all, {available_s:.0f} s left): "
                f"every net runs {iterations} iterations, {100 * iterations / PAPER_ITERATIONS:.1f}% of the "
                f"schedule, lr /10 at the same 1/2 and 3/4 of it")  # fmt: skip


def run_config(model: str, *, data: Path, output_dir: Path, iterations: int, compiled: bool, smoke: bool,
               device: str) -> PretrainConfig:  # fmt: skip
    """The paper's recipe (cifar10, or cifar10_warmup for ResNet-110), shortened to `iterations` if asked."""
    values = dict(RECIPES["cifar10_warmup" if model == "cifar_resnet110" else "cifar10"])
    scale = iterations / PAPER_ITERATIONS
    values.update(
        model=model, data_path=str(data), output_dir=str(output_dir), data_on_device=True, device=device,
        max_iterations=iterations, lr_milestones=tuple(round(m * scale) for m in values["lr_milestones"]),
        eval_every=max(iterations // 16, 1), eval_batch_size=1000, tensorboard=False, workers=0,
        compile=compiled, compile_mode="reduce-overhead",
    )  # fmt: skip
    if values.get("warmup_iterations"):
        # The bound shrinks with the schedule, but never below the ~400 iterations the paper's warm-up took
        # (or a tenth of a very short run): the error condition (< 80%) normally ends it first.
        scaled = round(values["warmup_iterations"] * scale)
        values["warmup_iterations"] = max(scaled, min(400, iterations // 10), 1)
    if smoke:
        values.update(batch_size=8, lr_reference_batch=8, lr=0.05, log_every=1, eval_batch_size=16)
    return make_config(PretrainConfig, values)


def _train_process(config: PretrainConfig, log_path: str) -> None:
    """Child process body: one training run, its output into its own log."""
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        pretrain_main(config)


def train_all(configs: dict[str, PretrainConfig], *, deadline: float, threads: int) -> dict[str, str]:
    """Run every config as its own process (spawned: fresh CUDA contexts); stop any still running at
    `deadline` (time.monotonic()). Returns {model: "finished" | "stopped at the budget" | "failed (exit N)"}."""
    context = multiprocessing.get_context("spawn")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the children
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))  # nets compile side by side
    processes = {}
    for model, config in configs.items():
        process = context.Process(target=_train_process, args=(config, str(Path(config.output_dir) / "train.log")))
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        process.start()
        processes[model] = process
    status = {}
    while processes:
        for model, process in list(processes.items()):
            if not process.is_alive():
                status[model] = "finished" if process.exitcode == 0 else f"failed (exit {process.exitcode})"
                del processes[model]
        if processes and time.monotonic() > deadline:
            for model, process in processes.items():
                process.terminate()  # only the processes this run started
                process.join()
                status[model] = "stopped at the budget"
            break
        time.sleep(0.2)
    return status


def final_error(run_dir: Path) -> tuple[float | None, int]:
    """(test top-1 error in %, iteration it was measured at): the final evaluation, else the last one."""
    if not (run_dir / "metrics.jsonl").exists():
        return None, 0
    records = read_metrics(run_dir / "metrics.jsonl")
    for record in reversed(records):
        if record.get("kind") == "final" and "top1_error_center" in record:
            return 100 * record["top1_error_center"], record["iteration"]
        if record.get("kind") == "eval":
            return 100 * record["top1_error"], record["iteration"]
    return None, 0


def write_report(out: Path, *, models: list[str], plan: Plan, status: dict[str, str], m: Measurement,
                 data: Path, device: torch.device, wall_s: float, training_s: float) -> dict:  # fmt: skip
    rows, results = [], {}
    for model in PRIORITY:
        error, at = final_error(out / "runs" / model) if model in models else (None, 0)
        paper, aka = PAPER_ERRORS.get(model), AKAMASTER_ERRORS.get(model)
        results[model] = {"error": error, "iterations": at, "status": status.get(model, "not run"),
                          "paper": paper, "akamaster": aka}  # fmt: skip

        def cell(value):
            return "—" if value is None else f"{value:.2f}"

        diff = "—" if error is None or paper is None else f"{error - paper:+.2f}"
        rows.append(f"| {paper_name(model)} | {cell(error)} | {at} | {cell(paper)} | {cell(aka)} | {diff} | "
                    f"{results[model]['status']} |")  # fmt: skip
    table = "\n".join(
        ["| net | ours (%) | at iteration | paper Table 6 (%) | akamaster (%) | ours − paper | run |",
         "|---|---|---|---|---|---|---|", *rows]
    )  # fmt: skip
    steps = "\n".join(
        ["| net / variant (batch 128) | ms per step | first step (s) |", "|---|---|---|"]
        + [f"| {key} | {1000 * value:.2f} | {m.first_step_s.get(key, 0):.1f} |" for key, value in m.step_s.items()]
    )
    text = (
        f"# CIFAR-10, the paper's Table 6\n\nTest error (single 32x32 view, the whole test set). Schedule: "
        f"{plan.iterations} iterations ({100 * plan.iterations / PAPER_ITERATIONS:.1f}% of the paper's 64k), "
        f"compiled with CUDA graphs: {', '.join(paper_name(k) for k, v in plan.compiled.items() if v) or 'none'}; "
        f"bf16 autocast, channels_last, "
        f"data on the device. Plan: {plan.reason}. Device: {device}. Wall time {wall_s:.0f} s, of which "
        f"training {training_s:.0f} s (estimated {plan.estimated_s:.0f} s).\n\n{table}\n\n"
        f"Step times measured at the start (one process alone; compiled = torch.compile, CUDA graphs on CUDA):"
        f"\n\n{steps}\n"
    )
    (out / "table6.md").write_text(text)
    summary = {"plan": vars(plan), "results": results, "measurement": vars(m), "wall_s": wall_s,
               "training_s": training_s, "data": data.name, "device": str(device)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(text, flush=True)
    return summary


def write_figures(out: Path, *, models: list[str], data: Path, device: torch.device) -> list[Path]:
    written = []
    for kind, title in (("plain", "plain nets (Fig. 6 left)"), ("resnet", "ResNets (Fig. 6 middle)")):
        runs = {paper_name(model): out / "runs" / model / "metrics.jsonl" for model in models
                if kind in model and (out / "runs" / model / "metrics.jsonl").exists()}  # fmt: skip
        if runs:
            written.append(plot_error_curves(runs, out / f"fig6_{kind}.png", title=title))
    checkpoints = [out / "runs" / model / "model.safetensors" for model in models]
    checkpoints = [path for path in checkpoints if path.exists()]
    if checkpoints:
        stds = layer_responses(checkpoints, data=data, device=device)
        written.append(plot_layer_responses(stds, out / "fig7.png"))
        (out / "fig7.json").write_text(json.dumps(stds, indent=1))
    return written


def resolve_data(data: str, pack_dir: Path) -> Path:
    """A packed file as given, else `pack_dir/<source>_uint8.pt`, packed from the tarball/folder once."""
    candidates = [Path(data)] if data else [REPO_ROOT / path for path in DEFAULT_DATA]
    found = [path for path in candidates if path.exists()]
    if not found:
        raise DatasetError(f"no CIFAR-10 data: tried {', '.join(map(str, candidates))} (pass --data)")
    if is_packed(found[0]):
        return found[0]
    packed = pack_dir / f"{found[0].name.split('.')[0]}_uint8.pt"
    if packed.exists():
        return packed
    started = time.perf_counter()
    pack(load_cifar_arrays(found[0], cache_dir=pack_dir / "cache"), packed)
    print(f"packed {found[0].name} into {packed.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return packed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir")
    parser.add_argument("--smoke", action="store_true", help="CPU, a few iterations on whatever data is given")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for the whole script")
    parser.add_argument("--data", default="", help=f"packed .pt, JPEG tarball or class folders (default: first of "
                        f"{', '.join(DEFAULT_DATA)})")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=list(PRIORITY), choices=PRIORITY)
    parser.add_argument(
        "--prefer",
        default="full_schedule",
        choices=("full_schedule", "all_models"),
        help="when not all fit 64k: the largest set that does (the issue's rule), or all, shortened",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    try:
        # The smoke run's tiny set stays in OUTDIR; the real one is packed once into data_cache/ (176 MiB,
        # kept out of OUTDIR so that OUTDIR holds only the report).
        data = resolve_data(args.data, out if args.smoke else REPO_ROOT / "data_cache")
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    models = list(args.models) if not args.smoke else ["cifar_resnet20", "cifar_plain20"]
    print(f"measuring step times on {device} (batch {8 if args.smoke else 128})", flush=True)
    m = measure(models=models, data=data, device=device, smoke=args.smoke, batch_size=8 if args.smoke else 128)
    (out / "measurement.json").write_text(json.dumps(vars(m), indent=1))
    available = args.budget - (time.monotonic() - started) - REPORT_RESERVE_S
    if args.smoke:
        plan = Plan(models, SMOKE_ITERATIONS, dict.fromkeys(models, False), 0.0, "smoke: a few iterations on the CPU")
    else:
        plan = make_plan(models, m, available_s=available, prefer=args.prefer)
    print(f"plan: {', '.join(map(paper_name, plan.models))}, {plan.iterations} iterations, "
          f"compiled: {[paper_name(k) for k, v in plan.compiled.items() if v]}, ~{plan.estimated_s:.0f} s of "
          f"{available:.0f} s: "
          f"{plan.reason}", flush=True)  # fmt: skip
    configs = {model: run_config(model, data=data, output_dir=out / "runs" / model, iterations=plan.iterations,
                                 compiled=plan.compiled[model], smoke=args.smoke, device=device.type)
               for model in plan.models}  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // max(len(configs), 1)) if not args.smoke else 1
    training_started = time.monotonic()
    status = train_all(configs, deadline=started + args.budget - REPORT_RESERVE_S, threads=threads)
    training_s = time.monotonic() - training_started
    print(f"training: {training_s:.0f} s (estimated {plan.estimated_s:.0f} s); {status}")
    for path in write_figures(out, models=plan.models, data=data, device=device):
        print(f"wrote {path}", flush=True)
    write_report(out, models=plan.models, plan=plan, status=status, m=m, data=data, device=device,
                 wall_s=time.monotonic() - started, training_s=training_s)  # fmt: skip
    for model in plan.models:  # the resumable checkpoints are 3x the model; model.safetensors stays
        for name in ("last.pt", "best.pt"):
            (out / "runs" / model / name).unlink(missing_ok=True)
    failed = [model for model, state in status.items() if state.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
