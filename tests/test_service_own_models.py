"""Serving your own models: a detector alone (an empty setting disables a model, in compose too), a torchvision
.pth with its class names, the served name of a trained checkpoint, and one log line for an unsupported file."""

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from detection import load_detector, save_detector
from service import Settings, create_app
from service.loading import served_name
from service.settings import DEMO_MODEL_DIR
from tests.conftest import REPO_ROOT

DEMO_DETECTOR = DEMO_MODEL_DIR / "demo_detector.safetensors"


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def ready(client: TestClient) -> None:
    """Wait for /readyz 200; fail with its answer if warm-up failed (a 503 without Retry-After)."""
    while (readiness := client.get("/readyz")).status_code != 200:  # warm-up is a background task
        assert "Retry-After" in readiness.headers, readiness.json()
        time.sleep(0.02)


def compose_environment(shell: dict[str, str]) -> dict[str, str]:
    """The api service's environment as compose interpolates it: `${VAR-default}` keeps an empty VAR, `${VAR:-d}`
    replaces it (the compose specification; Docker compose and podman-compose agree)."""
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]

    def interpolate(text: str) -> str:
        def value(match: re.Match) -> str:
            name, colon, default = match.group(1), match.group(2), match.group(3) or ""
            if name not in shell or (colon and shell[name] == ""):
                return default
            return shell[name]

        return re.sub(r"\$\{(\w+)(?:(:?)-([^}]*))?\}", value, text)

    return {key: interpolate(str(raw)) for key, raw in services["api"]["environment"].items() if raw is not None}


def test_compose_with_an_empty_classifier_file_serves_the_detector_alone(tmp_path, monkeypatch):
    environment = compose_environment({"DETECTOR_FILE": "model.safetensors", "CLASSIFIER_FILE": ""})
    mounted = tmp_path / "models"  # what compose mounts at MODEL_PATHS_BASE
    mounted.mkdir()
    (mounted / "model.safetensors").write_bytes(DEMO_DETECTOR.read_bytes())
    environment["MODEL_PATHS_BASE"] = str(mounted)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.classifier_checkpoint is None
    assert settings.detector_checkpoint == mounted / "model.safetensors"
    with TestClient(create_app(settings)) as client:
        ready(client)
        assert client.get("/readyz").json()["models"] == ["detector"]
        assert client.post("/detect", files={"file": ("a.png", png(), "image/png")}).status_code == 200
        missing = client.post("/classify", files={"file": ("a.png", png(), "image/png")})
        assert missing.status_code == 503 and "no classifier is configured" in missing.json()["detail"]
        assert "Retry-After" not in missing.headers  # retrying will not help


def test_compose_defaults_still_serve_both_demo_models():
    environment = compose_environment({})
    assert environment["DETECTOR_CHECKPOINT"] == "demo_detector.safetensors"
    assert environment["CLASSIFIER_CHECKPOINT"] == "demo_classifier.safetensors"
    assert environment["MODEL_PATHS_BASE"] == "/models"


