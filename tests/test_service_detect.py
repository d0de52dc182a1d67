"""POST /detect and friends with a real, tiny, randomly initialised detector saved by detection.save_detector."""

import io
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import CLASS_NAMES, SERVED_TINY, noise_image_bytes, serving, wait_ready
from PIL import Image

from detection import build_detector, load_detector, save_detector
from detection.decoding import decode_image
from detection.images import to_float_image
from detection.predictor import Predictor
from service import Settings, create_app


def upload(data: bytes, name="scene.png", content_type="image/png") -> dict:
    return {"file": (name, data, content_type)}


@pytest.fixture(scope="module")
def detector_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_detector(class_names=CLASS_NAMES, **SERVED_TINY)
    path = tmp_path_factory.mktemp("models") / "tiny_detector.safetensors"
    save_detector(path, model=model, metrics={"mAP@0.5": 0.0123}, provenance={"description": "random weights"})
    return path


@pytest.fixture(scope="module")
def reference(detector_path):
    """The same checkpoint loaded directly: what the service must answer."""
    return load_detector(detector_path)[0]


def settings_for(detector_path: Path, **overrides) -> Settings:
    # fp32 (BF16=auto would pick bf16 on a CPU with AVX512-BF16): answers are compared with the detector run directly
    options = {"optimize": False, "bf16": False, "max_batch": 4, "max_batch_wait_ms": 2} | overrides
    return Settings(detector_checkpoint=detector_path, classifier_checkpoint=None, **options)


@pytest.fixture(scope="module")
def client(detector_path):
    with serving(settings_for(detector_path)) as test_client:
        yield test_client


def direct(reference, data: bytes, *, score_threshold: float, max_detections: int) -> dict:
    """What the service promises: the detector's own forward pass on the decoded image."""
    pixels = torch.from_numpy(decode_image(data).pixels).permute(2, 0, 1)
    with torch.no_grad():
        _, (output,) = reference.eval()(
            [to_float_image(pixels)], score_threshold=score_threshold, max_detections=max_detections
        )
    return {**output, "names": [CLASS_NAMES[label - 1] for label in output["labels"].tolist()]}


def assert_same_detections(answer: dict, expected: dict) -> None:
    assert [d["name"] for d in answer["detections"]] == expected["names"]
    assert [d["label"] for d in answer["detections"]] == expected["labels"].tolist()
    for detection, box, score in zip(answer["detections"], expected["boxes"].tolist(), expected["scores"].tolist()):
        assert detection["score"] == pytest.approx(score, abs=1e-5)
        assert detection["box"] == pytest.approx(box, abs=0.02)


def test_detect_answers_what_the_detector_computes(client, reference):
    data = noise_image_bytes(seed=1)
    response = client.post("/detect", files=upload(data), params={"score_threshold": 0.0, "max_detections": 20})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "tiny_detector" and body["image"] == {"width": 80, "height": 60}
    assert 0 < len(body["detections"]) <= 20
    assert_same_detections(body, direct(reference, data, score_threshold=0.0, max_detections=20))
    for detection in body["detections"]:
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 60
        assert detection["name"] == CLASS_NAMES[detection["label"] - 1]


