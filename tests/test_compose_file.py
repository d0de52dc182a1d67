"""The compose files read the same under Docker Compose and podman-compose 1.0.3 (issue 22), pass every setting
through, validate with Debian's docker-compose 1.29 where installed; docker/install-torch.sh falls back in seconds;
docker/Dockerfile builds in layers small enough for CI's disk. The container itself is run by docker/smoke.sh (CI's
container stage), not here."""

import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from service import Settings
from tests.conftest import REPO_ROOT

BASE = "docker-compose.yml"
OVERLAYS = ("docker-compose.gpu.yml", "docker-compose.train.yml")
# Set by the compose file itself (container paths, the device), not passed through from the shell.
FIXED = {"MODEL_PATHS_BASE", "DEVICE", "DETECTOR_CHECKPOINT", "CLASSIFIER_CHECKPOINT"}
# The container's address is the image's (0.0.0.0:8000); the shell's PORT is the published host port.
NOT_PASSED = {"HOST", "PORT"}

# podman-compose 1.0.3's interpolation (podman_compose.py, var_re and rec_subs), kept here to read our files as it
# does: a default needs one character at least, and `:-` is read as `-`.
PODMAN_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|"
    r"(?:{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?::?-(?P<default>[^}]+))|(?::?\?(?P<err>[^}]+)))?}))"
)
# The compose specification's (Docker Compose v1 and v2): `-` replaces an unset NAME, `:-` an unset or empty one.
SPEC_VAR = re.compile(r"\$(?:(?P<escaped>\$)|{(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<colon>:?)-(?P<default>[^}]*))?})")


