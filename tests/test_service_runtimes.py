"""The service's RUNTIME setting: the detector's network under another runtime answers /detect as eager PyTorch
does, and /models says what runs it."""

import io

import numpy as np
import pytest
from exported_models import DEMO_DETECTOR
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from test_service_detect import wait_ready

from detection import runtimes
from detection.data.synthetic_shapes import render_image
from service.app import create_app
from service.settings import Settings


def shapes_png(seed: int) -> bytes:
    """Synthetic shapes, what the demo detector finds (on noise it finds nothing, and nothing equals nothing)."""
    image = render_image(np.random.default_rng(seed), image_size=160, max_objects=3)[0]
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def served(runtime: str) -> tuple[dict, list[list[dict]]]:
    settings = Settings(
        detector_checkpoint=DEMO_DETECTOR, classifier_checkpoint=None, models_dir=None, runtime=runtime,
        bf16=False, optimize=False, max_batch=4, max_batch_wait_ms=2,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=600.0)  # generous: a loaded 2-core machine warms a graph up slowly
        (model,) = [entry for entry in client.get("/models").json()["models"] if entry["role"] == "detector"]
        answers = []
        for seed in (1, 2):
            response = client.post(
                "/detect",
                files={"file": ("shapes.png", shapes_png(seed), "image/png")},
                params={"score_threshold": 0.3},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["detections"])
    return model, answers


@pytest.mark.slow
def test_onnx_runtime_serves_the_eager_detections_and_says_so(tmp_path, monkeypatch):
    if not runtimes.installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed (pip install 'resdet[export]')")
    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path))  # the export made at start-up
    eager_model, eager = served("torch")
    model, answers = served("onnxruntime")
    assert eager_model["runtime"] == {"runtime": "torch", "precision": "fp32", "requested_runtime": "torch"}
    assert model["runtime"] == {"runtime": "onnxruntime", "precision": "fp32", "requested_runtime": "onnxruntime"}
    assert any(eager)
    for ours, theirs in zip(eager, answers):
        assert [(d["label"], d["name"]) for d in ours] == [(d["label"], d["name"]) for d in theirs]
        for mine, other in zip(ours, theirs):
            assert np.abs(np.subtract(mine["box"], other["box"])).max() <= 0.02
            assert abs(mine["score"] - other["score"]) < 1e-4


def test_an_unknown_runtime_is_refused_by_name():
    with pytest.raises(ValidationError, match="'torch', 'auto', 'torch-compile', 'onnxruntime' or 'openvino'"):
        Settings(runtime="tensorrt")
