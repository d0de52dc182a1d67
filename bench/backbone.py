"""Eval-mode ResNet-50 forward throughput, ours vs torchvision's, in one process, same weights.

    python -m bench.backbone                 # batch 1 and 16, 224x224, fp32 (run from the repo root)
    python -m bench.backbone --batch-sizes 1 --repeats 5

Variants are run round-robin (one timed forward of each in turn), so a busy neighbour on the
machine slows them all alike; we report the median per-forward time. The anchor is torchvision's
default model (NCHW); every ratio is against it, measured in this same run.
"""

import argparse
import copy
import statistics
import time

import torch
import torchvision

from backbone import create_model
from backbone.bn_folding import fold_batchnorm
from backbone.torchvision_compat import from_torchvision
from backbone.weights import load_checked


def build_variants(*, compile_models: bool) -> dict[str, tuple[torch.nn.Module, torch.memory_format]]:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    ours = create_model("resnet50", stride_in_1x1=False).eval()  # torchvision's layout: same weights
    load_checked(ours, from_torchvision(reference.state_dict()), source="torchvision resnet50")
    ours_folded = fold_batchnorm(copy.deepcopy(ours))
    paper = fold_batchnorm(create_model("resnet50").eval())  # the paper's layout: 3.86 vs 4.09 GMACs
    channels_last, contiguous = torch.channels_last, torch.contiguous_format
    variants = {
        "torchvision NCHW (anchor)": (reference, contiguous),
        "torchvision channels_last": (copy.deepcopy(reference).to(memory_format=channels_last), channels_last),
        "ours NCHW": (ours, contiguous),
        "ours channels_last": (copy.deepcopy(ours).to(memory_format=channels_last), channels_last),
        "ours channels_last + BN folded": (ours_folded.to(memory_format=channels_last), channels_last),
        "ours paper layout, same settings*": (paper.to(memory_format=channels_last), channels_last),
    }
    if compile_models:  # inductor on CPU: ~20 s of compilation per model, paid in the warm-up
        variants["torchvision channels_last + compile"] = (
            torch.compile(variants["torchvision channels_last"][0]),
            channels_last,
        )
        variants["ours channels_last + BN folded + compile"] = (
            torch.compile(variants["ours channels_last + BN folded"][0]),
            channels_last,
        )
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=7, help="timed forwards per variant and batch size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants of both models")
    args = parser.parse_args()

    variants = build_variants(compile_models=args.compile)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
    for batch_size in args.batch_sizes:
        images = torch.randn(batch_size, 3, args.image_size, args.image_size)
        inputs = {name: images.contiguous(memory_format=fmt) for name, (_, fmt) in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        outputs = {}
        with torch.inference_mode():
            for name, (model, _) in variants.items():  # warm-up: allocator, oneDNN primitive caches
                outputs[name] = model(inputs[name])
            for _ in range(args.repeats):
                for name, (model, _) in variants.items():
                    start = time.perf_counter()
                    model(inputs[name])
                    times[name].append(time.perf_counter() - start)
        anchor = statistics.median(times["torchvision NCHW (anchor)"])
        best_torchvision = min(statistics.median(v) for k, v in times.items() if k.startswith("torchvision"))
        reference = outputs["torchvision NCHW (anchor)"]
        print(f"\nbatch {batch_size}, {args.image_size}x{args.image_size}, fp32, eval, inference_mode")
        print(f"{'variant':<42} {'img/s':>8} {'vs anchor':>10} {'vs best tv':>11} {'max |dlogit|':>13}")
        for name in variants:
            seconds = statistics.median(times[name])
            diff = "-" if name.startswith("ours paper") else f"{(outputs[name] - reference).abs().max().item():.1e}"
            print(f"{name:<42} {batch_size / seconds:>8.1f} {anchor / seconds:>9.2f}x "
                  f"{best_torchvision / seconds:>10.2f}x {diff:>13}")  # fmt: skip
    print("\n* the paper's stride-in-1x1 ResNet-50 is a different network (random weights), shown for cost only")


if __name__ == "__main__":
    main()
