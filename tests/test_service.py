"""The API end to end through its lifespan: every route, parameter bound and error, with real tiny classifiers."""

import io
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import (
    CLASSIFIER_CLASSES,
    PREPROCESSING,
    image_bytes,
    save_tiny_classifier,
    serving,
    wait_ready,
    warmed_up,
)
from PIL import Image
from pydantic import ValidationError
from torchvision.transforms.v2.functional import pil_to_tensor

import service.loading
from service import Settings, create_app, get_settings
from service.__main__ import main as service_main
from service.loading import ModelLoadError
from service.predictors import ClassifierPredictor
from service.settings import DEMO_MODEL_DIR

DEMO_DETECTOR = DEMO_MODEL_DIR / "demo_detector.safetensors"


def upload(data: bytes, name: str = "image.png", content_type: str = "image/png") -> dict:
    return {"file": (name, data, content_type)}


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny_classifier.safetensors"
    save_tiny_classifier(path)
    return path


def settings_for(classifier_path: Path, **overrides) -> Settings:
    # fp32 (BF16=auto would pick bf16 on a CPU with AVX512-BF16): answers are compared with the model run directly
    options = {"bf16": False} | overrides
    return Settings(classifier_checkpoint=classifier_path, detector_checkpoint=None, **options)


@pytest.fixture(scope="module")
def client(classifier_path):
    with serving(settings_for(classifier_path, max_batch=4, max_batch_wait_ms=2)) as test_client:
        yield test_client


