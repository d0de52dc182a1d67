"""The ResNet paper's Table 9 ladder (appendix, COCO val): each test-time rung's mAP and cost, beside the paper's.

    python -m detection.data.synthetic --out runs/shapes128 --num-train 1 --num-val 200 --image-size 128
    python -m bench.paper_table9 --checkpoint service/models/demo_detector.safetensors \
        --data-path runs/shapes128/coco --split val
    # the paper's setting (a GPU, COCO val2017, a ResNet-101 C4 detector and the same one with context):
    python -m bench.paper_table9 --checkpoint r101_c4.safetensors --context-checkpoint r101_c4_context.safetensors \
        --data-path /data/coco --split val2017 --device cuda

Rows, each adding to the one above as in the paper: baseline; + box refinement; + global context (only
with --context-checkpoint: the same detector trained with `--global_context true`; it then runs every
row below); + multi-scale testing (C4: maxout over an image pyramid; FPN: the pyramid's detections
merged by NMS + box voting); + test-time augmentation (the pyramid mirrored too). The pyramid is the
paper's shorter sides 200..1000 for its 600-px test size, i.e. 1/3..5/3 of the model's own test size.
Each row's cost is seconds per image (batch of one, decoded images in memory) and its ratio to the
baseline's, measured in the same run.

Below the ladder, the options that are not rows of Table 9, each alone on the baseline: box voting
(Detectron's 0.8), sliced inference (tiles of half the test size, overlap 0.2, the whole image as one
more tile) and an ensemble (--ensemble-checkpoints; without it, the model with itself, which scores as
voting and shows the cost of a second model).
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from detection import load_detector
from detection.box_voting import VOTE_IOU_THRESHOLD
from detection.data import CocoDetection
from detection.ensemble import EnsembleDetector
from detection.evaluation import evaluate_coco
from detection.evaluation.report import format_table
from detection.predictor import Cut, Predictor
from detection.test_time import TestTimeOptions

# Table 9 (COCO val, ResNet-101): mAP@.5, mAP@[.5, .95]
PAPER = {
    "baseline": (48.4, 27.2),
    "+ box refinement": (49.9, 29.9),
    "+ global context": (51.1, 30.0),
    "+ multi-scale testing": (53.8, 32.5),
    "+ test-time augmentation": (None, None),  # beyond the paper
}
PYRAMID_RATIOS = (1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3)  # the paper's 200..1000 around its 600-px test size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="The detector to climb the ladder with.")
    parser.add_argument(
        "--context-checkpoint", "--context_checkpoint", default="",
        help="The same detector trained with global context (adds the '+ global context' row).",
    )  # fmt: skip
    parser.add_argument(
        "--data-path", "--data_path", required=True,
        help="COCO-format folder: annotations/instances_<split>.json and <split>/.",
    )  # fmt: skip
    parser.add_argument("--split", default="val", help="The split to evaluate (default: val).")
    parser.add_argument("--limit", type=int, default=0, help="Evaluate the first N images only (0: all).")
    parser.add_argument(
        "--pyramid", type=int, nargs="*", default=None,
        help="Shorter sides of the test pyramid (default: 1/3..5/3 of the model's test size, as the paper's).",
    )  # fmt: skip
    parser.add_argument(
        "--ensemble-checkpoints", "--ensemble_checkpoints", nargs="*", default=[],
        help="More detectors for the ensemble row (default: the model with itself, to show the cost of a second).",
    )  # fmt: skip
    parser.add_argument(
        "--tile-size", "--tile_size", type=int, default=0,
        help="Tile side of the sliced-inference row (default: half the model's test size).",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu).")
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error("--limit must be >= 0")
    return args


def evaluate_rung(model, dataset, options: TestTimeOptions, *, device: torch.device, limit: int):
    """(mAP@.5, mAP@[.5, .95], seconds per image) of `model` under `options` on the first `limit` images, through
    the one inference path (the Predictor, fp32, not optimized: the model's own numerics) from decoded pixels."""
    count = len(dataset) if limit == 0 else min(limit, len(dataset))
    predictor = Predictor(model, device=device, precision="fp32", optimize=False, test_time=options)
    heads = model.roi_heads
    cut = Cut(score_threshold=heads.score_thresh, max_detections=heads.detections_per_img)  # the model's own
    predictions, seconds = {}, 0.0
    for index in range(count):
        pixels, target = dataset[index]
        start = time.perf_counter()
        (detection,) = predictor.detect([predictor.prepare(pixels.as_subclass(torch.Tensor))], [cut])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        predictions[int(target["image_id"])] = {key: value.cpu() for key, value in detection.items()}
    image_ids = [annotation.image_id for annotation in dataset.annotations[:count]]
    metrics = evaluate_coco(dataset, predictions, image_ids=image_ids, verbose=False)
    return 100 * metrics.stats["AP50"], 100 * metrics.stats["AP"], seconds / count


def ladder(model, context_model, *, pyramid: tuple[int, ...]) -> list[tuple[str, object, TestTimeOptions]]:
    """(row name, model, options) per row of the table, each adding to the one above."""
    refine = TestTimeOptions(refine_boxes=True)
    rows = [("baseline", model, TestTimeOptions()), ("+ box refinement", model, refine)]
    if context_model is not None:
        rows.append(("+ global context", context_model, refine))
        model = context_model
    c4 = model.config["head"] == "c4"
    # C4: the paper's maxout over the pyramid; FPN (its pyramid is inside the network): the image pyramid's
    # detections merged by NMS + box voting
    multiscale = TestTimeOptions(refine_boxes=True, **({"maxout_sizes": pyramid} if c4 else {"test_sizes": pyramid}))
    tta = replace(multiscale, test_flip=True)
    rows += [("+ multi-scale testing", model, multiscale), ("+ test-time augmentation", model, tta)]
    return rows


def paper_figures(row: str) -> tuple[float | None, float | None]:
    """The paper's (mAP@.5, mAP@[.5, .95]) for a row, (None, None) for rows beyond its table."""
    return PAPER.get(row, (None, None))


def single_options(model, members: list, *, tile_size: int) -> list[tuple[str, object, TestTimeOptions]]:
    """(row name, model, options) of the options beyond Table 9, each alone on the baseline."""
    sliced = TestTimeOptions(tile_size=tile_size, tile_full_image=True)
    ensemble = EnsembleDetector([model, *(members or [model])])
    named = f"ensemble of {ensemble.size}" if members else "ensemble: the model with itself"
    return [
        (f"box voting alone ({VOTE_IOU_THRESHOLD})", model, TestTimeOptions(vote_threshold=VOTE_IOU_THRESHOLD)),
        (f"sliced inference ({tile_size} px tiles + full image)", model, sliced),
        (f"{named} (NMS + voting)", ensemble, TestTimeOptions()),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    model, _ = load_detector(args.checkpoint)
    model.to(device).eval()
    context_model = None
    if args.context_checkpoint:
        context_model, _ = load_detector(args.context_checkpoint)
        context_model.to(device).eval()
        if not context_model.roi_heads.global_context:
            raise SystemExit(f"{args.context_checkpoint} was not trained with global context")
        if context_model.class_names != model.class_names:
            raise SystemExit("the two checkpoints detect other classes")
    root = Path(args.data_path)
    dataset = CocoDetection(root / "annotations" / f"instances_{args.split}.json", root / args.split)
    if list(dataset.class_names) != model.class_names:
        raise SystemExit(f"{args.checkpoint} detects {model.class_names}, the dataset has {dataset.class_names}")
    test_size = model.config["min_size"][-1]
    pyramid = tuple(args.pyramid) if args.pyramid else tuple(round(test_size * r) for r in PYRAMID_RATIOS)
    print(f"{args.checkpoint}: {model.config['backbone']} {model.config['head']}, test size {test_size}, "
          f"pyramid {pyramid}; {len(dataset) if not args.limit else min(args.limit, len(dataset))} images "
          f"of {root / args.split}; torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    members = []
    for path in args.ensemble_checkpoints:
        member, _ = load_detector(path)
        members.append(member.to(device).eval())
    tile_size = args.tile_size or max(1, test_size // 2)
    rows = ladder(model, context_model, pyramid=pyramid) + single_options(model, members, tile_size=tile_size)
    results = []
    for name, row_model, options in rows:
        ap50, ap, seconds = evaluate_rung(row_model, dataset, options, device=device, limit=args.limit)
        results.append({"row": name, "AP50": ap50, "AP": ap, "seconds_per_image": seconds})
        print(f"  {name}: {ap50:.1f} / {ap:.1f}, {seconds:.4f} s/image", flush=True)
    base = results[0]["seconds_per_image"]
    table = [
        (r["row"], f"{r['AP50']:.1f}", f"{r['AP']:.1f}", f"{r['seconds_per_image']:.4f}",
         f"{r['seconds_per_image'] / base:.2f}", *(("-" if v is None else f"{v:.1f}") for v in paper_figures(r["row"])))
        for r in results
    ]  # fmt: skip
    print(format_table(("rung", "mAP@.5", "mAP@[.5,.95]", "s/image", "x baseline", "paper @.5", "paper @[.5,.95]"),
                       table), flush=True)  # fmt: skip
    return results


if __name__ == "__main__":
    main()
