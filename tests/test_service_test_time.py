"""Test-time options per served detector (DETECTOR_TEST_TIME): each detector answers /detect as the predict CLI
does with the same flags, /models reports its options, a reload keeps them, and a misconfiguration stops the
start in one line."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import REPO, assert_start_refused, rename_in_manifest, serving

from bench.agreement import matched
from detection import load_detector, save_detector
from detection.predict import main as predict_main
from service import Settings, create_app
from service.loading import ModelLoadError

DEMO = REPO / "service" / "models" / "demo_detector.safetensors"
SCORE_THRESHOLD = 0.3
# served name -> (DETECTOR_TEST_TIME options, the predict CLI's flags for the same); "member" is written below
LADDER = {
    "refined": ({"refine_boxes": True}, ["--refine-boxes"]),
    "voted": ({"vote_threshold": 0.5}, ["--vote-threshold", "0.5"]),
    "tta": ({"test_flip": True, "test_sizes": [96, 128]}, ["--test-flip", "--test-sizes", "96", "128"]),
    "tiled": ({"tile_size": 128, "tile_full_image": True}, ["--tile-size", "128", "--tile-full-image"]),
    "ensemble": ({"ensemble_checkpoints": ["member.safetensors"]}, ["--ensemble-checkpoints", "member.safetensors"]),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo detector served as "plain" and once per LADDER entry, and shapes images of 128 and 256 px."""
    from detection.data.synthetic_shapes import render_image

    folder = tmp_path_factory.mktemp("served")
    for name in ("plain", *LADDER):
        shutil.copyfile(DEMO, folder / f"{name}.safetensors")
        rename_in_manifest(folder / f"{name}.safetensors", name)
    member, _ = load_detector(DEMO)  # a compatible second detector: the demo's classifier perturbed
    torch.manual_seed(0)
    weight = member.roi_heads.box_predictor.cls_score.weight
    with torch.no_grad():
        weight.add_(0.3 * torch.randn_like(weight))
    save_detector(folder / "member.safetensors", model=member)
    rng = np.random.default_rng(3)
    images = []
    for index, size in enumerate((128, 256, 256)):
        path = folder / f"shapes{index}.png"
        render_image(rng, image_size=size, max_objects=5)[0].convert("RGB").save(path)
        images.append(path)
    per_model = json.dumps({name: options for name, (options, _) in LADDER.items()})
    settings = Settings(
        detector_checkpoint=None, classifier_checkpoint=None, models_dir=folder, model_paths_base=folder, bf16=False,
        max_batch=4, max_batch_wait_ms=2, detector_test_time=per_model,
    )  # fmt: skip
    with serving(settings) as client:
        yield client, folder, images


def detect(client, name: str, images) -> list[list[dict]]:
    answers = []
    for image in images:
        response = client.post("/detect", params={"model": name, "score_threshold": SCORE_THRESHOLD},
                               files={"file": (image.name, image.read_bytes(), "image/png")})  # fmt: skip
        assert response.status_code == 200, response.text
        answers.append(response.json()["detections"])
    return answers


