"""training/train_det.py end to end on generated shapes: COCO and VOC layouts, outputs, exact resume after
kill -9, two gloo processes, evaluation only, and the errors a new user meets first."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_scripts import (
    REPO_ROOT,
    TORCHRUN_2_PROCESSES,
    assert_resumes_exactly_after_kill_9,
    run_script,
    script_command,
    script_env,
    train_losses,
)

from backbone import create_model
from backbone.serving_checkpoint import read_manifest, save_classifier
from backbone.weights import CheckpointError
from detection import build_detector, save_detector
from detection.data import AnnotationError, generate_synthetic
from detection.pretrained import initialise_detector
from training.config import make_config
from training.train_det import RECIPES, DetTrainConfig, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_synthetic(root, num_train=12, num_val=4, image_size=64, seed=0)
    return root


def tiny_config(data: Path, output_dir: Path, **overrides) -> DetTrainConfig:
    """The synthetic recipe shrunk to seconds: a width-8 ResNet-18 FPN on 64 px images, batch 2."""
    values = {**RECIPES["synthetic"], "dataset": "coco", "data_path": str(data / "coco"),
              "output_dir": str(output_dir), "base_width": 8, "fpn_channels": 16, "representation_size": 32,
              "min_size": (64,), "max_size": 64, "batch_size": 2, "max_iterations": 6, "warmup_iterations": 2,
              "lr_milestones": (4,), "eval_every": 6, "log_every": 1, "workers": 0, "tensorboard": False,
              "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100, "rpn_post_nms_top_n_test": 50,
              "group_aspect_ratio": False, **overrides}  # fmt: skip
    return make_config(DetTrainConfig, values)


def val_image_ids(shapes: Path) -> set[int]:
    val_json = json.loads((shapes / "coco" / "annotations" / "instances_val.json").read_text())
    return {image["id"] for image in val_json["images"]}


def test_coco_layout_trains_evaluates_and_writes_every_output(shapes, tmp_path):
    results = main(tiny_config(shapes, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("last.pt", "metrics.jsonl", "loss.png", "lr.png", "map.png", "eval.json", "detections.json"):
        assert (run / name).is_file(), name
    assert list((run / "pr_curves").glob("*.png"))
    assert set(results) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "val_loss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in results.values())
    manifest = read_manifest(run / "model.safetensors")
    assert manifest["kind"] == "detector"
    assert manifest["class_names"] == ["circle", "square", "triangle", "star"]
    assert manifest["metrics"]["AP50"] == results["AP50"]
    assert manifest["provenance"]["iterations"] == 6
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 7))
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["headline"]["AP"] == results["AP"]
    # an untrained detector still scores something on every image: an empty results file would be a bug
    assert {d["image_id"] for d in json.loads((run / "detections.json").read_text())} == val_image_ids(shapes)

    # evaluation only, on the serving checkpoint: the same numbers
    again = main(tiny_config(shapes, tmp_path / "eval", eval_only=str(run / "model.safetensors")))
    assert {k: again[k] for k in ("AP", "AP50")} == {k: results[k] for k in ("AP", "AP50")}
    # and the report users read: AP per class and size, the confusion matrix, the worst images
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["per_class_ap"]) == set(manifest["class_names"])
    assert len(report["confusion"]["counts"]) == len(manifest["class_names"]) + 1
    for name in ("confusion.png", "confusion.json", "worst_images.jpg"):
        assert (tmp_path / "eval" / name).is_file(), name

    # the test-time ladder from the same command: other detections, scored the same way, no validation loss
    ladder = main(tiny_config(shapes, tmp_path / "ladder", eval_only=str(run / "model.safetensors"),
                              refine_boxes=True, test_flip=True, vote_threshold=0.8))  # fmt: skip
    assert {"AP", "AP50"} <= set(ladder) and "val_loss" not in ladder
    with pytest.raises(ValueError, match="eval_only"):
        main(tiny_config(shapes, tmp_path / "no", refine_boxes=True))


def test_voc_layout_reports_both_voc_metrics_and_coco(shapes, tmp_path):
    config = tiny_config(shapes, tmp_path / "voc", dataset="voc", data_path=str(shapes / "voc"), max_iterations=2,
                         eval_every=2, lr_milestones=(1,))  # fmt: skip
    results = main(config)
    assert {"voc07_mAP", "voc_area_mAP", "AP50"} <= set(results)
    report = json.loads((tmp_path / "voc" / "eval.json").read_text())
    assert set(report["voc"]["mean_ap"]) == {"11point", "area"}


def test_resume_after_kill_9_continues_exactly(shapes, tmp_path):
    reference = tiny_config(shapes, tmp_path / "reference", max_iterations=8, checkpoint_every=3, eval_every=8)
    killed = tiny_config(shapes, tmp_path / "killed", max_iterations=8, checkpoint_every=3, eval_every=8)
    assert_resumes_exactly_after_kill_9("train_det.py", DetTrainConfig, reference, killed, first_checkpoint=3)


@pytest.mark.slow
def test_two_gloo_processes_train_and_shard_evaluation(shapes, tmp_path):
    """What CI runs: torchrun with 2 CPU processes. Each rank draws its own RPN/RoI samples, so losses are
    not comparable with one process; evaluation is, since the gathered detections cover every image once."""
    ddp = tiny_config(shapes, tmp_path / "ddp", max_iterations=4, eval_every=4, lr_milestones=(3,))
    run_script("train_det.py", ddp, launcher=TORCHRUN_2_PROCESSES)
    losses = train_losses(tmp_path / "ddp")
    assert sorted(losses) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(list(losses.values()))))
    detections = json.loads((tmp_path / "ddp" / "detections.json").read_text())
    assert {d["image_id"] for d in detections} == val_image_ids(shapes)  # both ranks' shards, gathered

    checkpoint = str(tmp_path / "ddp" / "model.safetensors")
    run_script("train_det.py", tiny_config(shapes, tmp_path / "eval2", eval_only=checkpoint),
               launcher=TORCHRUN_2_PROCESSES)  # fmt: skip
    single = main(tiny_config(shapes, tmp_path / "eval1", eval_only=checkpoint))
    sharded = json.loads((tmp_path / "eval2" / "eval.json").read_text())["headline"]
    assert sharded["AP"] == pytest.approx(single["AP"], abs=1e-9)
    assert sharded["AP50"] == pytest.approx(single["AP50"], abs=1e-9)


def test_a_redirected_run_logs_plain_lines_without_escape_codes(shapes, tmp_path):
    # Output to a pipe, as to a file or a CI log: tqdm's carriage returns and escape codes were written there.
    result = run_script("train_det.py", tiny_config(shapes, tmp_path / "run", max_iterations=6, log_every=1))
    output = result.stdout + result.stderr
    assert "\r" not in output and "\x1b" not in output
    progress_lines = [line for line in output.splitlines() if line.startswith(("train:", "evaluate:"))]
    # one summary line each for training and the evaluation at its end (a run this short logs no periodic line)
    assert len(progress_lines) == 2, progress_lines
    assert progress_lines[-1].startswith("train: 6/6 it (100%)") and "done in" in progress_lines[-1]
    # the batch as both conventions count it: ours is global, torchvision's --batch-size per process
    assert "batch: 2 images per iteration over all processes (2 per process)" in result.stdout


def test_missing_dataset_says_what_to_pass(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "training" / "train_det.py")], cwd=REPO_ROOT,
                            env=script_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "--dataset coco" in result.stderr and "--data_path" in result.stderr
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(make_config(DetTrainConfig, {"dataset": "coco", "data_path": str(tmp_path / "nowhere")}))


def test_malformed_annotation_file_names_the_file(shapes, tmp_path):
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "instances_val.json").write_text("{not json")
    with pytest.raises(AnnotationError, match=r"instances_val\.json.*not valid JSON"):
        main(tiny_config(shapes, tmp_path / "run", data_path=str(broken)))


def tiny_detector(*, head: str = "fpn", num_classes: int = 4):
    return build_detector(
        backbone="resnet18", head=head, num_classes=num_classes, base_width=8, fpn_channels=16,
        representation_size=32, min_size=(64,), max_size=64, frozen_bn=False, freeze_at=0,
    )  # fmt: skip


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_init_from_our_classifier_loads_the_backbone(tmp_path, head):
    classifier = create_model("resnet18", base_width=8, num_classes=3)
    torch.nn.init.normal_(classifier.res5[1].conv2.weight)
    path = save_classifier(tmp_path / "clf.safetensors", model=classifier, architecture="resnet18",
                           class_names=["a", "b", "c"])  # fmt: skip
    detector = tiny_detector(head=head)
    assert initialise_detector(detector, path) == "the backbone"
    res5 = detector.features.backbone.res5 if head == "fpn" else detector.roi_heads.box_head.res5
    assert torch.equal(res5[1].conv2.weight, classifier.res5[1].conv2.weight)
    assert torch.equal(detector.features.backbone.stem.conv.weight, classifier.stem.conv.weight)

    wider = save_classifier(tmp_path / "wide.safetensors", model=create_model("resnet18", base_width=16),
                            architecture="resnet18", class_names=[str(i) for i in range(1000)])  # fmt: skip
    with pytest.raises(CheckpointError, match="base_width"):
        initialise_detector(tiny_detector(head=head), wider)


def test_init_from_a_detector_with_other_classes_keeps_our_predictor(tmp_path):
    source = tiny_detector(num_classes=7)
    path = save_detector(tmp_path / "det.safetensors", model=source)
    detector = tiny_detector(num_classes=4)
    fresh = detector.roi_heads.box_predictor.cls_score.weight.clone()
    assert "except its class-specific predictor" in initialise_detector(detector, path)
    assert torch.equal(detector.roi_heads.box_predictor.cls_score.weight, fresh)
    assert torch.equal(detector.features.fpn.inner_blocks[0][0].weight, source.features.fpn.inner_blocks[0][0].weight)
    same = tiny_detector(num_classes=7)
    assert initialise_detector(same, path) == "the whole detector"
    assert torch.equal(same.roi_heads.box_predictor.cls_score.weight, source.roi_heads.box_predictor.cls_score.weight)
    with pytest.raises(FileNotFoundError, match="absent"):
        initialise_detector(same, tmp_path / "absent.pth")


def crop_val_images(shapes: Path, root: Path, sizes: list[tuple[int, int]]) -> Path:
    """A copy of the generated COCO val split with its images cropped to (width, height) `sizes`, so that one
    evaluation batch holds several aspect ratios; boxes cut by the crop are clipped or dropped by the reader."""
    from PIL import Image

    coco = json.loads((shapes / "coco" / "annotations" / "instances_val.json").read_text())
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "val").mkdir()
    for image, (width, height) in zip(coco["images"], sizes, strict=True):
        with Image.open(shapes / "coco" / "val" / image["file_name"]) as stored:
            stored.crop((0, 0, width, height)).save(root / "coco" / "val" / image["file_name"], quality=95)
        image.update(width=width, height=height)
    (root / "coco" / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return root


def test_evaluation_scores_the_detections_detection_predict_gives(shapes, tmp_path):
    """Issue 23: evaluation's detections come from the one inference path, so an image's detections there are
    `detection.predict`'s records for it, whatever its batch-mates (four aspect ratios in one evaluation batch)."""
    from detection import load_detector
    from detection.predict import main as predict_main

    demo = REPO_ROOT / "service" / "models" / "demo_detector.safetensors"
    data = crop_val_images(shapes, tmp_path / "mixed", [(64, 40), (40, 64), (64, 56), (48, 64)])
    main(tiny_config(data, tmp_path / "eval", eval_only=str(demo), eval_batch_size=4))
    evaluated: dict[int, list] = {}
    for detection in json.loads((tmp_path / "eval" / "detections.json").read_text()):
        x, y, w, h = detection["bbox"]
        evaluated.setdefault(detection["image_id"], []).append((detection["score"], [x, y, x + w, y + h]))

    # the predict CLI at evaluation's cut: the model's own score threshold and detections per image, fp32
    model, _ = load_detector(demo)
    predict_main([str(data / "coco" / "val"), "--checkpoint", str(demo), "--output", str(tmp_path / "predict"),
                  "--precision", "fp32", "--score-threshold", str(model.roi_heads.score_thresh),
                  "--max-detections", str(model.roi_heads.detections_per_img), "--workers", "1",
                  "--quiet"])  # fmt: skip
    image_ids = {image["file_name"]: image["id"] for image in json.loads(
        (data / "coco" / "annotations" / "instances_val.json").read_text())["images"]}  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(image_ids) == 4
    for record in records:
        expected = sorted(((d["score"], d["box"]) for d in record["detections"]), key=lambda d: -d[0])
        got = sorted(evaluated.get(image_ids[Path(record["file"]).name], []), key=lambda d: -d[0])
        assert expected, "the demo detector finds shapes in every image: an empty answer would prove nothing"
        assert len(got) == len(expected), record["file"]
        for (score, box), (expected_score, expected_box) in zip(got, expected):
            assert score == pytest.approx(expected_score, abs=1e-3)
            assert box == pytest.approx(expected_box, abs=0.05)