def test_threshold_and_cap_cut_the_answer(client):
    data = noise_image_bytes(seed=2)
    everything = client.post("/detect", files=upload(data), params={"score_threshold": 0.0, "max_detections": 50})
    scores = [d["score"] for d in everything.json()["detections"]]
    assert scores == sorted(scores, reverse=True) and len(scores) > 3
    threshold = scores[len(scores) // 2]
    cut = client.post("/detect", files=upload(data), params={"score_threshold": threshold, "max_detections": 2})
    cut_scores = [d["score"] for d in cut.json()["detections"]]
    assert cut_scores == pytest.approx(scores[:2], abs=1e-6) and all(s >= threshold for s in cut_scores)


@pytest.mark.parametrize(
    ("params", "status"),
    [({"score_threshold": 0}, 200), ({"score_threshold": 1}, 200), ({"score_threshold": -0.01}, 422),
     ({"score_threshold": 1.01}, 422), ({"max_detections": 1}, 200), ({"max_detections": 1000}, 200),
     ({"max_detections": 0}, 422), ({"max_detections": 1001}, 422), ({"score_threshold": "high"}, 422)],
)  # fmt: skip
def test_parameter_bounds(client, params, status):
    response = client.post("/detect", files=upload(noise_image_bytes()), params=params)
    assert response.status_code == status, response.text
    if status == 422:
        assert next(iter(params)) in response.json()["detail"]


def test_requests_sharing_a_batch_each_get_their_own_thresholds(detector_path, reference, batch_gate):
    app = create_app(settings_for(detector_path, max_batch=3, max_batch_wait_ms=0))
    with TestClient(app) as client:
        wait_ready(client)
        # Two images of one input shape (they share a forward pass) and one of another shape.
        asks = [
            (0.0, 7, noise_image_bytes(seed=3)),
            (0.26, 2, noise_image_bytes(seed=4, size=(50, 90))),
            (0.2, 100, noise_image_bytes(seed=5, size=(81, 61))),
        ]
        answers = [None] * len(asks)

        def send(index):
            threshold, cap, data = asks[index]
            params = {"score_threshold": threshold, "max_detections": cap}
            answers[index] = client.post("/detect", files=upload(data), params=params).json()

        # A first request holds the model while the three asks queue; released, they run as one batch.
        gate = batch_gate(app.state.service.registry.default("detector").engine)
        blocker = threading.Thread(target=client.post, args=("/detect",), kwargs={"files": upload(noise_image_bytes())})
        blocker.start()
        gate.wait_entered()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(asks))]
        for thread in threads:
            thread.start()
        gate.wait_queued(len(asks))
        gate.release()
        for thread in [blocker, *threads]:
            thread.join()
    assert [answer["timing_ms"]["batch_size"] for answer in answers] == [3, 3, 3]
    for (threshold, cap, data), answer in zip(asks, answers):
        assert_same_detections(answer, direct(reference, data, score_threshold=threshold, max_detections=cap))


@pytest.mark.parametrize(
    "size", [(80, 60), (81, 61), (50, 90), (1, 1), (640, 480), (97, 33), (1000, 10), (4000, 8), (129, 1), (8, 4000)]
)
def test_an_image_at_the_detectors_input_size_runs_as_it_is(reference, size):
    width, height = size
    input_size = reference.transform.resized_size(height, width)
    assert min(input_size) >= 1 and max(input_size) <= 128
    image = torch.rand(3, *input_size)
    with torch.no_grad():
        batch, _ = reference.eval().transform([image])
    assert batch.image_sizes == [input_size]  # not resized a second time
    prepared = Predictor(reference, device="cpu", precision="fp32", optimize=False).prepare(image)
    assert prepared.padded_shape == tuple(batch.tensors.shape[-2:])
    assert torch.equal(prepared.pixels, batch.tensors[0, :, : input_size[0], : input_size[1]])


