"""The request options of the detection routes (classes, iou_threshold, box_format, normalized), unknown query
parameters, raw image bodies, the annotated picture, CORS and the OpenAPI document, with the demo detector."""

import asyncio
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import serving, wait_ready
from PIL import Image, ImageColor
from torchvision.ops import box_iou

from detection.annotate import class_colour, label_font_size
from detection.data.synthetic_shapes import render_image
from detection.decoding import decode_image
from detection.predictor import Predictor
from service import Settings, create_app
from service.form_declared_image import SNIFFED_BYTES, FormDeclaredImageMiddleware, starts_like_an_image
from service.predictors import DetectorPredictor, DetectRequest
from service.settings import DEMO_MODEL_DIR
from tests.conftest import SHARED_DATA

DEMO_DETECTOR = DEMO_MODEL_DIR / "demo_detector.safetensors"
DEMO_CLASSIFIER = DEMO_MODEL_DIR / "demo_classifier.safetensors"
LOW = {"score_threshold": 0.05}  # enough boxes, of several classes, some overlapping, to tell options apart


@pytest.fixture(scope="module")
def shapes_jpeg() -> bytes:
    """A JPEG of four shapes the demo detector finds (and, at a low threshold, a few more boxes)."""
    image, _ = render_image(np.random.default_rng(1), image_size=384, max_objects=4)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def started(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings))
    client.__enter__()
    wait_ready(client)
    return client


@pytest.fixture(scope="module")
def client():
    with serving(
        Settings(detector_checkpoint=DEMO_DETECTOR, classifier_checkpoint=DEMO_CLASSIFIER, optimize=False)
    ) as client:
        yield client


def detect(client, data: bytes, path: str = "/detect", **params):
    return client.post(path, params=params, files={"file": ("shapes.jpg", data, "image/jpeg")})


def same_class_overlaps(detections: list[dict]) -> float:
    """The largest IoU between two boxes of one class."""
    largest = 0.0
    for index, first in enumerate(detections):
        for second in detections[index + 1 :]:
            if first["label"] == second["label"]:
                iou = box_iou(torch.tensor([first["box"]]), torch.tensor([second["box"]]))
                largest = max(largest, float(iou))
    return largest


# --- classes -------------------------------------------------------------------------------------------------


def test_classes_by_name_id_repeated_or_comma_separated_keep_only_those(client, shapes_jpeg):
    everything = detect(client, shapes_jpeg, **LOW).json()["detections"]
    assert {"star", "circle", "square"} <= {d["name"] for d in everything}
    expected = [d for d in everything if d["name"] in ("star", "circle")]
    by_names = client.post("/detect?score_threshold=0.05&classes=star&classes=circle",
                           files={"file": ("s.jpg", shapes_jpeg, "image/jpeg")})  # fmt: skip
    by_ids_and_commas = detect(client, shapes_jpeg, classes="4, 1", **LOW)
    assert by_names.status_code == by_ids_and_commas.status_code == 200
    assert by_names.json()["detections"] == by_ids_and_commas.json()["detections"] == expected


def test_a_class_filter_is_applied_before_max_detections(client, shapes_jpeg):
    """The top detection of a class is found even when max_detections of other classes score above it."""
    everything = detect(client, shapes_jpeg, **LOW).json()["detections"]
    last_class = everything[-1]["name"]
    first_of_it = next(d for d in everything if d["name"] == last_class)
    assert everything.index(first_of_it) > 0  # other classes score above it
    answer = detect(client, shapes_jpeg, classes=last_class, max_detections=1, **LOW).json()["detections"]
    assert answer == [first_of_it]


def test_an_unknown_class_is_a_422_listing_the_models_classes(client, shapes_jpeg):
    response = detect(client, shapes_jpeg, classes="circle,dog")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "'dog'" in detail and "1='circle'" in detail and "4='star'" in detail
    assert detect(client, shapes_jpeg, classes="9").status_code == 422  # label ids run 1..4


# --- iou_threshold -------------------------------------------------------------------------------------------


def test_iou_threshold_sets_the_per_class_nms_overlap(client, shapes_jpeg):
    default = detect(client, shapes_jpeg, **LOW).json()["detections"]
    loose = detect(client, shapes_jpeg, iou_threshold=0.9, **LOW).json()["detections"]
    strict = detect(client, shapes_jpeg, iou_threshold=0.2, **LOW).json()["detections"]
    assert len(loose) > len(default) >= len(strict) > 0
    assert 0.5 < same_class_overlaps(loose) <= 0.9
    assert same_class_overlaps(strict) <= 0.2
    assert detect(client, shapes_jpeg, iou_threshold=1.5).status_code == 422


