"""PNG curves from metrics.jsonl: error against iterations as in the paper's Fig. 4 / Fig. 6, losses, LR.

Fig. 4 and Fig. 6 draw training error as thin lines and test error as bold lines of the same
colour, one colour per network, error in percent against iterations. `plot_error_curves` takes
several runs for that comparison (e.g. plain-20/56 against ResNet-20/56); `plot_run` draws one
run's figures into its folder.

    python -m training.plots runs/resnet20/metrics.jsonl runs/plain20/metrics.jsonl -o fig6.png
"""

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backbone.flags import FlagParser

try:
    import matplotlib
except ImportError as error:  # serving installs leave it out (about 140 MB with its dependencies)
    raise ImportError(
        "training's plots need matplotlib, part of the `train` extra: pip install -e '.[train]'"
    ) from error

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a last line cut short by a kill is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"], r[key]) for r in records if r.get("kind") == kind and key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_error_curves(
    runs: Mapping[str, str | os.PathLike], output_path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Fig. 4/6 style: thin = training error (of the augmented mini-batches), bold = test error, in %."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for color_index, (label, path) in enumerate(runs.items()):
        records = read_metrics(path)
        color = f"C{color_index}"
        x, y = _series(records, "train", "error")
        axis.plot([i / 1e4 for i in x], [100 * v for v in y], color=color, linewidth=0.7, alpha=0.8)
        x, y = _series(records, "eval", "top1_error")
        axis.plot([i / 1e4 for i in x], [100 * v for v in y], color=color, linewidth=2.2, label=label)
    axis.set_xlabel("iter. (1e4)")
    axis.set_ylabel("error (%)")
    axis.set_title(title or "thin: training error, bold: test error")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    output_path = Path(output_path)
    figure.savefig(output_path, dpi=120)
    plt.close(figure)
    return output_path


def plot_scalars(
    records: list[dict[str, Any]],
    keys: list[str],
    output_path: Path,
    *,
    ylabel: str,
    log_scale: bool = False,
    kind: str = "train",
) -> Path | None:
    """Records' `keys` (of one kind: "train" or "eval") against iterations; None when none was logged."""
    figure, axis = plt.subplots(figsize=(6, 4))
    drawn = False
    for key in keys:
        x, y = _series(records, kind, key)
        if x:
            axis.plot(x, y, linewidth=1.0, label=key)
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    if log_scale:
        axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_path, dpi=120)
    plt.close(figure)
    return output_path


def plot_run(run_dir: str | os.PathLike, *, label: str = "", loss_keys: list[str] | None = None) -> list[Path]:
    """error.png, loss.png and lr.png next to a run's metrics.jsonl; returns the files written."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    written = [plot_error_curves({label or run_dir.name: run_dir / "metrics.jsonl"}, run_dir / "error.png")]
    if loss_keys is None:
        train_keys = {key for r in records if r.get("kind") == "train" for key in r}
        loss_keys = sorted(key for key in train_keys if key.startswith("loss"))
    for keys, name, ylabel, log_scale in ((loss_keys, "loss.png", "loss", False), (["lr"], "lr.png", "lr", True)):
        path = plot_scalars(records, keys, run_dir / name, ylabel=ylabel, log_scale=log_scale)
        if path is not None:
            written.append(path)
    return written


def plot_detection_run(run_dir: str | os.PathLike, *, precision_recall: Mapping[str, Any]) -> list[Path]:
    """loss.png, lr.png, map.png (evaluations against iterations) and pr_curves/<class>.png for a
    detection run; `precision_recall` holds the final CocoMetrics ("coco") and/or VocMetrics ("voc")."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    train_keys = sorted({key for r in records if r.get("kind") == "train" for key in r if key.startswith("loss")})
    panels = (
        (train_keys, "loss.png", "loss", False, "train"),
        (["lr"], "lr.png", "lr", True, "train"),
        (["AP", "AP50", "voc07_mAP", "voc_area_mAP"], "map.png", "mAP", False, "eval"),
    )
    written = []
    for keys, name, ylabel, log_scale, kind in panels:
        path = plot_scalars(records, keys, run_dir / name, ylabel=ylabel, log_scale=log_scale, kind=kind)
        if path is not None:
            written.append(path)
    curves: dict[str, list[tuple[str, Any, Any]]] = {}
    if "coco" in precision_recall:
        coco = precision_recall["coco"]
        for name, precision in coco.precision_at_50.items():
            valid = precision > -1  # -1: no ground truth of this class
            curves.setdefault(name, []).append(("COCO AP50", coco.recall_thresholds[valid], precision[valid]))
    if "voc" in precision_recall:
        voc = precision_recall["voc"]
        for name, recall in voc.recall.items():
            if recall is not None:
                curves.setdefault(name, []).append(("VOC", recall, voc.precision[name]))
    if curves:
        (run_dir / "pr_curves").mkdir(exist_ok=True)
    for name, lines in curves.items():
        figure, axis = plt.subplots(figsize=(4.5, 4))
        for label, recall, precision in lines:
            axis.plot(recall, precision, linewidth=1.2, label=label)
        axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{name} (IoU 0.5)")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        path = run_dir / "pr_curves" / f"{''.join(c if c.isalnum() else '_' for c in name)}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = FlagParser(description=__doc__)
    parser.add_argument("metrics", nargs="+", help="The metrics.jsonl files; each run is labelled by its folder name.")
    parser.add_argument("-o", "--output", default="error.png", help="The PNG file to write (default: error.png).")
    parser.add_argument("--title", default="", help="A title above the figure (default: none).")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    runs = {Path(path).parent.name: path for path in args.metrics}
    print(plot_error_curves(runs, args.output, title=args.title))


if __name__ == "__main__":
    main()
