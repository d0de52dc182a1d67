"""int8 models of `python -m detection.quantize` in the service: served from MODELS_DIR (or a setting) with the
accuracy check their manifest carries, refused in one line without it or without their runtime, reloaded by the
watcher like any other model file."""

import io
import shutil
import time

import numpy as np
import pytest
import torch
from exported_models import exported, quantized
from fastapi.testclient import TestClient
from helpers import wait_ready

from detection import runtimes
from detection.data.synthetic_shapes import render_image
from detection.int8_calibration import write_manifest
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import read_graph_manifest
from service import Settings, create_app
from service.loading import ModelLoadError, ModelSource, load_model

pytestmark = pytest.mark.skipif(
    not runtimes.installed("onnxruntime"), reason="onnxruntime is not installed (pip install 'resdet[export]')"
)


def shapes_png(seed: int) -> bytes:
    image = render_image(np.random.default_rng(seed), image_size=160, max_objects=3)[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def int8_folder(tmp_path, *names: str):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in names:
        shutil.copyfile(quantized(name), folder / quantized(name).name)
    return folder


def settings_for(folder, **overrides) -> Settings:
    return Settings(detector_checkpoint=None, classifier_checkpoint=None, models_dir=folder, max_batch=4,
                    max_batch_wait_ms=2, **overrides)  # fmt: skip


@pytest.mark.slow
def test_int8_models_serve_with_their_accuracy_check_and_answer_as_predict(tmp_path, one_thread):
    folder = int8_folder(tmp_path, "demo", "classifier")
    with TestClient(create_app(settings_for(folder))) as client:
        wait_ready(client, timeout=300.0)
        models = {model["role"]: model for model in client.get("/models").json()["models"]}
        for role, name in (("detector", "demo"), ("classifier", "classifier")):
            check = read_graph_manifest(quantized(name))["quantization"]
            assert {"fp32", "int8", "drop", "max_drop", "metric"} <= check.keys()
            assert models[role]["precision"] == "int8"
            assert models[role]["runtime"]["runtime"] == "onnxruntime"
            assert models[role]["runtime"]["quantization"] == check
            assert "accuracy check was measured under" in models[role]["runtime"]["reason"]
        answers = [
            client.post("/detect", files={"file": ("s.png", shapes_png(seed), "image/png")},
                        params={"score_threshold": 0.3}).json()["detections"]
            for seed in (1, 2)
        ]  # fmt: skip
        classified = client.post("/classify", files={"file": ("s.png", shapes_png(1), "image/png")})
        assert classified.status_code == 200 and classified.json()["predictions"]
    predictor = RuntimePredictor.from_source(quantized("demo"), precision="int8")
    assert any(answers)
    for seed, ours in zip((1, 2), answers):
        (answer,) = predictor.predict([shapes_png(seed)], score_threshold=0.3)  # bytes: decoded as the service does
        theirs = answer["detections"]
        assert [d["label"] for d in ours] == [d["label"] for d in theirs]
        for mine, other in zip(ours, theirs):  # the same runtime on the same graph
            assert np.abs(np.subtract(mine["box"], other["box"])).max() <= 0.02
            assert abs(mine["score"] - other["score"]) < 1e-4


def refusal(path, tmp_path) -> str:
    with pytest.raises(ModelLoadError) as raised:
        load_model(ModelSource(path, setting="MODELS_DIR"), settings=settings_for(tmp_path), device=torch.device("cpu"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"MODELS_DIR: cannot serve {path}: ")
    return message


def test_an_int8_file_without_its_check_or_its_runtime_is_refused_in_one_line(tmp_path, monkeypatch):
    plain = tmp_path / "demo_classifier.onnx"  # detection.export's fp32 graph: no accuracy check
    shutil.copyfile(exported("classifier"), plain)
    assert "carries no int8 accuracy check ('quantization' in its manifest)" in refusal(plain, tmp_path)

    partial = tmp_path / "partial.int8.onnx"
    shutil.copyfile(quantized("classifier"), partial)
    manifest = read_graph_manifest(partial)
    write_manifest(partial, {**manifest, "quantization": {k: v for k, v in manifest["quantization"].items()
                                                          if k not in ("int8", "drop")}})  # fmt: skip
    assert refusal(partial, tmp_path).endswith("its int8 accuracy check lacks int8, drop; quantize it again")

    ir = tmp_path / "weights_gone.xml"
    ir.write_text("<net/>")
    assert refusal(ir, tmp_path).endswith("its weights weights_gone.bin are not beside it")
    ir.with_suffix(".bin").write_bytes(b"\0")  # weights beside an .xml OpenVINO cannot read: its own words, one line
    if runtimes.installed("openvino"):
        assert "Unable to read the model" in refusal(ir, tmp_path)

    monkeypatch.setattr(runtimes, "installed", lambda runtime: runtime != "onnxruntime")
    assert "runtime 'onnxruntime' is not installed: pip install" in refusal(quantized("classifier"), tmp_path)


def test_the_watcher_reloads_a_replaced_int8_file_and_skips_one_without_its_check(tmp_path):
    folder = int8_folder(tmp_path, "classifier")
    shutil.copyfile(exported("classifier"), folder / "plain.onnx")  # no accuracy check: skipped, counted
    served = folder / quantized("classifier").name
    with TestClient(create_app(settings_for(folder, reload_poll_s=0.05))) as client:
        wait_ready(client)
        (model,) = client.get("/models").json()["models"]
        metrics = client.get("/metrics").text
        assert 'resdet_model_files_skipped_total{reason="does_not_load"} 1.0' in metrics
        replacement = tmp_path / "replacement.onnx"
        shutil.copyfile(served, replacement)
        manifest = read_graph_manifest(replacement)
        write_manifest(replacement, {**manifest, "quantization": {**manifest["quantization"], "date": "2099-01-01"}})
        replacement.replace(served)
        deadline = time.monotonic() + 60
        while client.get("/models").json()["models"][0]["version"] == model["version"]:
            assert time.monotonic() < deadline, "the replaced int8 file was not reloaded"
            time.sleep(0.05)
        (reloaded,) = client.get("/models").json()["models"]
        assert reloaded["precision"] == "int8" and reloaded["runtime"]["quantization"]["date"] == "2099-01-01"