def test_requests_with_different_iou_thresholds_in_one_batch_get_their_own_answers(shapes_jpeg):

    predictor = DetectorPredictor(Predictor.from_checkpoint(DEMO_DETECTOR, device="cpu", precision="fp32"))
    image = predictor.queueable(decode_image(shapes_jpeg))
    requests = [
        DetectRequest(image=image, score_threshold=0.05, max_detections=100, iou_threshold=iou)
        for iou in (0.9, 0.2, None)
    ]
    together = predictor.run(requests)
    alone = [predictor.run([request])[0] for request in requests]
    assert together == alone
    assert len(together[0]) > len(together[1])


# --- box formats ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box_format", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("normalized", [False, True])
def test_box_formats_write_the_same_boxes(client, shapes_jpeg, box_format, normalized):
    pixels = detect(client, shapes_jpeg, **LOW).json()
    width, height = pixels["image"]["width"], pixels["image"]["height"]
    answer = detect(client, shapes_jpeg, box_format=box_format, normalized=str(normalized).lower(), **LOW).json()
    assert len(answer["detections"]) == len(pixels["detections"]) > 0
    scale = np.array([width, height, width, height]) if normalized else np.ones(4)
    for written, reference in zip(answer["detections"], pixels["detections"]):
        x1, y1, x2, y2 = reference["box"]
        expected = {
            "xyxy": [x1, y1, x2, y2],
            "xywh": [x1, y1, x2 - x1, y2 - y1],
            "cxcywh": [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1],
        }[box_format]
        assert np.array(written["box"]) * scale == pytest.approx(expected, abs=0.011)
        if normalized:
            assert all(0 <= value <= 1 for value in written["box"])


def test_batch_takes_the_same_options(client, shapes_jpeg):
    files = [("files", ("a.jpg", shapes_jpeg, "image/jpeg")), ("files", ("b.jpg", shapes_jpeg, "image/jpeg"))]
    params = {"classes": "star", "box_format": "xywh", "normalized": "true", "iou_threshold": 0.9, **LOW}
    batch = client.post("/detect/batch", params=params, files=files)
    single = detect(client, shapes_jpeg, **params)
    assert batch.status_code == 200
    expected = single.json()["detections"]
    for answer in batch.json():  # a batch of two runs one forward pass: equal up to float rounding
        assert [d["label"] for d in answer["detections"]] == [d["label"] for d in expected]
        boxes = np.array([d["box"] for d in answer["detections"]])
        assert boxes == pytest.approx(np.array([d["box"] for d in expected]), abs=1e-4)
    assert {d["name"] for d in single.json()["detections"]} == {"star"}


# --- unknown query parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "named", "listed"),
    [
        ("/detect", "score=0.3", "'score'", "score_threshold"),
        ("/detect/batch", "iou=0.3", "'iou'", "iou_threshold"),
        ("/detect/annotated", "classes=star&fmt=png", "'fmt'", "format"),
        ("/classify", "topk=3", "'topk'", "top_k"),
    ],
)
def test_an_unknown_query_parameter_is_a_422_naming_it_and_the_allowed_ones(
    client, shapes_jpeg, path, query, named, listed
):
    field = "files" if path.endswith("batch") else "file"
    response = client.post(f"{path}?{query}", files={field: ("s.jpg", shapes_jpeg, "image/jpeg")})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert named in detail and listed in detail and "unknown query parameter" in detail


HOSTILE_VALUES = ["\u00b9", "\u0663", "\uff11", "9" * 4301, "", "nan", "1e999", "\x00", "1" * 50]
QUERY_PARAMETERS = {
    "/detect": ["classes", "score_threshold", "max_detections", "iou_threshold", "box_format", "normalized", "model"],
    "/detect/batch": ["classes", "max_detections", "model"],
    "/detect/annotated": ["classes", "format", "model"],
    "/classify": ["top_k", "model"],
    "/classify/batch": ["top_k"],
}


@pytest.mark.parametrize("path", sorted(QUERY_PARAMETERS))
def test_hostile_query_values_are_a_json_4xx_with_the_request_id_never_a_500(client, shapes_jpeg, path):
    field = "files" if path.endswith("batch") else "file"
    answers = {}
    for name in QUERY_PARAMETERS[path]:
        for value in HOSTILE_VALUES:
            response = client.post(path, params={name: value}, files={field: ("s.jpg", shapes_jpeg, "image/jpeg")})
            if response.status_code != 200:  # `classes=` (empty list item) or `normalized=1`... may be fine
                answers[(name, value[:20])] = (response.status_code, response.json()["request_id"])
                assert response.json()["request_id"] == response.headers["x-request-id"]
    assert all(400 <= status < 500 for status, _ in answers.values()), answers
    # A Unicode digit or a number of 4,301 digits is no label id: refused by name, not read as one
    for value in ["\u00b9", "\u0663", "9" * 4301]:
        response = client.post(path, params={"classes": value}, files={field: ("s.jpg", shapes_jpeg, "image/jpeg")})
        if path.startswith("/detect"):
            assert response.status_code == 422 and "unknown class" in response.json()["detail"]
            assert len(response.json()["detail"]) < 400  # the 4,301 digits are not echoed whole


