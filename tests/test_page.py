"""The web page at GET / and the offline /docs, driven in a real headless Chromium (Debian's `chromium`).

`.ci/run` installs chromium when it is missing; elsewhere `apt-get install chromium` (docs/SERVING.md). Without it
the browser tests skip saying so; the checks that need no browser still run.
"""

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import SERVED_TINY, rename_in_manifest
from playwright.sync_api import expect

from detection import build_detector, save_detector
from detection.annotate import PALETTE
from detection.data.synthetic_shapes import render_image
from service import Settings, create_app
from service.settings import DEMO_MODEL_DIR
from tests.conftest import REPO_ROOT, SHARED_DATA

BUS = SHARED_DATA / "demo-images" / "bus.jpg"
SCREENSHOT = REPO_ROOT / "docs" / "page.png"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip


def demo_settings(**overrides) -> Settings:
    options = {
        "detector_checkpoint": DEMO_MODEL_DIR / "demo_detector.safetensors",
        "classifier_checkpoint": DEMO_MODEL_DIR / "demo_classifier.safetensors",
        "optimize": False,
    } | overrides
    return Settings(**options)


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no `chromium` on PATH: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page; waits use Playwright's `expect`, not wait_for_function, whose string predicates the page's
    CSP (no 'unsafe-eval') would refuse."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    # Chromium reports each thing the Content-Security-Policy blocked as a console error ("Refused to ...")
    opened.on(
        "console", lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None
    )
    yield opened
    context.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """bus.jpg from ../shared, else a generated twin: a JPEG of shapes the demo detector finds (4 at 0.5)."""
    if BUS.exists():
        return BUS
    image, _objects = render_image(np.random.default_rng(1), image_size=384, max_objects=4)
    path = tmp_path_factory.mktemp("page") / "shapes.jpg"
    image.save(path, quality=95)
    return path


def upload_and_wait(page, path: Path) -> dict:
    """Choose the file on the page, return /detect's JSON once the page has drawn it."""
    with page.expect_response(lambda response: urlsplit(response.url).path == "/detect") as answer:
        page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=done]")
    return answer.value.json()


def drawn_boxes(page) -> list[dict]:
    """Each drawn rect: its SVG attributes, its data attributes, and where it is on screen in image pixels."""
    return page.evaluate(
        """() => {
        const image = document.getElementById('image').getBoundingClientRect();
        const natural = document.getElementById('image');
        const scale = natural.naturalWidth / image.width;
        return [...document.querySelectorAll('#boxes rect.box')].map((rect) => {
            const screen = rect.getBoundingClientRect();
            return {
                x: +rect.getAttribute('x'), y: +rect.getAttribute('y'),
                width: +rect.getAttribute('width'), height: +rect.getAttribute('height'),
                box: JSON.parse(rect.dataset.box), name: rect.dataset.name, label: +rect.dataset.label,
                score: +rect.dataset.score, stroke: rect.getAttribute('stroke'),
                onScreen: [(screen.left - image.left) * scale, (screen.top - image.top) * scale,
                           (screen.right - image.left) * scale, (screen.bottom - image.top) * scale],
                pixelsPerScreenPx: scale,
            };
        });
    }"""
    )


