"""`detection.predict --engine ray` (detection/ray_predict.py) on a two-node loopback cluster: the records equal
the local command's, each input once, a rerun resumes from the finished parts, and losing a node mid-run
loses no image."""

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from ray_fixtures import require_ray

require_ray()

import pyarrow.parquet  # noqa: E402  (comes with the ray extra)

from detection.data import generate_synthetic  # noqa: E402
from detection.predict import main as predict_locally  # noqa: E402
from detection.prediction_pipeline import PREDICTIONS_FILE  # noqa: E402
from detection.ray_local import LOOPBACK, local_cluster  # noqa: E402
from detection.ray_predict import PARTS_DIR  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
COMMON = ["--checkpoint", str(DEMO), "--score-threshold", "0.3", "--batch-size", "2", "--workers", "1"]


def main(argv: list[str]) -> None:
    """The predict command on the Ray engine."""
    predict_locally([*argv, "--engine", "ray"])


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each on 127.0.0.1: an actor of one CPU on each."""
    with local_cluster(num_cpus=1) as running:
        running.add_node(num_cpus=1)
        yield running


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of shapes in two sizes and a broken file, a .txt list and a glob naming some of them again."""
    root = tmp_path_factory.mktemp("sources")
    generate_synthetic(root / "shapes", num_train=6, num_val=0, image_size=96, seed=3)
    folder = root / "photos"
    (folder / "nested").mkdir(parents=True)
    train = sorted((root / "shapes" / "coco" / "train").glob("*.jpg"))
    for file in train[:4]:
        shutil.copy(file, folder / file.name)
    from PIL import Image

    Image.open(train[4]).resize((120, 80)).save(folder / "nested" / "wide.png")  # another padded shape
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    listed = root / "list.txt"
    listed.write_text(f"{train[5]}\n# a comment\nphotos/{train[0].name}\n")
    return root, [str(folder), str(listed), str(folder / "*.jpg")]


def records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / PREDICTIONS_FILE).read_text().splitlines()]


def assert_same_records(ours: list[dict], theirs: list[dict]) -> None:
    """The same files (the local command writes them in the order its batches finish) with the same records."""
    assert sorted(r["file"] for r in ours) == sorted(r["file"] for r in theirs)
    by_file = {r["file"]: r for r in theirs}
    for mine in ours:
        local = by_file[mine["file"]]
        assert mine.keys() == local.keys(), mine["file"]
        if "error" in local:
            assert mine["error"] == local["error"]
            continue
        assert (mine["width"], mine["height"]) == (local["width"], local["height"])
        assert len(mine["detections"]) == len(local["detections"]), mine["file"]
        for a, b in zip(mine["detections"], local["detections"]):
            assert (a["label"], a["name"]) == (b["label"], b["name"])
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.05
            assert abs(a["score"] - b["score"]) <= 1e-4


def test_every_node_is_on_loopback(cluster):
    addresses = cluster.node_addresses()
    assert len(addresses) == 2 and set(addresses) == {LOOPBACK}


def test_ray_records_equal_the_local_commands(cluster, sources, tmp_path, capsys):
    root, arguments = sources
    predict_locally([*arguments, *COMMON, "--output", str(tmp_path / "local")])
    ray_options = ["--address", cluster.address, "--actors", "2", "--parquet"]
    main([*arguments, *COMMON, "--output", str(tmp_path / "ray"), *ray_options])
    local, ours = records(tmp_path / "local"), records(tmp_path / "ray")
    assert len(ours) == len({r["file"] for r in ours}) == 7  # 6 images + the broken file, each once
    assert sum(len(r.get("detections", [])) for r in local) > 0
    assert sum("error" in r for r in ours) == 1
    assert_same_records(ours, local)
    assert [r["file"] for r in ours] == sorted(r["file"] for r in ours)  # source order (the folder's is sorted)
    assert list((tmp_path / "ray" / PARTS_DIR).glob("part-*.jsonl"))
    table = pyarrow.parquet.read_table(tmp_path / "ray" / "predictions.parquet")
    assert [json.loads(record) for record in table.column("record").to_pylist()] == ours


def test_a_rerun_resumes_from_the_finished_parts(cluster, sources, tmp_path, capsys):
    root, arguments = sources
    output = tmp_path / "ray"
    command = [*arguments, *COMMON, "--output", str(output), "--address", cluster.address]
    main(command)
    first = records(output)
    parts = sorted((output / PARTS_DIR).glob("part-*.jsonl"))
    kept = {json.loads(line)["file"] for part in parts[:-1] for line in part.read_text().splitlines()}
    parts[-1].unlink()  # a run killed before its last part was written
    (output / PREDICTIONS_FILE).unlink()
    capsys.readouterr()
    main(command)
    assert f"{len(kept)} from earlier parts" in capsys.readouterr().out
    assert_same_records(records(output), first)
    assert len(records(output)) == len(first) == 7


def test_videos_local_only_options_and_bad_files_are_refused_in_one_line(sources, tmp_path):
    root, arguments = sources
    video = root / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(SystemExit, match="videos run on the local engine"):
        main([str(video), *COMMON, "--output", str(tmp_path / "v")])
    with pytest.raises(SystemExit, match="local engine"):
        main([*arguments, *COMMON, "--output", str(tmp_path / "a"), "--save-annotated"])
    assert not (tmp_path / "v" / PREDICTIONS_FILE).exists()
    missing = ["--checkpoint", str(tmp_path / "none.safetensors")]
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main([*arguments, *COMMON, *missing, "--output", str(tmp_path / "m")])
    damaged = tmp_path / "damaged"
    (damaged / PARTS_DIR).mkdir(parents=True)
    (damaged / PARTS_DIR / "part-00000.jsonl").write_text('{"file": \n')
    with pytest.raises(SystemExit, match="part-00000.jsonl: line 1 is not a record; delete the part"):
        main([*arguments, *COMMON, "--output", str(damaged)])


def test_losing_a_node_mid_run_loses_no_image(cluster, sources, tmp_path):
    """The worker node is removed once the first part is written; a replacement joins (as a cluster autoscaler
    would start one) and the run ends with every image exactly once."""
    root, _ = sources
    many = tmp_path / "many"
    many.mkdir()
    images = sorted((root / "shapes" / "coco" / "train").glob("*.jpg"))
    for index in range(96):  # 6 blocks of 16: the run outlasts the node
        shutil.copy(images[index % len(images)], many / f"{index:03d}.jpg")
    output = tmp_path / "out"
    failures = []

    def run() -> None:
        try:
            main([str(many), *COMMON, "--output", str(output), "--address", cluster.address, "--actors", "2"])
        except BaseException as error:  # reported by the assertion below
            failures.append(error)

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 300  # a deadlock guard, not a speed goal
    while not list((output / PARTS_DIR).glob("part-*.jsonl")) and job.is_alive():
        assert time.monotonic() < deadline, "no part written"
        time.sleep(0.1)
    assert job.is_alive(), "the run ended before the node could be lost: give it more images"
    worker = cluster.workers.pop()
    cluster.cluster.remove_node(worker)
    cluster.add_node(num_cpus=1)
    job.join(timeout=600)
    assert not job.is_alive() and not failures, failures
    written = records(output)
    assert sorted(r["file"] for r in written) == sorted(str(many / f"{i:03d}.jpg") for i in range(96))
    assert all("detections" in r for r in written)
