"""Hold the container's /detect answers to `python -m detection.predict` on the same image (docker/smoke.sh).

python docker/compare_detections.py MULTIPART.json RAW.json PREDICTIONS.jsonl --tolerance 0.5
"""

import argparse
import json
import sys
from pathlib import Path


def differences(served: list[dict], predicted: list[dict], *, tolerance: float) -> list[str]:
    """What differs between two detection lists: count, names in order, then boxes and scores beyond `tolerance`."""
    if len(served) != len(predicted):
        return [f"{len(served)} detections served, {len(predicted)} predicted"]
    problems = []
    for index, (one, other) in enumerate(zip(served, predicted, strict=True)):
        if one["name"] != other["name"] or one["label"] != other["label"]:
            problems.append(
                f"#{index}: {one['name']} ({one['label']}) served, {other['name']} ({other['label']}) predicted"
            )
            continue
        gap = max(
            [abs(a - b) for a, b in zip(one["box"], other["box"], strict=True)] + [abs(one["score"] - other["score"])]
        )
        if gap > tolerance:
            problems.append(f"#{index} {one['name']}: box/score differ by {gap:.4g} > {tolerance} ({one} vs {other})")
    return problems


def tolerance_word(text: str) -> str:
    """'report' or a number >= 0, refused in one line otherwise (DETECTION_TOLERANCE comes from a shell)."""
    try:
        if text == "report" or float(text) >= 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"a number >= 0 or 'report', got {text!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multipart", type=Path, help="/detect's answer to the multipart upload")
    parser.add_argument("raw", type=Path, help="/detect's answer to the same image as the raw body")
    parser.add_argument("predictions", type=Path, help="detection.predict's predictions.jsonl (one image)")
    parser.add_argument(
        "--tolerance",
        required=True,
        type=tolerance_word,
        help="Largest box (pixels) or score difference; 0 asks equality; or 'report'.",
    )
    args = parser.parse_args(argv)
    multipart = json.loads(args.multipart.read_text())["detections"]
    raw = json.loads(args.raw.read_text())["detections"]
    (record,) = [json.loads(line) for line in args.predictions.read_text().splitlines() if line.strip()]
    if "error" in record:
        print(f"detection.predict could not read the image: {record['error']}", file=sys.stderr)
        return 1
    report = args.tolerance == "report"
    problems = [f"raw body vs multipart: {p}" for p in differences(raw, multipart, tolerance=0.0)]
    predicted = differences(multipart, record["detections"], tolerance=0.0 if report else float(args.tolerance))
    for problem in problems + [f"/detect vs detection.predict: {p}" for p in predicted]:
        print(problem, file=sys.stderr)
    if report and predicted:
        for source, detections in (("/detect", multipart), ("detection.predict", record["detections"])):
            print(f"{source}: {[(d['name'], round(d['score'], 3), [round(x) for x in d['box']]) for d in detections]}")
        print(f"NOT ENFORCED (--tolerance report): /detect and detection.predict differ ({len(predicted)} findings)")
    elif not predicted:
        print(f"/detect and detection.predict agree on {len(multipart)} detections within {args.tolerance}")
    if not problems:
        print("/detect answers the raw body and the multipart upload alike")
    return 1 if problems or (predicted and not report) else 0


if __name__ == "__main__":
    sys.exit(main())