def podman_compose_reads(text: str, shell: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        if match.group("escaped") is not None:
            return "$"
        name = match.group("named") or match.group("braced")
        return shell[name] if name in shell else (match.group("default") or "")

    return PODMAN_COMPOSE_VAR.sub(value, text)


def docker_compose_reads(text: str, shell: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        if match.group("escaped") is not None:
            return "$"
        name = match.group("name")
        if name not in shell or (match.group("colon") and shell[name] == ""):
            return match.group("default") or ""
        return shell[name]

    return SPEC_VAR.sub(value, text)


def compose_text(name: str) -> str:
    return (REPO_ROOT / name).read_text()


def variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{(\w+)", text))


@pytest.mark.parametrize("name", [BASE, *OVERLAYS])
def test_both_tools_read_every_value_alike_whether_a_variable_is_unset_empty_or_set(name):
    text = compose_text(name)
    names = variables(text)
    assert names or name != BASE
    for shell in ({}, dict.fromkeys(names, ""), dict.fromkeys(names, "given")):
        podman = yaml.safe_load(podman_compose_reads(text, shell))
        docker = yaml.safe_load(docker_compose_reads(text, shell))
        assert podman == docker, f"{name} with {shell}: podman-compose and Docker Compose differ"


def test_the_reader_of_podman_compose_finds_what_issue_22_saw_on_the_old_file():
    """The emulation above is what makes the previous test mean something: on the line that restarted the
    container 72 times, it gives the literal text podman-compose 1.0.3 passed, and Docker gives the empty value."""
    old = "CORS_ORIGINS: ${CORS_ORIGINS-}"
    assert podman_compose_reads(old, {}) == "CORS_ORIGINS: ${CORS_ORIGINS-}"
    assert docker_compose_reads(old, {}) == "CORS_ORIGINS: "


@pytest.mark.parametrize("name", [BASE, *OVERLAYS])
def test_no_construct_that_podman_compose_1_0_3_ignores_or_mangles(name):
    services = yaml.safe_load(compose_text(name))["services"]
    for service, description in services.items():
        # `profiles` is ignored: a plain `up` would start a GPU service on a CPU machine
        assert "profiles" not in description, f"{name}: {service} uses profiles; use an overlay file"
        # `condition: service_healthy` is ignored: nothing would wait
        assert not isinstance(description.get("depends_on"), dict), f"{name}: {service}: depends_on conditions"
        test = description.get("healthcheck", {}).get("test")
        if test is not None:  # the list form other than CMD-SHELL + one string is mangled
            assert test[0] == "CMD-SHELL" and len(test) == 2, f"{name}: {service}: healthcheck {test}"


def test_the_api_passes_every_setting_through_and_sets_only_its_own():
    environment = yaml.safe_load(compose_text(BASE))["services"]["api"]["environment"]
    settings = {field.upper() for field in Settings.model_fields}
    assert set(environment) <= settings, f"not settings: {set(environment) - settings}"
    assert settings - set(environment) == NOT_PASSED, "a setting the compose file neither sets nor passes through"
    passed = {key for key, value in environment.items() if value is None}
    assert passed == settings - FIXED - NOT_PASSED


def test_an_empty_value_in_the_shell_means_unset_for_settings_without_a_value_of_their_own(monkeypatch):
    """`CORS_ORIGINS=` exported in a shell reaches the container as an empty value (compose passes it through)."""
    monkeypatch.setenv("CORS_ORIGINS", "")
    monkeypatch.setenv("DETECTOR_CLASS_NAMES", "")
    monkeypatch.setenv("MODEL_PATHS_BASE", "/models")
    settings = Settings()
    assert settings.cors_origins == [] and settings.detector_class_names is None


def test_the_gpu_overlay_and_the_training_overlay_give_gpus_to_docker_and_podman():
    gpu = yaml.safe_load(compose_text("docker-compose.gpu.yml"))["services"]["api"]
    train = yaml.safe_load(compose_text("docker-compose.train.yml"))["services"]["train"]
    for description in (gpu, train):
        assert "nvidia.com/gpu=all" in description["devices"]  # CDI: podman
        assert description["deploy"]["resources"]["reservations"]["devices"]  # NVIDIA Container Toolkit: Docker
    assert gpu["environment"]["DEVICE"] == "cuda" and gpu["image"] != "resdet:cpu"
    assert train["build"]["target"] == "train"


def test_smoke_stage_tears_down_the_image_the_compose_file_builds():
    image = yaml.safe_load(compose_text(BASE))["services"]["api"]["image"]
    smoke = (REPO_ROOT / "docker" / "smoke.sh").read_text()
    assert f"IMAGE={image} " in smoke


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_docker_compose_accepts_the_files(overlay):
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose; .ci/run does)")
    files = ["-f", BASE] + (["-f", overlay] if overlay else [])
    result = subprocess.run(
        ["docker-compose", *files, "config"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["api"]["environment"]["CLASSIFIER_CHECKPOINT"] == "demo_classifier.safetensors"
    if overlay == "docker-compose.train.yml":
        assert "train" in services


# --- docker/install-torch.sh ----------------------------------------------------------------------------------


def fake_python(tmp_path: Path, *, pip_status: int) -> tuple[Path, Path]:
    """This interpreter for everything but `-m pip`, whose arguments it writes down and answers with pip_status."""
    log = tmp_path / "pip.log"
    script = tmp_path / "python"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then echo "$*" >> {log}; exit {pip_status}; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def install_torch(python: Path, index: str, record: Path, *options: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TORCH_INDEX_URL": index}
    return subprocess.run(
        ["sh", "docker/install-torch.sh", str(python), "pyproject.toml", str(record), *options],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_install_torch_falls_back_to_pip_index_when_the_preferred_one_does_not_answer(tmp_path):
    python, log = fake_python(tmp_path, pip_status=0)
    result = install_torch(python, "http://127.0.0.1:9/whl/cpu", tmp_path / "record")  # port 9: refused
    assert result.returncode == 0, result.stderr
    (call,) = log.read_text().splitlines()
    assert "--index-url" not in call
    assert re.search(r" torch[<>=]", call) and re.search(r" torchvision[<>=]", call), call  # pyproject's ranges
    assert "did not answer" in result.stderr
    assert (tmp_path / "record").read_text().startswith("source=registry\n")


def test_install_torch_uses_the_preferred_index_where_it_answers(tmp_path):
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<html></html>")
    server = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "index")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_port}"
        python, log = fake_python(tmp_path, pip_status=0)
        result = install_torch(python, index, tmp_path / "record")
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    (call,) = log.read_text().splitlines()
    assert f"--index-url {index}" in call
    assert (tmp_path / "record").read_text().startswith(f"source={index}\n")


def test_install_torch_fails_when_pip_fails(tmp_path):
    python, _ = fake_python(tmp_path, pip_status=1)
    result = install_torch(python, "", tmp_path / "record")
    assert result.returncode != 0 and not (tmp_path / "record").exists()


def test_install_torch_installs_torch_alone_with_no_deps(tmp_path):
    python, log = fake_python(tmp_path, pip_status=0)
    result = install_torch(python, "", tmp_path / "record", "--no-deps")
    assert result.returncode == 0, result.stderr
    (call,) = log.read_text().splitlines()
    assert "--no-deps" in call.split() and re.search(r" torch[<>=]", call), call
    # the record reads torch/version.py: the same build line as importing torch gives
    import torch

    assert f"torch={torch.__version__} cuda {torch.version.cuda or 'none'}" in (tmp_path / "record").read_text()

    refused = install_torch(python, "", tmp_path / "other", "--no-dep")
    assert refused.returncode == 2 and "unknown option --no-dep" in refused.stderr
    assert len(log.read_text().splitlines()) == 1  # nothing installed


def test_torch_requires_prints_the_installed_torch_requirements_by_prefix():
    import importlib.metadata

    def run(*prefixes: str) -> list[str]:
        result = subprocess.run([sys.executable, "docker/torch_requires.py", *prefixes], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return [line for line in result.stdout.splitlines() if line]

    requirements = importlib.metadata.requires("torch")
    assert run("filelock", "sympy") == [r for r in requirements if r.startswith(("filelock", "sympy"))] != []
    assert run("no-such-package") == []
    usage = subprocess.run([sys.executable, "docker/torch_requires.py"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert usage.returncode != 0 and "usage" in usage.stderr


def test_dockerfile_never_copies_the_environment_and_installs_torch_in_small_layers():
    """CI's disk filled at `COPY --from=deps /opt/venv`: a copy of the 5 GB environment is a second 5 GB layer, and
    podman holds each layer three times while it commits it. docker/smoke.sh measures the real peak."""
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    instructions = [" ".join(i.split()) for i in re.sub(r"\\\n", " ", dockerfile).splitlines() if i and i[0] != "#"]
    assert not [i for i in instructions if i.startswith("COPY --from") and "/opt/venv" in i], "the venv is copied"
    stages = dict((name, base) for base, name in re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, flags=re.MULTILINE))
    assert stages["runtime"] == "deps"
    runs = [i for i in instructions if i.startswith("RUN ")]
    (torch,) = [i for i in runs if "install-torch.sh" in i]
    assert torch.endswith("--no-deps"), torch
    # torch, the CUDA toolkit, NVIDIA's other libraries and the rest: four layers, each its own RUN
    for group in ("cuda-toolkit", "nvidia-"):
        assert [i for i in runs if f"torch_requires.py {group}" in i], group
    (rest,) = [i for i in runs if "pip install -r /tmp/requirements.txt" in i]
    assert "pip uninstall -y triton" in rest  # removed in the layer that installs it, or the layer keeps it
    (train,) = [i for i in runs if "train.txt" in i and "pip install" in i]
    assert "torch_requires.py triton" in train
