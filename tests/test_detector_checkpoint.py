"""save_detector / load_detector: the round trip, and errors that name what is wrong with a file."""

import json

import pytest
import torch

from backbone import create_model
from backbone.serving_checkpoint import load_checkpoint, make_manifest, read_manifest, save_checkpoint, save_classifier
from backbone.weights import CheckpointError
from detection import build_detector, load_detector, save_detector

TINY = dict(base_width=8, min_size=64, max_size=96, fpn_channels=32, representation_size=64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, class_names=["circle", "square"], **TINY)
    path = tmp_path_factory.mktemp("detector") / "detector.safetensors"
    save_detector(path, model=model, provenance={"recipe": "test"}, metrics={"map50": 0.5})
    return model.eval(), path


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_round_trip_gives_the_same_detections(head, tmp_path):
    torch.manual_seed(0)
    sizes = (16, 32, 64, 128, 256)
    model = build_detector(backbone="resnet18", head=head, num_classes=2, anchor_sizes=sizes, **TINY).eval()
    save_detector(tmp_path / "d.safetensors", model=model, metrics={"map50": 0.25})
    loaded, manifest = load_detector(tmp_path / "d.safetensors")
    assert not loaded.training and loaded.config == model.config and loaded.class_names == model.class_names
    assert manifest["kind"] == "detector" and manifest["metrics"] == {"map50": 0.25}
    assert manifest["architecture_kwargs"]["anchor_sizes"] == [16, 32, 64, 128, 256]
    assert manifest["preprocessing"]["min_size"] == [64]
    json.dumps(manifest)  # everything in it is JSON
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 60)]
    with torch.inference_mode():
        _, expected = model(images)
        _, actual = loaded(images)
    for a, b in zip(expected, actual):
        assert all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


def test_corrupt_and_truncated_files_are_named(saved, tmp_path):
    _, path = saved
    (tmp_path / "random.safetensors").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    truncated = tmp_path / "truncated.safetensors"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (tmp_path / "random.safetensors", truncated):
        with pytest.raises(CheckpointError, match=bad.name):
            load_detector(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_detector(tmp_path / "missing.safetensors")


def test_mismatched_weights_and_manifests_are_named(saved, tmp_path):
    _, path = saved
    state_dict, manifest = load_checkpoint(path)

    claims_deeper = dict(manifest, architecture_kwargs=dict(manifest["architecture_kwargs"], backbone="resnet34"))
    save_checkpoint(tmp_path / "deeper.safetensors", state_dict=state_dict, manifest=claims_deeper)
    expected = r"deeper.safetensors do not fit Detector:\n  missing \(80\): features\.backbone\.res2\.2\."
    with pytest.raises(CheckpointError, match=expected):
        load_detector(tmp_path / "deeper.safetensors")

    wider = dict(state_dict, **{"roi_heads.box_predictor.cls_score.weight": torch.zeros(5, 64)})
    save_checkpoint(tmp_path / "wider.safetensors", state_dict=wider, manifest=manifest)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*cls_score\.weight: file \(5, 64\) vs model \(3, 64\)"):
        load_detector(tmp_path / "wider.safetensors")

    three_names = dict(manifest, class_names=["a", "b", "c"])
    save_checkpoint(tmp_path / "names.safetensors", state_dict=state_dict, manifest=three_names)
    with pytest.raises(CheckpointError, match="3 class names but architecture_kwargs say num_classes=2"):
        load_detector(tmp_path / "names.safetensors")

    unknown_option = dict(manifest, architecture_kwargs=dict(manifest["architecture_kwargs"], warp_speed=9))
    save_checkpoint(tmp_path / "option.safetensors", state_dict=state_dict, manifest=unknown_option)
    with pytest.raises(CheckpointError, match="option.safetensors: architecture_kwargs do not build.*warp_speed"):
        load_detector(tmp_path / "option.safetensors")

    save_classifier(tmp_path / "classifier.safetensors", model=create_model("resnet18", base_width=8),
                    architecture="resnet18", class_names=[str(i) for i in range(1000)])  # fmt: skip
    with pytest.raises(CheckpointError, match="holds a classifier, not a detector"):
        load_detector(tmp_path / "classifier.safetensors")

    no_kwargs = make_manifest(kind="detector", architecture="faster_rcnn", architecture_kwargs={}, class_names=["a"])
    save_checkpoint(tmp_path / "empty.safetensors", state_dict=state_dict, manifest=no_kwargs)
    with pytest.raises(CheckpointError, match="empty.safetensors"):
        load_detector(tmp_path / "empty.safetensors")


def test_save_refuses_what_it_could_not_reload(saved, tmp_path):
    model, path = saved
    assert read_manifest(path)["class_names"] == ["circle", "square"]
    with pytest.raises(ValueError, match="3 class names"):
        save_detector(tmp_path / "x.safetensors", model=model, class_names=["a", "b", "c"])
    optimized, _ = load_detector(path)
    optimized.optimize_for_inference()
    with pytest.raises(ValueError, match="optimize_for_inference"):
        save_detector(tmp_path / "x.safetensors", model=optimized)
    assert not (tmp_path / "x.safetensors").exists()