@pytest.mark.parametrize(("path", "name"), [("/detect", "max_detections"), ("/classify", "top_k")])
def test_a_parameter_taking_one_value_given_twice_is_a_422_naming_it(client, shapes_jpeg, path, name):
    response = client.post(f"{path}?{name}=5&{name}=500", files={"file": ("s.jpg", shapes_jpeg, "image/jpeg")})
    assert response.status_code == 422
    assert f"'{name}' given more than once" in response.json()["detail"]
    repeated_list = detect(client, shapes_jpeg, classes=["square", "circle"])  # a list parameter may repeat
    assert repeated_list.status_code == 200, repeated_list.text


# --- raw bodies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/detect", "/classify", "/detect/annotated"])
def test_a_raw_image_body_answers_as_the_multipart_form(client, shapes_jpeg, path):
    raw = client.post(path, content=shapes_jpeg, headers={"Content-Type": "image/jpeg"})
    form = detect(client, shapes_jpeg, path)
    assert raw.status_code == form.status_code == 200
    if path == "/detect/annotated":
        assert raw.content == form.content
    else:
        key = "detections" if path == "/detect" else "predictions"
        assert raw.json()[key] == form.json()[key]


def photograph_sized_jpeg() -> bytes:
    """bus.jpg (487 KB) beside the repository, else a noisy JPEG of the same order: its bytes hold
    thousands of '&', which parsed as a form are more than the 1000 fields FastAPI allows."""
    bus = SHARED_DATA / "demo-images" / "bus.jpg"
    if bus.exists():
        return bus.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, size=(1080, 810, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/detect", "/classify"])
def test_an_image_body_declared_as_a_form_is_served_at_any_size(client, path):
    # curl --data-binary @bus.jpg without -H 'Content-Type: ...' declares application/x-www-form-urlencoded
    # (was: 400 "Too many fields. Maximum number of fields is 1000." for a photograph, 415 for a small one).
    photograph = photograph_sized_jpeg()
    assert len(photograph) > 300_000 and photograph.count(b"&") > 1000
    as_form = client.post(path, content=photograph, headers={"Content-Type": "application/x-www-form-urlencoded"})
    as_jpeg = client.post(path, content=photograph, headers={"Content-Type": "image/jpeg"})
    assert as_form.status_code == as_jpeg.status_code == 200, as_form.text
    key = "detections" if path == "/detect" else "predictions"
    assert as_form.json()[key] == as_jpeg.json()[key]


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_is_recognised_by_its_first_bytes(client, shapes_jpeg, image_format):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(shapes_jpeg)).save(buffer, format=image_format)
    body = buffer.getvalue()
    assert starts_like_an_image(body[:SNIFFED_BYTES])
    response = client.post("/detect", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text


def test_a_body_arriving_in_small_chunks_reaches_the_app_whole(shapes_jpeg):
    received = []

    async def app(scope, receive, send):
        received.append(dict(scope["headers"])[b"content-type"])
        while True:
            message = await receive()
            received.append(message["body"])
            if not message["more_body"]:
                return

    chunks = [shapes_jpeg[:2], shapes_jpeg[2:5], shapes_jpeg[5:]]
    messages = [{"type": "http.request", "body": chunk, "more_body": index < 2} for index, chunk in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "headers": [(b"content-type", b"application/x-www-form-urlencoded")]}
    asyncio.run(FormDeclaredImageMiddleware(app)(scope, receive, None))
    assert received == [b"application/octet-stream", *chunks]


def test_a_raw_body_meets_the_same_limits(shapes_jpeg):
    limited = started(
        Settings(detector_checkpoint=DEMO_DETECTOR, classifier_checkpoint=None, optimize=False,
                 max_upload_bytes=len(shapes_jpeg) - 1)
    )  # fmt: skip
    try:
        too_large = limited.post("/detect", content=shapes_jpeg, headers={"Content-Type": "image/jpeg"})
        assert too_large.status_code == 413 and "MAX_UPLOAD_BYTES" in too_large.json()["detail"]
        text = limited.post("/detect", content=b"hello", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415 and "'text/plain'" in text.json()["detail"]
        # A form-declared body that is not an image: say how to send an image.
        form = limited.post(
            "/detect", content=b"a=1&b=2", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert form.status_code == 415 and "Content-Type: image/jpeg" in form.json()["detail"]
        empty = limited.post("/detect", content=b"", headers={"Content-Type": "image/jpeg"})
        assert empty.status_code == 422 and "multipart field `file`" in empty.json()["detail"]
        broken = limited.post("/detect", content=b"\xff\xd8\xff\xe0 not really", headers={"Content-Type": "image/jpeg"})
        assert broken.status_code == 400
    finally:
        limited.__exit__(None, None, None)


# --- /detect/annotated ---------------------------------------------------------------------------------------


def test_annotated_labels_sit_on_a_filled_background_scaled_to_the_image(client, shapes_jpeg):
    big = Image.open(io.BytesIO(shapes_jpeg)).resize((1536, 1536))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    answer = detect(client, buffer.getvalue(), path="/detect", **LOW).json()["detections"]
    picture = client.post("/detect/annotated", params=LOW, files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert picture.status_code == 200 and picture.headers["X-Detections"] == str(len(answer))
    drawn = Image.open(io.BytesIO(picture.content)).convert("RGB")
    top = min(answer, key=lambda d: d["box"][1])  # its label is not covered by another's
    colour = ImageColor.getrgb(class_colour(top["label"]))
    x, y = int(top["box"][0]) + 2, int(top["box"][1]) - 2
    band = 0
    while y - band >= 0 and drawn.getpixel((x, y - band)) == colour:
        band += 1
    assert band >= label_font_size(1536, 1536) - 2  # a filled label as tall as a font scaled to the image


# --- CORS ----------------------------------------------------------------------------------------------------


def test_cors_is_off_by_default(client):
    preflight = client.options(
        "/detect", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_lets_those_pages_call_the_api_and_read_errors(shapes_jpeg):
    app = started(
        Settings(detector_checkpoint=DEMO_DETECTOR, classifier_checkpoint=None, optimize=False,
                 cors_origins="https://app.example.com, http://localhost:3000", max_upload_bytes=100)
    )  # fmt: skip
    try:
        preflight = app.options(
            "/detect",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "X-API-Key"},
        )  # fmt: skip
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        other = app.options(
            "/detect", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
        error = app.post(
            "/detect", content=shapes_jpeg, headers={"Content-Type": "image/jpeg", "Origin": "http://localhost:3000"}
        )
        assert error.status_code == 413
        assert error.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "X-Request-ID" in error.headers["access-control-expose-headers"]
    finally:
        app.__exit__(None, None, None)


def test_every_preflight_carries_the_request_id_and_a_refused_one_answers_json():
    app = started(
        Settings(detector_checkpoint=DEMO_DETECTOR, classifier_checkpoint=None, optimize=False,
                 cors_origins="https://app.example.com")
    )  # fmt: skip
    try:
        allowed = app.options(
            "/detect",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                     "X-Request-ID": "preflight-1"},
        )  # fmt: skip
        assert allowed.status_code == 200 and allowed.headers["x-request-id"] == "preflight-1"
        for refused_headers, named in [
            ({"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, "origin"),
            ({"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"}, "method"),
            ({"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "X-Evil"}, "headers"),
        ]:  # fmt: skip
            refused = app.options("/detect", headers=refused_headers)
            assert refused.status_code == 400
            assert refused.headers["content-type"] == "application/json"
            body = refused.json()
            assert body["request_id"] == refused.headers["x-request-id"]
            assert f"{named} not allowed" in body["detail"] and "POST" in body["detail"]
    finally:
        app.__exit__(None, None, None)


def test_a_preflight_with_cors_off_is_a_json_405_with_the_request_id(client):
    preflight = client.options(
        "/detect", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    assert preflight.json()["request_id"] == preflight.headers["x-request-id"]


def test_cors_origins_that_are_not_origins_are_refused():
    with pytest.raises(ValueError, match="CORS_ORIGINS: 'app.example.com' is not an origin"):
        Settings(cors_origins="app.example.com")


# --- OpenAPI -------------------------------------------------------------------------------------------------


def test_openapi_has_examples_and_descriptions_everywhere(client):
    document = client.get("/openapi.json").json()
    missing = []
    for name, schema in document["components"]["schemas"].items():
        if "examples" not in schema and "example" not in schema:
            missing.append(f"{name}: no example")
        for field, spec in schema.get("properties", {}).items():
            if not spec.get("description"):
                missing.append(f"{name}.{field}: no description")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not operation.get("description") or not operation.get("summary"):
                missing.append(f"{method.upper()} {path}: no summary or description")
            for parameter in operation.get("parameters", []):
                if not parameter.get("description"):
                    missing.append(f"{method.upper()} {path} ?{parameter['name']}: no description")
    assert missing == []
    detect_body = document["paths"]["/detect"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in detect_body and "image/*" in detect_body  # the raw body is documented