def cli(folder, images, flags: list[str], output) -> list[list[dict]]:
    predict_main([*map(str, images), "--checkpoint", str(DEMO), "--output", str(output), "--device", "cpu",
                  "--precision", "fp32", "--score-threshold", str(SCORE_THRESHOLD), "--workers", "1", "-q",
                  *(str(folder / flag) if flag.endswith(".safetensors") else flag for flag in flags)])  # fmt: skip
    by_file = {}
    for line in (output / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_file[record["file"]] = record["detections"]
    return [by_file[str(image)] for image in images]


def same(ours: list[dict], theirs: list[dict]) -> bool:
    """The one-inference-path tolerance (tests/test_one_inference_path.py): same count, boxes 0.05 px, scores 1e-3."""
    pairs = matched(ours, theirs)
    return len(ours) == len(theirs) == len(pairs) and all(
        max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.05 and abs(a["score"] - b["score"]) <= 1e-3
        for a, b in pairs
    )


@pytest.mark.parametrize("name", list(LADDER))
def test_a_detector_answers_as_the_predict_cli_with_the_same_flags(served, name, tmp_path):
    client, folder, images = served
    options, flags = LADDER[name]
    got = detect(client, name, images)
    expected = cli(folder, images, flags, tmp_path / "cli")
    assert sum(map(len, expected)) >= len(images), "too few detections to compare"
    for image, ours, theirs in zip(images, expected, got):
        assert same(ours, theirs), (name, image.name, ours, theirs)
    plain = detect(client, "plain", images)
    assert not all(same(a, b) for a, b in zip(plain, got)), f"{name} answers as the plain detector"


def test_models_reports_each_detectors_options_and_a_reload_keeps_them(served):
    client, _, images = served
    models = {model["name"]: model for model in client.get("/models").json()["models"]}
    assert models["plain"]["test_time"]["refine_boxes"] is False
    assert models["plain"]["test_time"]["ensemble_checkpoints"] == []
    assert models["refined"]["test_time"]["refine_boxes"] is True
    assert models["tta"]["test_time"]["test_sizes"] == [96, 128] and models["tta"]["test_time"]["test_flip"]
    assert models["ensemble"]["test_time"]["ensemble_checkpoints"] == ["member.safetensors"]
    before = detect(client, "refined", images)
    assert client.post("/models/refined/reload").status_code == 200
    assert client.get("/models/refined").json()["test_time"] == models["refined"]["test_time"]
    assert all(same(a, b) for a, b in zip(before, detect(client, "refined", images)))


def _settings(**overrides) -> Settings:
    return Settings(**{"detector_checkpoint": DEMO, "classifier_checkpoint": None, "bf16": False, **overrides})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"demo_detector": {"refine": true}}', "unknown test-time option 'refine'; known: refine_boxes"),
        ('{"demo_detector": {"refine_boxes": "yes"}}', "refine_boxes must be true or false, got 'yes'"),
        ('{"demo_detector": {"tile_size": -1}}', "tile_size must be >= 0"),
        ('{"demo_detector": {"vote_threshold": 2}}', r"vote_threshold must lie in \[0, 1\]"),
        ('{"demo_detector": {"ensemble_checkpoints": "b.safetensors"}}', "must be a list of checkpoint paths"),
        ('{"demo_detector": true}', "expected an object of options"),
        ('["refine_boxes"]', "must be a JSON object mapping detector names"),
        ("refine_boxes", "is not JSON"),
    ],
)
def test_a_bad_option_or_value_is_refused_in_one_line(value, message):
    with pytest.raises(ValueError, match=message) as raised:
        _settings(detector_test_time=value)
    assert "DETECTOR_TEST_TIME" in str(raised.value)


def test_the_command_names_a_bad_option_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("DETECTOR_TEST_TIME", '{"demo_detector": {"tile_sise": 512}}')
    assert_start_refused(monkeypatch)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0] == "resdet service cannot start:", lines
    assert lines[1].strip().startswith("DETECTOR_TEST_TIME: 'demo_detector': unknown test-time option 'tile_sise'")


def test_a_runtime_other_than_eager_torch_is_refused_with_test_time_options():
    with pytest.raises(ValueError, match="run in eager PyTorch only: set RUNTIME=torch"):
        _settings(detector_test_time='{"demo_detector": {"refine_boxes": true}}', runtime="onnxruntime")
    assert _settings(detector_test_time='{"demo_detector": {}}', runtime="onnxruntime").runtime == "onnxruntime"


def test_an_unknown_model_name_or_an_incompatible_member_stops_the_start(tmp_path):
    with pytest.raises(ModelLoadError, match="DETECTOR_TEST_TIME names 'demo', which is no served detector; "
                                             "detectors served: demo_detector"):  # fmt: skip
        with serving(_settings(detector_test_time='{"demo": {"refine_boxes": true}}')):
            pass
    classes = ["a", "b", "c"]
    other, _ = load_detector(DEMO)
    other.class_names = classes + ["d"]
    save_detector(tmp_path / "other.safetensors", model=other)
    wrong = json.dumps({"demo_detector": {"ensemble_checkpoints": [str(tmp_path / "other.safetensors")]}})
    with pytest.raises(ModelLoadError, match="ensemble_checkpoints: model 1 names other classes"):
        with serving(_settings(detector_test_time=wrong)):
            pass
    with pytest.raises(ModelLoadError, match="'demo_detector': multi-scale testing with maxout is the C4 head's"):
        with serving(_settings(detector_test_time='{"demo_detector": {"maxout_sizes": [96, 128]}}')):
            pass
    missing = json.dumps({"demo_detector": {"ensemble_checkpoints": [str(tmp_path / "absent.safetensors")]}})
    with pytest.raises(ModelLoadError, match="ensemble_checkpoints: checkpoint not found"):
        with serving(create_app(_settings(detector_test_time=missing))):
            pass