def test_a_torchvision_pth_is_served_with_the_class_names_of_a_file(tmp_path):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    torch.save(FasterRCNN(backbone, num_classes=3).state_dict(), tmp_path / "custom.pth")
    (tmp_path / "classes.txt").write_text("dining table\ntraffic light\n")
    settings = Settings(model_paths_base=tmp_path, detector_checkpoint="custom.pth", detector_class_names="classes.txt",
                        classifier_checkpoint=None, optimize=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        ready(client)
        (model,) = client.get("/models").json()["models"]
        assert model["class_names"] == ["dining table", "traffic light"]
        answer = client.post("/detect?score_threshold=0", files={"file": ("a.png", png(), "image/png")}).json()
        assert answer["detections"] and {d["name"] for d in answer["detections"]} <= {"dining table", "traffic light"}
        filtered = client.post("/detect?score_threshold=0&classes=dining table",
                               files={"file": ("a.png", png(), "image/png")})  # fmt: skip
        assert {d["name"] for d in filtered.json()["detections"]} == {"dining table"}


def test_class_names_for_a_checkpoint_with_a_manifest_are_refused_in_one_line(tmp_path):
    from service.loading import ModelLoadError, configured_sources, load_model

    (tmp_path / "classes.txt").write_text("a\nb\n")
    settings = Settings(detector_checkpoint=DEMO_DETECTOR, detector_class_names=tmp_path / "classes.txt",
                        classifier_checkpoint=None)  # fmt: skip
    with pytest.raises(ModelLoadError, match="names its classes in its manifest") as raised:
        for source in configured_sources(settings):
            load_model(source, settings=settings, device=torch.device("cpu"))
    assert "\n" not in str(raised.value)


def test_a_trained_model_is_served_under_its_run_name_or_the_setting(tmp_path):
    model, manifest = load_detector(DEMO_DETECTOR)
    run = tmp_path / "runs" / "person_car"
    run.mkdir(parents=True)
    save_detector(run / "model.safetensors", model=model,
                  provenance={"command": "train_det.py", "config": {"output_dir": "runs/person_car"}})  # fmt: skip
    settings = Settings(detector_checkpoint=run / "model.safetensors", classifier_checkpoint=None, optimize=False)
    with TestClient(create_app(settings)) as client:
        ready(client)
        assert client.get("/models").json()["models"][0]["name"] == "person_car"
        answer = client.post("/detect", files={"file": ("a.png", png(), "image/png")}).json()
        assert answer["model"]["name"] == "person_car"
    assert served_name(run / "model.safetensors", manifest, setting="shapes-v2") == "shapes-v2"
    assert served_name(DEMO_DETECTOR, manifest, setting=None) == "demo_detector"  # a named file keeps its name


def test_an_unsupported_checkpoint_is_one_log_line_without_traceback(tmp_path):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.save(fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=3).state_dict(),
               tmp_path / "mobilenet.pth")  # fmt: skip
    # the command users run, in its own process: in the test process, a failed uvicorn start after OpenVINO was
    # imported by an earlier module died writing to pytest's closed capture stream. The port is never bound.
    environment = {**os.environ, "DETECTOR_CHECKPOINT": str(tmp_path / "mobilenet.pth"), "CLASSIFIER_CHECKPOINT": "",
                   "PORT": "18089", "HOST": "127.0.0.1"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=environment, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    printed = result.stderr
    assert "Traceback" not in printed and "Application startup failed" in printed, printed[-3000:]
    (failure,) = [line for line in printed.splitlines() if "startup failed:" in line]
    assert "mobilenet.pth" in failure and "not a ResNet" in failure


def test_model_paths_base_resolves_relative_paths_only(tmp_path):
    settings = Settings(
        model_paths_base=tmp_path, detector_checkpoint="d.safetensors", classifier_checkpoint=DEMO_DETECTOR
    )
    assert settings.detector_checkpoint == tmp_path / "d.safetensors"
    assert settings.classifier_checkpoint == DEMO_DETECTOR
    assert Settings(detector_checkpoint="d.safetensors").detector_checkpoint == Path("d.safetensors")


@pytest.mark.parametrize(
    ("old", "new", "why", "value"),
    [
        ("MODEL_DIR", "MODEL_PATHS_BASE", "MODELS_DIR is the folder of models", "/models"),
        ("DECODE_MEMORY_BYTES", "IMAGE_MEMORY_BYTES", "the images waiting for inference", "1000000"),
    ],
)
def test_an_old_setting_name_is_refused_in_one_line_naming_the_new_one(monkeypatch, capsys, old, new, why, value):
    from service.__main__ import main

    with pytest.raises(ValueError, match=f"{old} is now {new}"):
        Settings(**{old.lower(): value})
    monkeypatch.setenv(old, value)
    with pytest.raises(ValueError, match=f"{old} is now {new}: .*{why}"):
        Settings()
    monkeypatch.setattr("sys.argv", ["service"])
    assert main() == 2
    (problem,) = [line for line in capsys.readouterr().err.splitlines() if old in line]
    assert new in problem


@pytest.mark.parametrize(("name", "default"), [("MAX_BATCH", "8"), ("DECODE_CPU_S", "3.0"), ("HOST", "127.0.0.1")])
def test_an_empty_setting_that_has_no_unset_is_refused_in_one_line_saying_it_is_empty(
    monkeypatch, capsys, name, default
):
    """`MAX_BATCH= python -m service` was refused with pydantic's "Input should be a valid integer" about an
    input_value of None: the shell's empty value, read as unset, which such a setting cannot be."""
    from pydantic import ValidationError

    from service.__main__ import main

    monkeypatch.setenv(name, "")
    expected = f"{name}: set but empty: give it a value, or unset it for its default ({default})"
    with pytest.raises(ValidationError, match=f"{name.lower()}\n  " + re.escape(expected.split(": ", 1)[1])):
        Settings()
    monkeypatch.setattr("sys.argv", ["service"])
    assert main() == 2
    assert capsys.readouterr().err.splitlines()[1:] == [f"  {expected}"]


def test_python_m_service_help_lists_every_setting_and_starts_nothing(monkeypatch, capsys):
    from service.__main__ import main

    monkeypatch.setattr("sys.argv", ["service", "--help"])
    assert main() == 0
    printed = capsys.readouterr().out
    for name in Settings.model_fields:
        assert f"  {name.upper()} (default: " in printed
    assert "MODEL_PATHS_BASE" in printed and "Empty disables /classify" in printed
    assert str(REPO_ROOT) not in printed  # defaults inside the repository are shown relative to it