def assert_still_serving(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.post("/classify", files=upload(image_bytes()))
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------------------ classify


def test_classify_matches_the_model_run_directly(client, classifier_path):
    data = image_bytes(seed=1)
    response = client.post("/classify", files=upload(data), params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "tiny_classifier" and body["model"]["version"].startswith("sha256:")
    assert body["image"] == {"width": 32, "height": 32}
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total", "batch_size"}

    model = save_tiny_classifier(classifier_path.parent / "same_weights.safetensors")
    pixels = pil_to_tensor(Image.open(io.BytesIO(data))).float().unsqueeze(0)
    mean, std = (
        torch.tensor(PREPROCESSING["mean"]).view(1, 3, 1, 1),
        torch.tensor(PREPROCESSING["std"]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        expected = model((pixels / 255 - mean) / std).softmax(dim=1)[0]
    top = expected.topk(3)
    assert [p["label"] for p in body["predictions"]] == top.indices.tolist()
    assert [p["name"] for p in body["predictions"]] == [CLASSIFIER_CLASSES[i] for i in top.indices.tolist()]
    for prediction, probability in zip(body["predictions"], top.values.tolist()):
        assert prediction["probability"] == pytest.approx(probability, abs=1e-5)


def test_classify_batch_answers_in_order_and_equals_single_requests(client):
    images = [image_bytes(seed=seed, size=(40 + seed, 36)) for seed in range(5)]
    response = client.post(
        "/classify/batch", files=[("files", (f"im{i}.png", data, "image/png")) for i, data in enumerate(images)]
    )
    assert response.status_code == 200, response.text
    batch = response.json()
    assert [item["image"]["width"] for item in batch] == [40 + seed for seed in range(5)]
    assert max(item["timing_ms"]["batch_size"] for item in batch) > 1  # queued together, run together
    for data, item in zip(images, batch):
        single = client.post("/classify", files=upload(data)).json()
        assert [p["label"] for p in single["predictions"]] == [p["label"] for p in item["predictions"]]
        for a, b in zip(single["predictions"], item["predictions"]):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_concurrent_requests_share_a_batch(classifier_path, batch_gate):
    app = create_app(settings_for(classifier_path, max_batch=4, max_batch_wait_ms=0))
    with TestClient(app) as client:
        wait_ready(client)
        # A first request holds the model; three more queue behind it and must then run as one batch.
        gate = batch_gate(app.state.service.registry.default("classifier").engine)
        results = [None] * 4

        def send(index):
            results[index] = client.post("/classify", files=upload(image_bytes(seed=index)))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        threads[0].start()
        gate.wait_entered()
        for thread in threads[1:]:
            thread.start()
        gate.wait_queued(3)
        gate.release()
        for thread in threads:
            thread.join()
        assert all(r.status_code == 200 for r in results)
        assert [r.json()["timing_ms"]["batch_size"] for r in results] == [1, 3, 3, 3]
        assert "resdet_batch_size_bucket" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("params", "status"),
    [({"top_k": 1}, 200), ({"top_k": 1000}, 200), ({"top_k": 0}, 422), ({"top_k": 1001}, 422),
     ({"top_k": "five"}, 422)],
)  # fmt: skip
def test_top_k_bounds(client, params, status):
    response = client.post("/classify", files=upload(image_bytes()), params=params)
    assert response.status_code == status, response.text
    if status == 200:
        assert len(response.json()["predictions"]) == min(params["top_k"], len(CLASSIFIER_CLASSES))
    else:
        assert "top_k" in response.json()["detail"]


def test_missing_file_field_is_422(client):
    response = client.post("/classify", files={"image": ("a.png", image_bytes(), "image/png")})
    assert response.status_code == 422 and "file" in response.json()["detail"]


# ------------------------------------------------------------------------------- error statuses


def hostile_uploads() -> dict[str, tuple[dict, int]]:
    from helpers import hostile_files  # the same generated files the decoder tests use

    cases = {name: (upload(data, name="hostile.png"), status) for name, (data, status) in hostile_files().items()}
    cases["declared text/plain"] = (upload(image_bytes(), name="notes.txt", content_type="text/plain"), 415)
    cases["declared text/html"] = (upload(b"<html></html>", name="page.html", content_type="text/html"), 415)
    cases["octet-stream image"] = (upload(image_bytes(), name="blob", content_type="application/octet-stream"), 200)
    cases["png + html polyglot"] = (upload(image_bytes() + b"<script>alert(1)</script>"), 200)
    return cases


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("name", list(hostile_uploads()))
def test_hostile_uploads_get_their_status_and_the_server_keeps_serving(client, name):
    files, status = hostile_uploads()[name]
    response = client.post("/classify", files=files)
    assert response.status_code == status, response.text
    if status != 200:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and files["file"][0] in detail  # names the file
        assert "<script>" not in response.text
    assert_still_serving(client)


def test_a_bad_file_in_a_batch_is_named_by_its_position(client):
    files = [
        ("files", ("good.png", image_bytes(), "image/png")),
        ("files", ("bad.png", b"\x89PNG broken", "image/png")),
    ]
    response = client.post("/classify/batch", files=files)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("files[1] (file 'bad.png')")


def test_body_over_max_upload_bytes_is_413_declared_or_streamed(classifier_path):
    app = create_app(settings_for(classifier_path, max_upload_bytes=50_000))
    big = image_bytes(size=(200, 200), seed=3)  # random pixels: PNG about 120 kB
    assert len(big) > 50_000
    with TestClient(app) as client:
        wait_ready(client)
        declared = client.post("/classify", files=upload(big))
        assert declared.status_code == 413 and "MAX_UPLOAD_BYTES=50000" in declared.json()["detail"]

        boundary = "resdetboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + big
            + f"\r\n--{boundary}--\r\n".encode()
        )
        chunks = (body[i : i + 8192] for i in range(0, len(body), 8192))  # no Content-Length: chunked
        streamed = client.post(
            "/classify", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert streamed.status_code == 413 and "MAX_UPLOAD_BYTES" in streamed.json()["detail"]
        assert_still_serving(client)
        metrics = client.get("/metrics").text
        assert 'status="413"' in metrics


def test_too_many_files_is_413(classifier_path):
    app = create_app(settings_for(classifier_path, max_files=2))
    with TestClient(app) as client:
        wait_ready(client)
        files = [("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)]
        response = client.post("/classify/batch", files=files)
        assert response.status_code == 413 and "MAX_FILES=2" in response.json()["detail"]


def test_full_queue_answers_503_with_retry_after(classifier_path, batch_gate):
    app = create_app(settings_for(classifier_path, max_batch=1, max_batch_wait_ms=0, max_queue=1, max_files=1,
                                  retry_after_s=7))  # fmt: skip
    with TestClient(app) as client:
        wait_ready(client)
        gate = batch_gate(app.state.service.registry.default("classifier").engine)
        results = {}

        def send(key):
            results[key] = client.post("/classify", files=upload(image_bytes()))

        first = threading.Thread(target=send, args=("running",))
        first.start()
        gate.wait_entered()
        second = threading.Thread(target=send, args=("queued",))
        second.start()
        gate.wait_queued(1)
        refused = client.post("/classify", files=upload(image_bytes()))
        gate.release()
        first.join()
        second.join()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
        assert "queue is full" in refused.json()["detail"]
        assert results["running"].status_code == 200 and results["queued"].status_code == 200
        gate.restore()
        assert_still_serving(client)


def test_a_batch_refused_in_part_is_503_and_its_queued_images_are_not_computed(classifier_path, batch_gate):
    app = create_app(settings_for(classifier_path, max_batch=1, max_batch_wait_ms=0, max_queue=2, max_files=2))
    with TestClient(app) as client:
        wait_ready(client)
        engine = app.state.service.registry.default("classifier").engine
        real_run, computed = engine.run_batch, []
        engine.run_batch = lambda items: computed.extend(items) or real_run(items)
        gate = batch_gate(engine)
        results = {}

        def send(key):
            results[key] = client.post("/classify", files=upload(image_bytes()))

        threads = [threading.Thread(target=send, args=(key,)) for key in ("running", "queued")]
        threads[0].start()
        gate.wait_entered()
        threads[1].start()
        gate.wait_queued(1)
        files = [("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(2)]
        refused = client.post("/classify/batch", files=files)  # one fits in the queue, the other does not
        gate.release()
        for thread in threads:
            thread.join()
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert results["running"].status_code == 200 and results["queued"].status_code == 200
        assert len(computed) == 2  # the batch's queued image was skipped, not computed


# ------------------------------------------------------------------------ readiness, health, models


def test_readyz_is_503_with_retry_after_until_warmed_up(classifier_path, monkeypatch):
    release = threading.Event()
    real_run = ClassifierPredictor.run

    def held_run(self, batch):
        release.wait(10)
        return real_run(self, batch)

    monkeypatch.setattr(ClassifierPredictor, "run", held_run)
    app = create_app(settings_for(classifier_path))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200  # alive while warming up
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "Retry-After" in not_ready.headers
        early = client.post("/classify", files=upload(image_bytes()))
        assert early.status_code == 503 and early.json()["detail"] == "models are warming up"
        release.set()
        wait_ready(client)
        assert client.get("/readyz").json() == {"status": "ready", "models": ["classifier"]}


def test_a_failing_warm_up_keeps_the_service_not_ready(classifier_path, monkeypatch):
    def broken(self, batch):
        raise RuntimeError("kernel missing")

    monkeypatch.setattr(ClassifierPredictor, "run", broken)
    with TestClient(create_app(settings_for(classifier_path))) as client:
        response = warmed_up(client)
        assert response.status_code == 503 and "kernel missing" in response.json()["detail"]
        assert client.post("/classify", files=upload(image_bytes())).status_code == 503


def test_a_warm_up_error_of_many_lines_reaches_readyz_as_its_first_line(classifier_path, monkeypatch, caplog):
    # a runtime's compile error can be pages of C++ source locations; clients get one line, the log all of it
    trace = "\n".join(f"src/plugins/intel_cpu/src/node.cpp:{n}: check failed" for n in range(200))

    def broken(self, batch):
        raise RuntimeError(f"\nException from src/inference/src/cpp/core.cpp:112:\n{trace}")

    monkeypatch.setattr(ClassifierPredictor, "run", broken)
    with TestClient(create_app(settings_for(classifier_path))) as client:
        detail = warmed_up(client).json()["detail"]
    assert "\n" not in detail and detail.endswith("RuntimeError: Exception from src/inference/src/cpp/core.cpp:112:")
    assert "node.cpp:199" in caplog.text  # the whole error is in the log


def test_models_lists_manifests_and_flags_demo_models(tmp_path):
    demo = tmp_path / "demo_classifier.safetensors"
    save_tiny_classifier(demo, provenance={"demo": True, "description": "CIFAR-10 demo.", "command": "make demo"})
    with TestClient(create_app(settings_for(demo))) as client:
        body = client.get("/models").json()
    (info,) = body["models"]
    assert info["role"] == "classifier" and info["demo"] is True and info["file"] == "demo_classifier.safetensors"
    assert (
        info["note"].startswith("DEMO MODEL") and "top1_error=0.9" in info["note"] and "CIFAR-10 demo." in info["note"]
    )
    assert info["class_names"] == CLASSIFIER_CLASSES and info["metrics"] == {"top1_error": 0.9}
    assert info["architecture"] == "cifar_resnet20" and info["architecture_kwargs"]["base_width"] == 4
    assert info["provenance"]["command"] == "make demo"
    assert body["serving"]["device"] == "cpu"


def test_not_configured_detector_is_503_without_retry_after(client):
    response = client.post("/detect", files=upload(image_bytes()))
    assert response.status_code == 503 and "DETECTOR_CHECKPOINT" in response.json()["detail"]
    assert "retry-after" not in response.headers


def test_metrics_count_requests_by_route_and_status(client):
    # both requests made here: the test must not lean on what earlier tests in the module sent
    assert client.post("/classify", files=upload(image_bytes())).status_code == 200
    assert client.post("/classify", files=upload(b"")).status_code == 400
    text = client.get("/metrics").text
    assert 'resdet_http_requests_total{method="POST",route="/classify",status="400"}' in text
    assert 'resdet_http_requests_total{method="POST",route="/classify",status="200"}' in text
    assert "resdet_http_request_duration_seconds_bucket" in text
    assert 'resdet_queue_depth{model="tiny_classifier"}' in text  # labelled by model name
    assert 'resdet_inference_duration_seconds_count{model="tiny_classifier"}' in text


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["detail"] == "Not Found"
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_the_page_names_its_icon_and_the_app_serves_it(client):
    # Browsers ask for /favicon.ico whether or not the page names it (it was a 404).
    page = client.get("/").text
    assert '<link rel="icon" href="favicon.ico"' in page
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    image = Image.open(io.BytesIO(icon.content))
    assert image.format == "ICO" and image.size[0] >= 16


# ------------------------------------------------------------------------------------ api key


def test_api_key_guards_inference_routes_only(classifier_path):
    with TestClient(create_app(settings_for(classifier_path, api_key="s3cret"))) as client:
        wait_ready(client)
        for path in ("/healthz", "/readyz", "/models", "/metrics"):
            assert client.get(path).status_code == 200, path
        missing = client.post("/classify", files=upload(image_bytes()))
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        # The key compared whole: a prefix, the key with anything after it, or no scheme are all strangers.
        strangers = ({"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "s3cret"},
                     {"X-API-Key": "s3cret-and-more"}, {"Authorization": "Bearer s3cretX"})  # fmt: skip
        for headers in strangers:
            assert client.post("/classify", files=upload(image_bytes()), headers=headers).status_code == 401, headers
        for headers in ({"Authorization": "Bearer s3cret"}, {"X-API-Key": "s3cret"}):
            assert client.post("/classify", files=upload(image_bytes()), headers=headers).status_code == 200
        assert (
            client.post("/classify/batch", files=[("files", ("a.png", image_bytes(), "image/png"))]).status_code == 401
        )


def test_api_key_is_checked_before_the_body_is_parsed(classifier_path):
    # A body FastAPI cannot parse: read first, it would give 400; checked first, a stranger gets 401.
    garbage = {"content": b"--x\r\nbroken part", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}
    with TestClient(create_app(settings_for(classifier_path, api_key="s3cret"))) as client:
        wait_ready(client)
        for path in ("/classify", "/detect"):
            stranger = client.post(path, **garbage)
            assert stranger.status_code == 401, (path, stranger.text)
            keyed = client.post(path, content=garbage["content"], headers={**garbage["headers"], "X-API-Key": "s3cret"})
            assert keyed.status_code in (400, 422), (path, keyed.text)


# ---------------------------------------------------------------------------- startup and settings


def test_startup_with_one_good_and_one_broken_checkpoint_serves_nothing(live_server, tmp_path, classifier_path):
    # A real uvicorn: the lifespan fails, so the server never listens, rather than serving /classify alone.
    broken = tmp_path / "broken_detector.safetensors"
    broken.write_bytes(DEMO_DETECTOR.read_bytes()[:5000])
    with pytest.raises(RuntimeError, match="did not start"):
        live_server(create_app(Settings(classifier_checkpoint=classifier_path, detector_checkpoint=broken)))
    with pytest.raises(ModelLoadError, match="DETECTOR_CHECKPOINT.*broken_detector.safetensors"):
        with TestClient(create_app(Settings(classifier_checkpoint=classifier_path, detector_checkpoint=broken))):
            pass


def test_a_model_failing_its_warm_up_keeps_the_other_model_unserved(classifier_path, monkeypatch):
    from service.predictors import DetectorPredictor

    def broken(self, batch):
        raise RuntimeError("detector kernel missing")

    monkeypatch.setattr(DetectorPredictor, "run", broken)
    with TestClient(
        create_app(Settings(classifier_checkpoint=classifier_path, detector_checkpoint=DEMO_DETECTOR))
    ) as client:
        deadline = time.monotonic() + 60
        while "failed" not in client.get("/readyz").json().get("detail", ""):
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.02)
        assert "detector kernel missing" in client.get("/readyz").json()["detail"]
        refused = client.post("/classify", files=upload(image_bytes()))
        assert refused.status_code == 503 and "detector" in refused.json()["detail"]


def demo_answers(**precision) -> tuple[list[dict], list[dict]]:
    """The demo models' detections (threshold 0) and classifier probabilities (all classes) for one image."""
    data = image_bytes(size=(96, 80), seed=1)
    with TestClient(create_app(Settings(max_batch=1, **precision))) as client:
        wait_ready(client, timeout=120)
        detections = client.post("/detect", files=upload(data), params={"score_threshold": 0, "max_detections": 20})
        predictions = client.post("/classify", files=upload(data), params={"top_k": 1000})
    assert detections.status_code == 200 and predictions.status_code == 200
    return detections.json()["detections"], sorted(predictions.json()["predictions"], key=lambda p: p["label"])


@pytest.fixture(scope="module")
def reference_answers() -> tuple[list[dict], list[dict]]:
    """fp32, no BN folding, no channels_last: the numerics every other setting is compared with."""
    return demo_answers(optimize=False, bf16=False)


def test_optimize_alone_keeps_fp32_numerics(reference_answers):
    # OPTIMIZE folds BN and reorders memory: the same fp32 answer to rounding, on both models.
    detections, predictions = demo_answers(optimize=True, bf16=False)
    expected_detections, expected_predictions = reference_answers
    assert len(detections) == len(expected_detections) == 20
    for detection, expected in zip(detections, expected_detections):
        assert detection["label"] == expected["label"]
        assert detection["score"] == pytest.approx(expected["score"], abs=1e-5)
        assert detection["box"] == pytest.approx(expected["box"], abs=0.05)
    assert [p["probability"] for p in predictions] == pytest.approx(
        [p["probability"] for p in expected_predictions], abs=1e-5
    )


def test_bf16_setting_changes_the_numerics_of_both_models(reference_answers):
    # bf16 keeps 8 mantissa bits: scores and probabilities move by about 1e-3, far above fp32 rounding.
    detections, predictions = demo_answers(optimize=False, bf16=True)
    expected_detections, expected_predictions = reference_answers
    scores, expected_scores = (sorted(d["score"] for d in answer) for answer in (detections, expected_detections))
    assert max(abs(a - b) for a, b in zip(scores, expected_scores)) > 1e-4
    probabilities = [p["probability"] for p in predictions]
    assert sum(probabilities) == pytest.approx(1, abs=1e-2)
    assert max(abs(p - q["probability"]) for p, q in zip(probabilities, expected_predictions)) > 1e-4


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_whether_the_device_computes_bf16_natively(monkeypatch, native):
    # BF16=auto: bf16 where the processor has it in hardware (AVX512-BF16/AMX, CUDA), fp32 where it is emulated
    monkeypatch.setenv("BF16", "auto")
    monkeypatch.setattr(service.loading, "native_bf16", lambda device: native)
    settings = Settings(max_batch=1)
    assert settings.bf16 == "auto"
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=120)
        served = client.get("/models").json()["models"]
    assert {model["precision"] for model in served} == {"bfloat16" if native else "float32"}
    assert len(served) == 2


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("0", False), ("auto", "auto"), ("AUTO", "auto"), (" Auto ", "auto")]
)
def test_bf16_setting_takes_a_boolean_or_auto(monkeypatch, value, expected):
    monkeypatch.setenv("BF16", value)
    assert Settings().bf16 == expected
    for wrong in ("fast", ""):
        monkeypatch.setenv("BF16", wrong)
        with pytest.raises(ValidationError, match="BF16 must be auto, true or false"):
            Settings()


def test_startup_fails_naming_a_missing_or_corrupt_checkpoint(tmp_path, classifier_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(ModelLoadError, match="CLASSIFIER_CHECKPOINT: checkpoint not found: .*nowhere.safetensors"):
        with TestClient(create_app(settings_for(missing))):
            pass
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(classifier_path.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="corrupt.safetensors"):
        with TestClient(create_app(settings_for(corrupt))):
            pass


def test_settings_come_from_the_environment_or_from_create_app(monkeypatch, tmp_path, classifier_path):
    monkeypatch.setenv("MAX_BATCH", "3")
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("DETECTOR_CHECKPOINT", "")
    monkeypatch.setenv("CLASSIFIER_CHECKPOINT", str(classifier_path))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert (settings.max_batch, settings.port, settings.host) == (3, 9123, "0.0.0.0")
        assert settings.detector_checkpoint is None and settings.classifier_checkpoint == classifier_path
        with TestClient(create_app()) as client:  # no explicit settings: the environment's
            assert client.get("/models").json()["serving"]["max_batch"] == 3
        app = create_app(settings_for(classifier_path, max_batch=5, api_key="k"))  # given settings win, everywhere
        assert not app.dependency_overrides  # kept on app.state, not in the test hook
        with TestClient(app) as client:
            assert client.get("/models").json()["serving"]["max_batch"] == 5
            assert client.post("/classify", files=upload(image_bytes())).status_code == 401
    finally:
        get_settings.cache_clear()
    with pytest.raises(ValueError, match="MAX_FILES"):
        Settings(max_files=10, max_queue=5)


def test_main_command_names_the_missing_model_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DETECTOR_CHECKPOINT", str(tmp_path / "absent_detector.safetensors"))
    monkeypatch.setenv("CLASSIFIER_CHECKPOINT", "")
    get_settings.cache_clear()
    try:
        assert service_main([]) == 2
    finally:
        get_settings.cache_clear()
    assert "DETECTOR_CHECKPOINT: checkpoint not found" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- OpenAPI


def test_openapi_documents_fields_parameters_and_errors(client):
    spec = client.get("/openapi.json").json()
    for path in ("/detect", "/detect/batch", "/detect/annotated", "/classify", "/classify/batch"):
        operation = spec["paths"][path]["post"]
        for status in ("400", "401", "413", "415", "422", "503"):
            assert status in operation["responses"], (path, status)
            assert operation["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/ErrorResponse"
            )
        assert all(parameter.get("description") for parameter in operation["parameters"]), path
    for path in ("/healthz", "/readyz", "/models", "/metrics"):
        assert "get" in spec["paths"][path]
    schemas = spec["components"]["schemas"]
    documented = ("Detection", "DetectResponse", "ClassifyResponse", "Prediction", "Timing", "ModelRef", "ImageSize",
                  "ModelInfo", "ModelsResponse", "ServingInfo", "Health", "Readiness", "ErrorResponse")  # fmt: skip
    for schema in documented:
        fields = schemas[schema]["properties"]
        assert all("description" in field or "$ref" in field or "allOf" in field for field in fields.values()), schema
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


def test_main_command_serves_on_host_and_port(classifier_path):
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "CLASSIFIER_CHECKPOINT": str(classifier_path),
           "DETECTOR_CHECKPOINT": ""}  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=repo, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "server not ready in 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{port}/classify", files=upload(image_bytes()), timeout=30)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 5
        assert "server" not in response.headers  # no server software or version named to a stranger
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # uvicorn shuts down through the lifespan on SIGTERM (then re-raises the signal as its exit status)
    assert "Application shutdown complete." in stderr.decode()


def test_saved_checkpoints_are_readable_by_other_users(classifier_path):
    import stat

    # The container runs as an unprivileged user that reads models from a mounted folder.
    assert stat.S_IMODE(classifier_path.stat().st_mode) & 0o004


def test_device_selection_and_thread_setting(classifier_path):
    from service.loading import select_device

    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="DEVICE='gpu0'"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            select_device("cuda")
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            with TestClient(create_app(settings_for(classifier_path, device="cuda:0"))):
                pass
    app = create_app(settings_for(classifier_path, torch_threads=1))
    with TestClient(app) as client:
        wait_ready(client)
        engine = app.state.service.registry.default("classifier").engine
        real_run, seen = engine.run_batch, []
        engine.run_batch = lambda items: seen.append(torch.get_num_threads()) or real_run(items)
        assert client.post("/classify", files=upload(image_bytes())).status_code == 200
    assert seen == [1]  # in the inference thread, where it matters