def test_page_uploads_an_image_and_draws_the_boxes_of_the_json(live_server, page, photo):
    url = live_server(create_app(demo_settings()))
    page.goto(url)
    expect(page.locator("#classes option")).to_have_count(4)
    answer = upload_and_wait(page, photo)
    assert answer["detections"], "the demo detector finds nothing in the photo: the box check would be empty"

    natural = page.eval_on_selector("#image", "image => [image.naturalWidth, image.naturalHeight]")
    assert natural == [answer["image"]["width"], answer["image"]["height"]]
    boxes = drawn_boxes(page)
    assert len(boxes) == len(answer["detections"])
    for drawn, detection in zip(boxes, answer["detections"]):
        x1, y1, x2, y2 = detection["box"]
        assert drawn["box"] == detection["box"]
        assert (drawn["name"], drawn["label"]) == (detection["name"], detection["label"])
        assert drawn["score"] == pytest.approx(detection["score"])
        assert [drawn["x"], drawn["y"], drawn["width"], drawn["height"]] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert drawn["stroke"] == PALETTE[detection["label"] % len(PALETTE)]
        # Where it lands on screen, over the image: within 2 screen pixels of the box.
        assert drawn["onScreen"] == pytest.approx(detection["box"], abs=2 * drawn["pixelsPerScreenPx"])

    labels = page.locator("#boxes text").all_text_contents()  # drawn lowest score first: the highest on top
    assert labels == [f"{d['name']} {d['score']:.2f}" for d in reversed(answer["detections"])]
    assert page.locator("#detections li").count() == len(answer["detections"])
    assert page.locator("#top5 li").count() == 5
    raw = json.loads(page.locator("#raw").text_content())
    assert raw["detect"] == answer
    assert len(raw["classify"]["predictions"]) == 5
    timing = page.locator("#timing").inner_text()
    assert "detect" in timing and "classify" in timing and "round trip" in timing
    assert page.evaluate("window.resdetPalette") == list(PALETTE)

    # The screenshot in docs/SERVING.md (bus.jpg, so only beside ../shared), rewritten on request only: its timings
    # change every run, and a test run should leave the checkout as it found it.
    if photo == BUS and os.environ.get("UPDATE_SCREENSHOT") == "1":
        page.locator("details").evaluate("element => element.open = true")
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_page_sends_the_threshold_and_classes_and_draws_only_those(live_server, page, photo):
    url = live_server(create_app(demo_settings(classifier_checkpoint=None)))
    page.goto(url)
    expect(page.locator("#classes option")).to_have_count(4)
    everything = upload_and_wait(page, photo)
    assert page.locator("#classifier-panel").is_hidden()  # no classifier served, no top-5
    name = everything["detections"][0]["name"]

    page.locator("#threshold").fill("0.3")  # fill() on a range input sets the value and fires change
    with page.expect_response(lambda response: urlsplit(response.url).path == "/detect") as answer:
        page.select_option("#classes", [name])
    page.wait_for_selector("body[data-state=done]")
    query = parse_qs(urlsplit(answer.value.url).query)
    assert query == {"score_threshold": ["0.3"], "classes": [name]}
    only = answer.value.json()["detections"]
    assert only and {detection["name"] for detection in only} == {name}
    assert all(detection["score"] >= 0.3 for detection in only)
    assert [box["name"] for box in drawn_boxes(page)] == [name] * len(only)


def test_page_asks_for_the_api_key_when_the_server_needs_one(live_server, page, photo):
    url = live_server(create_app(demo_settings(classifier_checkpoint=None, api_key="s3cret")))
    page.goto(url)
    assert page.locator("#key-row").is_hidden()
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=error]")
    assert "needs an API key" in page.locator("#status").inner_text()
    assert page.locator("#key-row").is_visible()

    page.fill("#api-key", "s3cret")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("body[data-state=done]")
    assert page.locator("#boxes rect.box").count() > 0


def test_page_explains_413_and_415(live_server, page, photo, tmp_path):
    url = live_server(create_app(demo_settings(classifier_checkpoint=None, max_upload_bytes=photo.stat().st_size // 2)))
    page.goto(url)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=error]")
    assert re.search(r"Too large for this server: .*MAX_UPLOAD_BYTES", page.locator("#status").inner_text())

    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    expect(page.locator("#status")).to_have_text(re.compile(r"^Not an image type"))
    assert page.evaluate("document.body.dataset.state") == "error"


def test_page_retries_a_503_with_retry_after_then_shows_the_answer(live_server, page, photo):
    url = live_server(create_app(demo_settings(classifier_checkpoint=None)))
    refused = []

    def busy_once(route):
        if not refused:  # the first try meets a full queue; the retry reaches the real server
            refused.append(route.request.url)
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "queue full"})
        else:
            route.continue_()

    page.route("**/detect?*", busy_once)
    page.goto(url)
    page.set_input_files("#file", str(photo))
    expect(page.locator("#status")).to_contain_text("retrying in 1 s")
    page.wait_for_selector("body[data-state=done]")
    assert len(refused) == 1
    assert page.locator("#boxes rect.box").count() > 0


def test_page_says_when_a_503_is_final(live_server, page, photo):
    url = live_server(create_app(demo_settings(classifier_checkpoint=None)))
    page.route("**/detect?*", lambda route: route.fulfill(status=503, json={"detail": "no detector is configured"}))
    page.goto(url)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=error]")
    assert page.locator("#status").inner_text() == "Unavailable: no detector is configured."


def test_docs_render_without_internet(live_server, page):
    """Swagger UI comes from the app: with every request off the loopback refused, /docs still draws the API."""
    url = live_server(create_app(demo_settings(classifier_checkpoint=None)))
    outside = []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", loopback_only)
    page.goto(f"{url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/detect']")
    # and works under its Content-Security-Policy (the `page` fixture fails on any violation): "Try it out" asks
    # /models on this origin
    page.locator(".opblock-summary-path[data-path='/models']").click()
    with page.expect_response(lambda response: urlsplit(response.url).path == "/models") as listed:
        page.get_by_role("button", name="Try it out").click()
        page.get_by_role("button", name="Execute").click()
    assert listed.value.status == 200
    expect(page.locator(".live-responses-table tbody .response-col_status").first).to_contain_text("200")
    assert outside == []