def test_detect_batch_answers_in_order(client, reference):
    images = [noise_image_bytes(seed=10 + i, size=(60 + 10 * i, 70)) for i in range(3)]
    files = [("files", (f"im{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = client.post("/detect/batch", files=files, params={"score_threshold": 0.1, "max_detections": 5})
    assert response.status_code == 200, response.text
    for data, answer, i in zip(images, response.json(), range(3)):
        assert answer["image"]["width"] == 60 + 10 * i
        assert_same_detections(answer, direct(reference, data, score_threshold=0.1, max_detections=5))


def test_boxes_are_in_the_displayed_orientation(client, reference):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 80x60, displayed rotated to 60x80
    data = noise_image_bytes(seed=6, image_format="JPEG", exif=exif, quality=95)
    response = client.post("/detect", files=upload(data, name="phone.jpg", content_type="image/jpeg"),
                           params={"score_threshold": 0.0, "max_detections": 10})  # fmt: skip
    body = response.json()
    assert body["image"] == {"width": 60, "height": 80}
    assert_same_detections(body, direct(reference, data, score_threshold=0.0, max_detections=10))
    assert all(d["box"][2] <= 60 and d["box"][3] <= 80 for d in body["detections"])


@pytest.mark.parametrize(("image_format", "signature"), [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8")])
def test_annotated_image(client, image_format, signature):
    data = noise_image_bytes(seed=7, size=(90, 70))
    response = client.post(
        "/detect/annotated",
        files=upload(data),
        params={"score_threshold": 0.0, "max_detections": 3, "format": image_format},
    )
    assert response.status_code == 200 and response.headers["content-type"] == f"image/{image_format}"
    assert response.content.startswith(signature) and response.headers["x-detections"] == "3"
    drawn = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert drawn.size == (90, 70)
    original = Image.open(io.BytesIO(data)).convert("RGB")
    changed = sum(a != b for a, b in zip(drawn.tobytes(), original.tobytes()))
    assert changed > 100  # boxes were drawn
    bad = client.post("/detect/annotated", files=upload(data), params={"format": "gif"})
    assert bad.status_code == 422


def test_hostile_upload_to_detect_and_the_server_keeps_serving(client):
    for data, status in ((b"", 400), (b"<html>", 400), (noise_image_bytes()[:100], 400)):
        assert client.post("/detect", files=upload(data)).status_code == status
    assert (
        client.post("/detect", files=upload(noise_image_bytes(), name="a.txt", content_type="text/plain")).status_code
        == 415
    )
    assert client.post("/detect", files=upload(noise_image_bytes())).status_code == 200


def test_models_describes_the_detector(client):
    (info,) = client.get("/models").json()["models"]
    assert info["role"] == "detector" and info["kind"] == "detector" and info["architecture"] == "faster_rcnn"
    assert info["class_names"] == CLASS_NAMES and info["metrics"] == {"mAP@0.5": 0.0123}
    assert info["demo"] is False and "mAP@0.5=0.0123" in info["note"]
    assert info["architecture_kwargs"]["backbone"] == "resnet18"


def test_optimized_detector_gives_the_same_answer(detector_path, reference):
    data = noise_image_bytes(seed=8)
    with TestClient(create_app(settings_for(detector_path, optimize=True))) as client:
        wait_ready(client)
        body = client.post("/detect", files=upload(data), params={"score_threshold": 0.0, "max_detections": 5}).json()
    expected = direct(reference, data, score_threshold=0.0, max_detections=5)
    assert len(expected["names"]) == 5  # threshold 0: real detections, not two empty lists
    assert [d["name"] for d in body["detections"]] == expected["names"]
    for detection, box in zip(body["detections"], expected["boxes"].tolist(), strict=True):
        assert detection["box"] == pytest.approx(box, abs=0.05)


def test_a_classifier_checkpoint_as_detector_fails_startup_naming_it(tmp_path):
    from backbone import create_model
    from backbone.serving_checkpoint import save_classifier
    from service.loading import ModelLoadError

    wrong = tmp_path / "a_classifier.safetensors"
    save_classifier(wrong, model=create_model("cifar_resnet20", base_width=4), architecture="cifar_resnet20",
                    class_names=[str(i) for i in range(10)])  # fmt: skip
    with pytest.raises(ModelLoadError, match="DETECTOR_CHECKPOINT.*a_classifier.safetensors.*not a detector"):
        with TestClient(create_app(settings_for(wrong))):
            pass


def test_torchvision_weight_file_is_converted_on_load(tmp_path):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    torch.manual_seed(0)
    torchvision_model = FasterRCNN(
        resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3),
        box_head=TwoMLPHead(256 * 7 * 7, 32),
        box_predictor=FastRCNNPredictor(32, 3),
    )
    path = tmp_path / "fasterrcnn_tiny.pth"
    torch.save(torchvision_model.state_dict(), path)
    # No warm-up and no request: the converted model runs at torchvision's 800-pixel input, seconds per
    # image here; the conversion's numerics are tested in the detection package.
    with TestClient(create_app(settings_for(path, warmup=False))) as client:
        wait_ready(client)
        info = client.get("/models").json()["models"][0]
    assert info["name"] == "fasterrcnn_tiny" and info["provenance"]["converted_from"] == "fasterrcnn_tiny.pth"
    assert info["architecture_kwargs"]["backbone"] == "resnet18" and info["class_names"] == ["class_1", "class_2"]
