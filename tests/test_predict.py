"""`python -m detection.predict`: sources, the JSONL records, unreadable files, resume after kill -9,
videos, COCO results, and one-line errors for checkpoints we cannot load."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from training_scripts import REPO_ROOT, script_env

from detection import load_detector
from detection.data import generate_synthetic
from detection.predict import PREDICTIONS_FILE, main

DEMO = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Generated shapes (what the demo detector was trained on): 6 train, 4 val images of 96 px."""
    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic(root, num_train=6, num_val=4, image_size=96, seed=3)
    return root


def read_records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / PREDICTIONS_FILE).read_text().splitlines()]


def expected_detections(files: list[Path], *, score_threshold: float) -> dict[str, list[dict]]:
    """Detector.predict on each image alone (the same optimized model the command runs)."""
    model, _ = load_detector(DEMO)
    model.optimize_for_inference()
    expected = {}
    for file in files:
        pixels = torch.from_numpy(np.asarray(Image.open(file).convert("RGB")).copy()).permute(2, 0, 1)
        output = model.predict([pixels], score_threshold=score_threshold)[0]
        expected[str(file)] = list(zip(output["boxes"].tolist(), output["scores"].tolist(), output["names"]))
    return expected


def test_folder_glob_and_list_sources_with_an_unreadable_image(shapes, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    train = sorted((shapes / "coco" / "train").glob("*.jpg"))
    for file in train[:3]:
        (folder / file.name).write_bytes(file.read_bytes())
    Image.open(train[3]).resize((120, 80)).save(folder / "nested" / "wide.png")  # another shape: its own batch
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.md").write_text("not a picture, not a source")
    listed = tmp_path / "list.txt"
    listed.write_text(f"# two more\n{train[4]}\n\n{train[5].name}\n")
    (tmp_path / train[5].name).write_bytes(train[5].read_bytes())  # relative to the list's folder

    output = tmp_path / "out"
    main([str(folder), str(listed), str(folder / "*.jpg"), "--checkpoint", str(DEMO), "--output", str(output),
          "--score-threshold", "0.3", "--batch-size", "2", "--workers", "2", "--save-annotated",
          "--device", "cpu", "--precision", "fp32"])  # fmt: skip

    records = read_records(output)
    files = [record["file"] for record in records]
    assert len(files) == len(set(files)) == 7  # the glob repeats the folder's jpgs: each file once
    by_file = {record["file"]: record for record in records}
    assert set(by_file[str(folder / "broken.jpg")]) == {"file", "error"}
    good = [Path(file) for file, record in by_file.items() if "error" not in record]
    assert str(folder / "notes.md") not in by_file and len(good) == 6
    expected = expected_detections(good, score_threshold=0.3)
    assert any(expected.values()), "the demo detector finds shapes in these images"
    for file in good:
        record = by_file[str(file)]
        assert (record["width"], record["height"]) == Image.open(file).size
        assert set(record) == {"file", "width", "height", "detections"}
        got = [(d["box"], d["score"], d["name"]) for d in record["detections"]]
        assert len(got) == len(expected[str(file)])
        for (box, score, name), (want_box, want_score, want_name) in zip(got, expected[str(file)]):
            assert name == want_name and score == pytest.approx(want_score, abs=1e-4)
            assert box == pytest.approx(want_box, abs=0.02)
        assert all(set(d) == {"box", "score", "label", "name"} for d in record["detections"])
    annotated = output / "annotated"
    assert (annotated / folder.relative_to(folder.anchor) / "nested" / "wide.png").is_file()
    assert Image.open(next(annotated.rglob("*.jpg"))).size == (96, 96)


def test_killed_run_continues_without_redoing_or_duplicating(shapes, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(40):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "detection.predict", str(folder), "--checkpoint", str(DEMO),
               "--output", str(output), "--batch-size", "1", "--workers", "1", "--score-threshold", "0.05"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    predictions = output / PREDICTIONS_FILE
    deadline = time.monotonic() + 300
    while not (predictions.exists() and predictions.read_text().count("\n") >= 3):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no predictions after 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    first = read_records(output)
    assert 3 <= len(first) < 40
    with predictions.open("a") as handle:
        handle.write('{"file": "half a li')  # what a kill in the middle of a write leaves

    result = subprocess.run(command, cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_records(output)
    assert sorted(record["file"] for record in records) == sorted(str(p) for p in folder.glob("*.png"))
    assert records[: len(first)] == first  # kept as written, not redone

    changed = subprocess.run([*command[:-1], "0.5"], cwd=REPO_ROOT, env=script_env(), capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert changed.returncode != 0 and "score_threshold 0.05 -> 0.5" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_video_frames_and_annotated_video(shapes, tmp_path):
    av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((shapes / "coco" / "val").glob("*.jpg"))]
    video = tmp_path / "clip.mp4"
    with av.open(str(video), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        for pixels in frames * 2:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing")
    output = tmp_path / "out"
    main([str(video), str(broken), "--checkpoint", str(DEMO), "--output", str(output), "--save-annotated",
          "--score-threshold", "0.3", "--batch-size", "3"])  # fmt: skip
    records = read_records(output)
    assert [set(record) for record in records if record["file"] == str(broken)] == [{"file", "error"}]
    records = [record for record in records if record["file"] == str(video)]
    assert sorted(record["frame"] for record in records) == list(range(8))
    assert all(record["file"] == str(video) and (record["width"], record["height"]) == (96, 96) for record in records)
    assert any(record["detections"] for record in records)
    annotated = output / "annotated" / video.relative_to(video.anchor)
    with av.open(str(annotated)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 8


def test_video_without_pyav_says_how_to_install_it(tmp_path, monkeypatch):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(SystemExit, match=r"reading videos needs PyAV: pip install 'resdet\[video\]'"):
        main([str(video), "--checkpoint", str(DEMO), "--output", str(tmp_path / "out")])


def test_coco_results_take_image_ids_from_the_annotation_file(shapes, tmp_path):
    annotations = shapes / "coco" / "annotations" / "instances_val.json"
    ground_truth = json.loads(annotations.read_text())
    # ids that are not positions, and categories in another order: both must be read, not assumed
    for image in ground_truth["images"]:
        image["id"] += 1000
    for annotation in ground_truth["annotations"]:
        annotation["image_id"] += 1000
        annotation["category_id"] *= 10
    for category in ground_truth["categories"]:
        category["id"] *= 10
    remapped = tmp_path / "instances.json"
    remapped.write_text(json.dumps(ground_truth))
    results = tmp_path / "results.json"
    main([str(shapes / "coco" / "val"), "--checkpoint", str(DEMO), "--output", str(tmp_path / "out"),
          "--score-threshold", "0.05", "--coco-results", str(results),
          "--coco-annotations", str(remapped)])  # fmt: skip
    detections = json.loads(results.read_text())
    assert {d["image_id"] for d in detections} <= {image["id"] for image in ground_truth["images"]}
    assert {d["category_id"] for d in detections} <= {10, 20, 30, 40}
    coco = COCO(str(remapped))
    evaluation = COCOeval(coco, coco.loadRes(str(results)), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[1] > 0.5  # AP50 of the demo detector on its own kind of images


def test_missing_sources_and_unsupported_checkpoints_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="source not found: .*nowhere"):
        main([str(tmp_path / "nowhere"), "--checkpoint", str(DEMO), "--output", str(tmp_path / "out")])
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pth")
    with pytest.raises(SystemExit) as raised:
        main([str(image), "--checkpoint", str(tmp_path / "whole_model.pth"), "--output", str(tmp_path / "out")])
    message = str(raised.value)
    assert "pickled Python object (torch.nn.modules.linear.Linear)" in message and "state_dict()" in message
    assert "\n" not in message


def test_mobilenet_faster_rcnn_is_named_not_a_resnet(tmp_path):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "mobilenet.pth")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(SystemExit) as raised:
        main([str(image), "--checkpoint", str(tmp_path / "mobilenet.pth"), "--output", str(tmp_path / "out")])
    message = str(raised.value)
    assert "backbone is not a ResNet" in message and "mobilenet.pth" in message and "\n" not in message


def test_bench_smoke_compares_the_pipeline_with_its_anchor(capsys):
    from bench.predict import main as bench

    ratio = bench(["--smoke", "--device", "cpu"])
    assert ratio > 0
    assert "pipeline / anchor throughput" in capsys.readouterr().out


def test_torchvision_pth_with_class_names_from_a_file(tmp_path):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    torch.save(FasterRCNN(backbone, num_classes=3).state_dict(), tmp_path / "custom.pth")
    (tmp_path / "classes.txt").write_text("dining table\ntraffic light\n")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    output = tmp_path / "out"
    main([str(image), "--checkpoint", str(tmp_path / "custom.pth"), "--class-names", str(tmp_path / "classes.txt"),
          "--output", str(output), "--score-threshold", "0"])  # fmt: skip
    settings = json.loads((output / "predict_settings.json").read_text())
    assert settings["class_names"] == ["dining table", "traffic light"]
    (record,) = read_records(output)
    assert record["detections"] and {d["name"] for d in record["detections"]} <= {"dining table", "traffic light"}
    with pytest.raises(SystemExit, match="3 class names given, but .*custom.pth has 2 classes"):
        (tmp_path / "classes.txt").write_text("a\nb\nc\n")
        main([str(image), "--checkpoint", str(tmp_path / "custom.pth"), "--class-names",
              str(tmp_path / "classes.txt"), "--output", str(tmp_path / "other")])  # fmt: skip


@pytest.mark.parametrize(("flags", "expected"), [([], None), (["--precision", "fp32"], "fp32"), (["--bf16"], "bf16")])
def test_the_precision_is_the_services_default_and_is_recorded(tmp_path, flags, expected):
    from backbone.devices import native_bf16

    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    main([str(image), "--checkpoint", str(DEMO), "--output", str(tmp_path / "out"), "--device", "cpu", *flags])
    settings = json.loads((tmp_path / "out" / "predict_settings.json").read_text())
    auto = "bf16" if native_bf16(torch.device("cpu")) else "fp32"  # the service's BF16=auto
    assert settings["precision"] == (expected or auto)