def test_redoc_renders_without_internet_under_its_content_security_policy(live_server, browser):
    """ReDoc, like Swagger UI above, draws the API from the app's own copy under its policy. The one thing the policy
    refuses is ReDoc's footer logo, which its bundle always asks of cdn.redoc.ly (and hides when refused)."""
    url = live_server(create_app(demo_settings(classifier_checkpoint=None)))
    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        page.route("**/*", lambda route: route.continue_() if "127.0.0.1" in route.request.url else route.abort())
        with page.expect_response(lambda response: urlsplit(response.url).path == "/redoc") as answer:
            page.goto(f"{url}/redoc")
        assert "script-src 'self'" in answer.value.headers["content-security-policy"]
        expect(page.locator("h1").first).to_contain_text("resdet")
        expect(page.get_by_text("/detect/batch").first).to_be_attached()
        expect(page.locator("img[alt='redocly logo']")).to_have_count(0)  # refused, then dropped by ReDoc
    finally:
        context.close()
    assert [error for error in errors if "https://cdn.redoc.ly/redoc/logo-mini.svg" not in error] == [], errors


def test_docs_carry_a_content_security_policy_admitting_only_their_own_scripts():
    """/docs and /redoc had none (the page's own would block Swagger UI's inline start-up script): theirs admits the
    app's own files and each inline script by its hash, nothing inline besides, nothing from elsewhere."""
    import base64
    import hashlib

    with TestClient(create_app(demo_settings(classifier_checkpoint=None))) as client:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            response = client.get(path)
            assert response.headers["x-content-type-options"] == "nosniff", path
            policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
            assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'", path
            assert policy["connect-src"] == "'self'" and "http" not in "".join(policy.values()), path
            scripts = re.findall(r"<script(?![^>]*src=)[^>]*>(.*?)</script>", response.text, re.DOTALL)
            hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts]
            assert policy["script-src"].split() == ["'self'", *hashes], path
            assert (path == "/redoc") == (hashes == []), path  # Swagger UI's pages have their inline start-up


def test_page_and_docs_load_nothing_from_other_origins():
    """No CDN: every script, style sheet and image the page and /docs name is served by the app."""
    with TestClient(create_app(demo_settings(classifier_checkpoint=None))) as client:
        for path in ("/", "/docs", "/redoc"):
            html = client.get(path).text
            sources = re.findall(r"""(?:src|href)\s*[=:]\s*["']([^"']+)""", html)
            assert sources, path
            assert [source for source in sources if re.match(r"(https?:)?//", source)] == [], path
            for asset in (source for source in sources if source.endswith((".js", ".css", ".png"))):
                assert client.get(asset if asset.startswith("/") else f"/{asset}").status_code == 200, asset


def test_page_offers_the_classes_of_the_default_detector_not_the_first_listed(live_server, page, photo, tmp_path):
    """/models lists files in folder order (zz_shapes first); the default, which /detect runs, is aa_pets."""
    for file_name, name, classes in [("a.safetensors", "zz_shapes", ["circle", "square", "triangle"]),
                                     ("b.safetensors", "aa_pets", ["cat", "dog"])]:  # fmt: skip
        torch.manual_seed(0)
        model = build_detector(class_names=classes, **{**SERVED_TINY, "num_classes": len(classes)})
        rename_in_manifest(save_detector(tmp_path / file_name, model=model), name)
    settings = demo_settings(detector_checkpoint=None, classifier_checkpoint=None, models_dir=tmp_path)
    url = live_server(create_app(settings))
    listed = [model for model in httpx.get(f"{url}/models").json()["models"] if model["role"] == "detector"]
    assert [(model["name"], model["default"]) for model in listed] == [("zz_shapes", False), ("aa_pets", True)]
    page.goto(url)
    expect(page.locator("#classes option")).not_to_have_count(0)
    assert page.locator("#classes option").all_text_contents() == ["cat", "dog"]
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=done]")
    with page.expect_response(lambda response: urlsplit(response.url).path == "/detect") as answer:
        page.select_option("#classes", ["dog"])
    page.wait_for_selector("body[data-state=done]")
    assert answer.value.status == 200 and answer.value.json()["model"]["name"] == "aa_pets"


def test_page_and_static_files_carry_nosniff_a_content_security_policy_and_no_referrer():
    with TestClient(create_app(demo_settings(classifier_checkpoint=None))) as client:
        for path in ("/", "/static/page.js", "/static/page.css"):
            headers = client.get(path).headers
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "no-referrer", path
            policy = dict(part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";"))
            assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", path
            assert policy["frame-ancestors"] == "'none'", path
        for response in (
            client.get("/models"),
            client.post("/detect", content=b"x", headers={"Content-Type": "image/png"}),
        ):
            assert response.headers["x-content-type-options"] == "nosniff"
