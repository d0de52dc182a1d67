"""What the Ray engine of detection.predict costs and gives on this machine: the fixed costs (cluster start,
actor start + model load, the merged file's write) and images/s per actor for 1 and 2 actors, anchored to the
local command on the same images in the same run (docs/DEPLOYMENT.md turns them into a capacity table).

    python -m bench.ray_scaling                      # the demo detector on ../shared/data/coco-mini val
    python -m bench.ray_scaling --images 200 --checkpoint model.safetensors --max-actors 4

Short on purpose (a minute or two): every run on a loaded 2-core machine says its CPU and load average.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
COCO_MINI_VAL = REPO_ROOT.parent / "shared" / "data" / "coco-mini" / "val2017"


def cpu_and_load() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")  # fmt: skip
    return f"{model}, {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def image_folder(count: int, root: Path) -> Path:
    """`count` images: coco-mini val photos (repeated to the count) where ../shared is present, else shapes."""
    folder = root / "images"
    folder.mkdir()
    if COCO_MINI_VAL.is_dir():
        photos = sorted(COCO_MINI_VAL.glob("*.jpg"))
    else:
        from detection.data import generate_synthetic

        generate_synthetic(root / "shapes", num_train=16, num_val=0, image_size=256, seed=0)
        photos = sorted((root / "shapes" / "coco" / "train").glob("*.jpg"))
    for index in range(count):
        shutil.copy(photos[index % len(photos)], folder / f"{index:05d}.jpg")
    return folder


def timed(function) -> float:
    begin = time.perf_counter()
    function()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", default=str(DEMO), help="The detector (default: the demo detector).")
    parser.add_argument("--images", type=int, default=96, help="Images per timed run (default: 96).")
    parser.add_argument("--max-actors", type=int, default=2, help="Time 1..N actors (default: 2).")
    args = parser.parse_args()

    from detection.predict import build_parser
    from detection.predict import main as predict_locally
    from detection.ray_local import local_cluster
    from detection.ray_predict import merge, predict_on_ray

    def ray_args(sources: list[str], output: Path, actors: int) -> argparse.Namespace:
        return build_parser().parse_args([*sources, "--checkpoint", args.checkpoint, "--output", str(output),
                                          "--engine", "ray", "--actors", str(actors), "--workers", "1"])  # fmt: skip

    print(f"# {cpu_and_load()}")
    with tempfile.TemporaryDirectory(prefix="rdbench-") as temporary:
        root = Path(temporary)
        folder = image_folder(args.images, root)
        one = [str(next(folder.iterdir()))]

        # the anchor: the local command, one process, on the same images, its fixed cost taken off the same way
        def local(sources: list[str], output: Path) -> float:
            return timed(lambda: predict_locally([*sources, "--checkpoint", args.checkpoint, "--output", str(output),
                                                  "--workers", "1"]))  # fmt: skip

        local_fixed_s, local_s = local(one, root / "local1"), local([str(folder)], root / "local")
        local_rate = args.images / max(local_s - local_fixed_s, 1e-9)
        print(f"local command: fixed {local_fixed_s:.1f} s (model load, 1 image); {args.images} images in "
              f"{local_s:.1f} s; past the fixed cost {local_rate:.2f} images/s")  # fmt: skip
        begin = time.perf_counter()
        with local_cluster(num_cpus=max(args.max_actors, os.cpu_count() or 1)):
            print(f"cluster start (one loopback node): {time.perf_counter() - begin:.1f} s")
            for actors in range(1, args.max_actors + 1):
                # one image: actor start + model load + scheduling, the fixed cost of a run
                fixed_s = timed(lambda n=actors: predict_on_ray(ray_args(one, root / f"one{n}", n)))
                output = root / f"ray{actors}"
                total_s = timed(lambda n=actors, out=output: predict_on_ray(ray_args([str(folder)], out, n)))
                rate = args.images / max(total_s - fixed_s, 1e-9)
                print(f"{actors} actor(s): fixed {fixed_s:.1f} s (actor start + model load, 1 image); "
                      f"{args.images} images in {total_s:.1f} s; past the fixed cost {rate:.2f} images/s = "
                      f"{rate / actors:.2f} per actor = {rate / local_rate:.2f}x the local command")  # fmt: skip
            files = [str(p) for p in sorted(folder.iterdir())]
            write_s = timed(lambda out=output: merge(out, files, parquet=False))
            print(f"write (merge {args.images} records of the parts into predictions.jsonl): {write_s * 1000:.0f} ms")
    print(f"# after: {cpu_and_load()}")


if __name__ == "__main__":
    main()
