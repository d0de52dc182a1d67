"""Training on your own data as docs/TRAINING.md tells it: a VOC-layout set whose classes.txt holds COCO's
multi-word names, default splits, training from scratch, evaluating with a progress bar, then predicting."""

import json
import os
from pathlib import Path

import pytest

from detection.data import AnnotationError, generate_synthetic, read_class_names
from detection.predict import main as predict
from detection.torchvision_compat import COCO_CLASS_NAMES
from training.config import make_config
from training.det_data import build_datasets
from training.train_det import RECIPES, DetTrainConfig, main

pytestmark = pytest.mark.usefixtures("one_thread")
# the shapes renamed to COCO names with spaces in them
RENAMED = {"circle": "dining table", "square": "traffic light", "triangle": "hot dog", "star": "teddy bear"}


@pytest.fixture(scope="module")
def own_voc(tmp_path_factory) -> Path:
    """A VOC-layout set (Annotations/, ImageSets/Main/{train,val}.txt, JPEGImages/, classes.txt)."""
    root = tmp_path_factory.mktemp("own")
    voc = generate_synthetic(root, num_train=8, num_val=4, image_size=64, seed=5).voc_root
    for xml in (voc / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for old, new in RENAMED.items():
            text = text.replace(f"<name>{old}</name>", f"<name>{new}</name>")
        xml.write_text(text)
    (voc / "classes.txt").write_text("".join(f"{name}\n" for name in RENAMED.values()))
    return voc


def tiny(voc: Path, output_dir: Path, **overrides) -> DetTrainConfig:
    """No split flags: the VOC defaults (train, val) must be used."""
    values = {"dataset": "voc", "data_path": str(voc), "output_dir": str(output_dir), "backbone": "resnet18",
              "base_width": 8, "fpn_channels": 16, "representation_size": 32, "min_size": (64,), "max_size": 64,
              "anchor_sizes": RECIPES["synthetic"]["anchor_sizes"], "batch_size": 2, "max_iterations": 2,
              "warmup_iterations": 1, "lr_milestones": (1,), "eval_every": 2, "log_every": 1, "workers": 0,
              "tensorboard": False, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100,
              "rpn_post_nms_top_n_test": 50, "metrics": ("coco",), **overrides}  # fmt: skip
    return make_config(DetTrainConfig, values)


def test_class_names_are_one_per_line_with_spaces_kept(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("".join(f"  {name}\n\n" for name in COCO_CLASS_NAMES))
    assert read_class_names(path) == list(COCO_CLASS_NAMES)
    path.write_text("dining table\ncar\ndining table\n")
    with pytest.raises(AnnotationError, match="listed twice: 'dining table'"):
        read_class_names(path)


def test_voc_layout_with_multi_word_classes_and_default_splits(own_voc, tmp_path):
    train, val = build_datasets(tiny(own_voc, tmp_path), eval_only=False)
    assert val.class_names == list(RENAMED.values())
    assert (len(train), len(val)) == (8, 4)  # ImageSets/Main/train.txt and val.txt, not train2017/val2017


def test_training_from_scratch_with_frozen_layers_stops_with_what_to_pass(own_voc, tmp_path):
    defaults = DetTrainConfig()
    assert (defaults.detector.frozen_bn, defaults.detector.freeze_at, defaults.init) == (True, 2, "")
    with pytest.raises(ValueError, match="--frozen_bn false --freeze_at 0"):
        main(tiny(own_voc, tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_default_workers_do_not_exceed_the_cores_available():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= DetTrainConfig().workers <= min(4, cores)


def test_train_evaluate_then_predict_on_own_data(own_voc, tmp_path, capsys):
    run = tmp_path / "run"
    main(tiny(own_voc, run, frozen_bn=False, freeze_at=0))
    assert json.loads((run / "eval.json").read_text())["headline"]["AP50"] >= 0
    capsys.readouterr()
    main(tiny(own_voc, tmp_path / "eval", frozen_bn=False, freeze_at=0, eval_only=str(run / "model.safetensors")))
    assert "evaluate" in capsys.readouterr().err  # the evaluation's progress bar

    output = tmp_path / "predicted"
    predict([str(own_voc / "JPEGImages"), "--checkpoint", str(run / "model.safetensors"), "--output", str(output),
             "--score-threshold", "0"])  # fmt: skip
    records = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    names = {detection["name"] for record in records for detection in record["detections"]}
    assert names and names <= set(RENAMED.values())