def test_quiet_leaves_a_redirected_run_silent_and_verbose_adds_debug_lines(shapes, tmp_path):
    """Issue 25: --quiet / --verbose through the one logging setup (backbone/command_logging.py). --quiet: no
    report line, no progress line, and the run still writes everything."""
    from training.config import REPORT_LOGGER, parse_command
    from training.run_log import reporting

    config = tiny_config(shapes, tmp_path / "quiet", max_iterations=2, eval_every=2, lr_milestones=(1,))
    result = subprocess.run([*script_command("train_det.py", config), "--quiet"], cwd=REPO_ROOT, env=script_env(),
                            capture_output=True, text=True, timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "quiet" / "model.safetensors").is_file() and (tmp_path / "quiet" / "eval.json").is_file()

    # the level each flag sets, as the scripts' __main__ parses them (a run from Python reports at INFO)
    report_logger, root = logging.getLogger(REPORT_LOGGER), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert reporting(logging.INFO) and not reporting(logging.DEBUG)
        parse_command(DetTrainConfig, ["--verbose"])
        assert reporting(logging.DEBUG)
        parse_command(DetTrainConfig, ["-q"])
        assert reporting(logging.WARNING) and not reporting(logging.INFO)
        with pytest.raises(SystemExit):  # one or the other
            parse_command(DetTrainConfig, ["--quiet", "--verbose"])
    finally:  # the process's logging as it was: other tests run in it
        report_logger.setLevel(logging.NOTSET)
        root.handlers[:] = handlers
        root.setLevel(level)
