"""Several named models (MODELS_DIR, MODEL_CHECKPOINTS, ?model=, /models) and reloading one without downtime."""

import logging
import os
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import (
    CLASS_NAMES,
    SERVED_TINY,
    assert_start_refused,
    noise_image_bytes,
    rename_in_manifest,
    save_tiny_classifier,
    wait_ready,
)
from helpers import image_bytes as classifier_image

from detection import build_detector, save_detector
from service import Settings, create_app
from service.loading import ModelLoadError, file_version, load_model

GUARD_S = 120  # a deadlock guard for waits on conditions, never a speed goal


def upload(data: bytes) -> dict:
    return {"file": ("image.png", data, "image/png")}


def save_tiny_detector(path: Path, *, note: str) -> Path:
    """The same tiny detector each time; `note` changes the manifest, so each note is its own file version."""
    torch.manual_seed(0)
    save_detector(path, model=build_detector(class_names=CLASS_NAMES, **SERVED_TINY), provenance={"description": note})
    return path


def replace_file(source: Path, target: Path) -> None:
    """Put `source`'s bytes at `target` the way a deployment should: a new file renamed over the old."""
    staging = target.with_name(f".{target.name}.new")
    staging.write_bytes(source.read_bytes())
    os.replace(staging, target)


def settings_for(models_dir: Path, **overrides) -> Settings:
    options = {"optimize": False, "bf16": False, "max_batch": 4, "max_batch_wait_ms": 2, "detector_checkpoint": None,
               "classifier_checkpoint": None, "models_dir": models_dir} | overrides  # fmt: skip
    return Settings(**options)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {GUARD_S}s for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """Files to copy into each test's folder: two versions of one detector, two classifiers, a broken file."""
    folder = tmp_path_factory.mktemp("versions")
    old = save_tiny_detector(folder / "old.safetensors", note="version one")
    broken = folder / "broken.safetensors"
    broken.write_bytes(old.read_bytes()[:4000])
    save_tiny_classifier(folder / "cls_a.safetensors", seed=0)
    save_tiny_classifier(folder / "cls_b.safetensors", seed=1)
    return {
        "old": old,
        "new": save_tiny_detector(folder / "new.safetensors", note="version two"),
        "broken": broken,
        "cls_a": folder / "cls_a.safetensors",
        "cls_b": rename_in_manifest(folder / "cls_b.safetensors", "bee"),
    }


@pytest.fixture
def models_dir(tmp_path, versions) -> Path:
    """A MODELS_DIR holding detector `det` (version one) and classifiers `cls_a` and `bee` (its manifest's name)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name, target in (("old", "det"), ("cls_a", "cls_a"), ("cls_b", "cls_b")):
        replace_file(versions[name], folder / f"{target}.safetensors")
    return folder


def version_of(client, name: str) -> str:
    return client.get(f"/models/{name}").json()["version"]


# ------------------------------------------------------------------------------- several models


def test_models_dir_serves_each_checkpoint_by_name_and_the_single_settings_stay_the_defaults(models_dir, versions):
    # CLASSIFIER_CHECKPOINT names a file that MODELS_DIR holds too: served once, as the default classifier
    settings = settings_for(models_dir, classifier_checkpoint=models_dir / "cls_b.safetensors")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        listed = {info["name"]: info for info in client.get("/models").json()["models"]}
        assert {name: (info["role"], info["default"]) for name, info in listed.items()} == {
            "bee": ("classifier", True), "cls_a": ("classifier", False), "det": ("detector", True)
        }  # fmt: skip
        assert listed["bee"]["file"] == "cls_b.safetensors" and listed["bee"]["precision"] == "float32"
        assert listed["det"]["class_names"] == CLASS_NAMES and listed["det"]["last_reload_error"] is None
        assert client.get("/models/bee").json() == listed["bee"]

        assert client.post("/classify", files=upload(classifier_image())).json()["model"]["name"] == "bee"
        answer = client.post("/classify", params={"model": "cls_a"}, files=upload(classifier_image())).json()
        assert answer["model"] == {"name": "cls_a", "version": listed["cls_a"]["version"]}
        assert client.post("/detect", files=upload(noise_image_bytes())).json()["model"]["name"] == "det"
        files = [("files", ("a.png", classifier_image(), "image/png"))]
        batch = client.post("/classify/batch", params={"model": "cls_a"}, files=files)
        assert [item["model"]["name"] for item in batch.json()] == ["cls_a"]

        unknown = client.post("/classify", params={"model": "nope"}, files=upload(classifier_image()))
        assert unknown.status_code == 404 and unknown.json()["detail"] == (
            "no classifier named 'nope'; classifiers served: bee, cls_a"
        )
        wrong_kind = client.post("/detect", params={"model": "bee"}, files=upload(noise_image_bytes()))
        assert wrong_kind.status_code == 404 and "'bee' is a classifier, not a detector" in wrong_kind.json()["detail"]
        missing = client.get("/models/nope")
        assert missing.status_code == 404 and "served: bee, cls_a, det" in missing.json()["detail"]
        assert missing.json()["request_id"]
        # each model has its own engine
        engines = {name: slot.served.engine for name, slot in client.app.state.service.registry.slots.items()}
        assert len({id(engine) for engine in engines.values()}) == 3 and all(e.running for e in engines.values())


def test_model_checkpoints_setting_takes_a_comma_list_or_json(monkeypatch, versions):
    monkeypatch.setenv("MODEL_CHECKPOINTS", f"{versions['cls_a']}, {versions['old']}")
    assert Settings().model_checkpoints == [versions["cls_a"], versions["old"]]
    monkeypatch.setenv("MODEL_CHECKPOINTS", f'["{versions["cls_b"]}"]')
    assert Settings().model_checkpoints == [versions["cls_b"]]
    monkeypatch.setenv("MODEL_CHECKPOINTS", "")
    assert Settings().model_checkpoints == []
    relative = Settings(
        model_paths_base=versions["old"].parent, models_dir="more", model_checkpoints=["a.safetensors", versions["old"]]
    )
    assert relative.models_dir == versions["old"].parent / "more"  # anchored like the others
    assert relative.model_checkpoints == [versions["old"].parent / "a.safetensors", versions["old"]]
    settings = settings_for(None, model_checkpoints=[versions["cls_b"], versions["old"]])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert {(m["name"], m["role"]) for m in client.get("/models").json()["models"]} == {
            ("bee", "classifier"), ("old", "detector")
        }  # fmt: skip


def test_two_models_with_one_name_refuse_to_start(tmp_path, versions):
    replace_file(versions["cls_a"], tmp_path / "bee.safetensors")  # named by its stem: 'bee', as cls_b's manifest says
    settings = settings_for(tmp_path, model_checkpoints=[versions["cls_b"]])
    with pytest.raises(ModelLoadError, match="both named 'bee'"):
        with TestClient(create_app(settings)):
            pass
    with pytest.raises(ModelLoadError, match="MODELS_DIR: not a folder"):
        with TestClient(create_app(settings_for(tmp_path / "absent"))):
            pass


def test_the_command_names_a_missing_models_dir_or_listed_checkpoint(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DETECTOR_CHECKPOINT", "")
    monkeypatch.setenv("CLASSIFIER_CHECKPOINT", "")
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "no_such_folder"))
    monkeypatch.setenv("MODEL_CHECKPOINTS", str(tmp_path / "absent.safetensors"))
    assert_start_refused(monkeypatch)
    error = capsys.readouterr().err
    assert "MODELS_DIR: not a folder" in error and "MODEL_CHECKPOINTS[0]: checkpoint not found" in error


# ---------------------------------------------------------------------------------- hot reload


def test_reload_under_concurrent_load_fails_no_request_and_serves_the_new_version(models_dir, versions,
                                                                                    live_server):  # fmt: skip
    app = create_app(settings_for(models_dir))
    url = live_server(app)
    registry = app.state.service.registry
    old = registry.slots["det"].served
    stop, failures, seen = threading.Event(), [], {}
    progress = threading.Condition()

    def post_until_stopped(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=GUARD_S) as http:
            while not stop.is_set():
                response = http.post("/detect", files=upload(noise_image_bytes(seed=worker)))
                with progress:
                    if response.status_code != 200:
                        failures.append((response.status_code, response.text))
                    else:
                        seen.setdefault(worker, []).append(response.json()["model"]["version"])
                    progress.notify_all()

    workers = [threading.Thread(target=post_until_stopped, args=(worker,)) for worker in range(4)]
    for thread in workers:
        thread.start()
    try:
        with progress:  # every client is sending before the swap
            assert progress.wait_for(lambda: len(seen) == 4 or failures, GUARD_S), "no answers"
        replace_file(versions["new"], models_dir / "det.safetensors")
        reloaded = httpx.post(f"{url}/models/det/reload", timeout=GUARD_S)
        assert reloaded.status_code == 200, reloaded.text
        new_version = reloaded.json()["version"]
        assert reloaded.json()["previous_version"] == old.version != new_version
        with progress:  # every client gets the new version afterwards
            assert progress.wait_for(
                lambda: failures or all(answers[-1] == new_version for answers in seen.values()), GUARD_S
            ), "the new version never answered"
    finally:
        stop.set()
        for thread in workers:
            thread.join(GUARD_S)
    assert failures == []
    assert {version for answers in seen.values() for version in answers} == {old.version, new_version}
    wait_until(lambda: not old.engine.running, "the old engine to stop after draining")
    assert registry.slots["det"].served.engine.running


def test_a_request_in_flight_finishes_on_the_old_version(models_dir, versions, batch_gate):
    with TestClient(create_app(settings_for(models_dir))) as client:
        wait_ready(client)
        old = client.app.state.service.registry.slots["det"].served
        gate = batch_gate(old.engine)
        held = {}
        in_flight = threading.Thread(
            target=lambda: held.update(answer=client.post("/detect", files=upload(noise_image_bytes())))
        )
        in_flight.start()
        gate.wait_entered()  # its batch is inside the old model
        replace_file(versions["new"], models_dir / "det.safetensors")
        reloaded = client.post("/models/det/reload").json()
        # swapped while the old version still computes: new requests get the new one at once
        assert (
            client.post("/detect", files=upload(noise_image_bytes())).json()["model"]["version"] == reloaded["version"]
        )
        assert old.engine.running  # still draining
        gate.release()
        in_flight.join(GUARD_S)
        assert held["answer"].status_code == 200 and held["answer"].json()["model"]["version"] == old.version
        wait_until(lambda: not old.engine.running, "the old engine to stop")


def test_a_broken_file_keeps_the_old_version_serving_and_reports_why(models_dir, versions, caplog):
    with TestClient(create_app(settings_for(models_dir))) as client:
        wait_ready(client)
        before = version_of(client, "det")
        replace_file(versions["broken"], models_dir / "det.safetensors")
        with caplog.at_level(logging.ERROR, logger="service"):
            refused = client.post("/models/det/reload")
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(f"reload of 'det' failed, still serving {before}: MODELS_DIR: ")
        assert "det.safetensors" in refused.json()["detail"] and refused.json()["request_id"]
        assert str(models_dir) not in refused.text  # the file's name, not where the server keeps it
        info = client.get("/models/det").json()
        assert info["version"] == before and "corrupt or truncated" in info["last_reload_error"]
        assert "reload of det failed" in caplog.text
        answer = client.post("/detect", files=upload(noise_image_bytes()))
        assert answer.status_code == 200 and answer.json()["model"]["version"] == before

        replace_file(versions["cls_a"], models_dir / "det.safetensors")  # loads, but is another kind of model
        refused = client.post("/models/det/reload")
        assert refused.status_code == 422 and "now holds classifier 'det'" in refused.json()["detail"]

        replace_file(versions["new"], models_dir / "det.safetensors")  # mended: the error clears
        assert client.post("/models/det/reload").json()["previous_version"] == before
        assert client.get("/models/det").json()["last_reload_error"] is None
        assert client.post("/models/nope/reload").status_code == 404


def test_a_new_version_that_fails_its_warm_up_is_not_swapped_in(models_dir, versions, monkeypatch):
    from service.predictors import DetectorPredictor

    with TestClient(create_app(settings_for(models_dir))) as client:
        wait_ready(client)
        old = client.app.state.service.registry.slots["det"].served
        replace_file(versions["new"], models_dir / "det.safetensors")

        def failing_run(self, batch):
            raise RuntimeError("kernel missing on this device")

        # only the new version's predictor fails (the old one keeps its bound run), as a new file could
        monkeypatch.setattr(DetectorPredictor, "run", failing_run)
        refused = client.post("/models/det/reload")
        assert refused.status_code == 422 and "kernel missing on this device" in refused.json()["detail"]
        assert client.app.state.service.registry.slots["det"].served is old and old.engine.running
        answer = client.post("/detect", files=upload(noise_image_bytes()))
        assert answer.status_code == 200 and answer.json()["model"]["version"] == old.version


def test_replacing_the_file_reloads_it_when_watching(models_dir, versions):
    with TestClient(create_app(settings_for(models_dir, reload_poll_s=0.05))) as client:
        wait_ready(client)
        before = version_of(client, "det")
        replace_file(versions["broken"], models_dir / "det.safetensors")
        wait_until(lambda: client.get("/models/det").json()["last_reload_error"], "the broken file to be reported")
        assert version_of(client, "det") == before
        assert client.post("/detect", files=upload(noise_image_bytes())).json()["model"]["version"] == before

        replace_file(versions["new"], models_dir / "det.safetensors")
        wait_until(lambda: version_of(client, "det") != before, "the new file to be swapped in")
        assert client.get("/models/det").json()["last_reload_error"] is None
        answer = client.post("/detect", files=upload(noise_image_bytes())).json()
        assert answer["model"]["version"] == version_of(client, "det")


def test_a_poll_reloads_only_a_changed_file_and_tries_a_broken_one_once(models_dir, versions, monkeypatch):
    with TestClient(create_app(settings_for(models_dir))) as client:  # RELOAD_POLL_S=0: polls run by hand here
        wait_ready(client)
        registry = client.app.state.service.registry
        poll = partial(client.portal.call, registry.check_files)
        serving = registry.slots["det"].served
        os.utime(models_dir / "det.safetensors", ns=(1, 1))  # touched, same bytes: not reloaded
        poll()
        assert registry.slots["det"].served is serving

        loads = []
        monkeypatch.setattr("service.registry.load_model", lambda *args, **kwargs: loads.append(1) or load_model(
            *args, **kwargs))  # fmt: skip
        replace_file(versions["broken"], models_dir / "det.safetensors")
        poll()
        poll()
        assert len(loads) == 1 and registry.slots["det"].served is serving  # tried once, old one kept
        assert "det.safetensors" in registry.slots["det"].last_reload_error

        replace_file(versions["new"], models_dir / "det.safetensors")
        poll()
        assert len(loads) == 2 and registry.slots["det"].served.version == file_version(versions["new"])
        assert registry.slots["det"].last_reload_error is None


def test_reload_needs_the_api_key_when_one_is_set(models_dir):
    with TestClient(create_app(settings_for(models_dir, api_key="secret"))) as client:
        wait_ready(client)
        assert client.get("/models/det").status_code == 200  # listing stays open
        refused = client.post("/models/det/reload")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.post("/models/det/reload", headers={"X-API-Key": "secret"}).status_code == 200


# ----------------------------------------------------------------------- files that are no model


def make_bad_entry(path: Path, kind: str) -> None:
    """Put at `path` something named like a checkpoint that is no readable regular file."""
    if kind == "symlink loop":
        path.symlink_to(path.name)  # relative: points at itself
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "half-written":
        path.write_bytes(b"\x00" * 8)


BAD_ENTRIES = {
    "symlink loop": "symlink_loop",
    "fifo": "not_a_regular_file",
    "device": "not_a_regular_file",
    "folder": "not_a_regular_file",
    "half-written": "does_not_load",
}


def skipped_count(client, reason: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'resdet_model_files_skipped_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_a_bad_entry_in_models_dir_is_skipped_at_start_up_with_one_log_line_and_a_metric(models_dir, kind, caplog):
    make_bad_entry(models_dir / "bad.safetensors", kind)
    with TestClient(create_app(settings_for(models_dir))) as client:
        wait_ready(client)
        assert sorted(model["name"] for model in client.get("/models").json()["models"]) == ["bee", "cls_a", "det"]
        assert skipped_count(client, BAD_ENTRIES[kind]) == 1
    lines = [record.getMessage() for record in caplog.records if "bad.safetensors" in record.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"skipped checkpoint file ({BAD_ENTRIES[kind]})"), lines
    assert "\n" not in lines[0]


def test_start_up_fails_in_one_line_only_when_no_usable_model_remains(tmp_path):
    for kind in BAD_ENTRIES:
        make_bad_entry(tmp_path / f"{kind.replace(' ', '_')}.safetensors", kind)
    with pytest.raises(ModelLoadError) as raised:
        with TestClient(create_app(settings_for(tmp_path))):
            pass
    assert str(raised.value).startswith("no usable model") and "\n" not in str(raised.value)


def poll_guarded(client, registry) -> None:
    """One watcher poll, which must come back: a FIFO read or /dev/zero hashed would hold it forever."""
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (client.portal.call(registry.check_files), finished.set()), daemon=True)
    thread.start()
    assert finished.wait(30), "the watcher's poll did not come back (blocked reading the file)"


@pytest.mark.parametrize("kind", ["symlink loop", "fifo", "device", "folder"])
def test_the_watcher_skips_a_served_file_turned_bad_once_and_keeps_polling(models_dir, versions, kind, caplog):
    with TestClient(create_app(settings_for(models_dir))) as client:  # RELOAD_POLL_S=0: polls run by hand here
        wait_ready(client)
        registry = client.app.state.service.registry
        serving = registry.slots["det"].served
        target = models_dir / "det.safetensors"
        target.unlink()
        make_bad_entry(target, kind)
        poll_guarded(client, registry)
        poll_guarded(client, registry)
        assert registry.slots["det"].served is serving  # still serving the old version
        assert client.post("/detect", files=upload(noise_image_bytes())).status_code == 200
        assert skipped_count(client, BAD_ENTRIES[kind]) == 1  # once, not every poll
        reload = client.post("/models/det/reload")  # the route answers why, never a 500
        assert reload.status_code == 422 and "det.safetensors" in reload.json()["detail"]

        if target.is_dir():
            target.rmdir()
        else:
            target.unlink()
        replace_file(versions["new"], target)
        poll_guarded(client, registry)
        assert registry.slots["det"].served.version == file_version(versions["new"])
    assert len([record for record in caplog.records if record.getMessage().startswith("skipped checkpoint")]) == 1
