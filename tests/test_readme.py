"""Every command in README.md runs: each ```bash block runs in order, in a scratch folder holding the
repository's files and a bus.jpg, against a server started as `make serve` starts it (on a free port),
or carries a `<!-- skip: reason -->` line right before it; an unmarked block that fails fails the test."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, SHARED_DATA

README_URL = "http://127.0.0.1:8000"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*skip:\s*(.*?)\s*-->\s*$")
# curl answers 0 to a 4xx unless told otherwise: a README command that gets an error must fail.
BLOCK_TIMEOUT_S = 300  # a hung command fails its block instead of the whole run
CURL_FAILS_ON_ERRORS = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'


@dataclass
class ShellBlock:
    line: int  # of the opening fence, 1-based
    code: str
    skip_reason: str | None  # None: the block must run


def shell_blocks(text: str) -> list[ShellBlock]:
    """The ```bash blocks of a markdown text with their skip markers; a marker without a reason is refused."""
    blocks = []
    for match in BLOCK.finditer(text):
        if match.group(1) not in ("bash", "sh", "shell"):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP.match(before.strip())
        line = text.count("\n", 0, match.start()) + 1
        if marker is not None and not marker.group(1):
            raise ValueError(f"line {line}: a skip marker needs its reason: <!-- skip: why -->")
        blocks.append(ShellBlock(line=line, code=match.group(2), skip_reason=marker.group(1) if marker else None))
    return blocks


def run_blocks(blocks: list[ShellBlock], *, cwd: Path, env: dict[str, str], server_url: str) -> list[str]:
    """Runs the unmarked blocks in order; returns one line per block that failed (its line and output)."""
    failures = []
    for block in blocks:
        if block.skip_reason is not None:
            continue
        script = CURL_FAILS_ON_ERRORS + block.code.replace(README_URL, server_url)
        try:
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired as expired:
            failures.append(f"README.md line {block.line}: still running after {BLOCK_TIMEOUT_S} s\n{expired.stderr}")
            continue
        if done.returncode != 0:
            failures.append(
                f"README.md line {block.line}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    return failures


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scratch_folder(tmp_path: Path) -> Path:
    """The repository's top-level entries linked into `tmp_path`, so outputs (runs/, *.onnx) land there, plus
    a bus.jpg: ../shared's, or a generated photograph-sized image where that is absent."""
    for entry in REPO_ROOT.iterdir():
        if entry.name not in (".git", "runs"):
            (tmp_path / entry.name).symlink_to(entry)
    bus = SHARED_DATA / "demo-images" / "bus.jpg"
    if bus.exists():
        shutil.copyfile(bus, tmp_path / "bus.jpg")
    else:
        pixels = np.random.default_rng(0).integers(0, 256, size=(1080, 810, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "bus.jpg", quality=90)
    return tmp_path


def test_shell_blocks_and_their_markers():
    text = (
        "intro\n```bash\necho one\n```\n<!-- skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n"
        "```text\nnot a command\n```\n```python\nprint()\n```\n"
    )
    assert shell_blocks(text) == [ShellBlock(2, "echo one\n", None), ShellBlock(6, "nvidia-smi\n", "needs a GPU")]
    with pytest.raises(ValueError, match="line 2: a skip marker needs its reason"):
        shell_blocks("<!-- skip: -->\n```bash\ntrue\n```\n")


def test_an_unmarked_block_that_fails_fails(tmp_path):
    blocks = shell_blocks(
        "```bash\ntrue\n```\n```bash\nfalse\ntrue\n```\n<!-- skip: not here -->\n```bash\nexit 3\n```\n"
    )
    failures = run_blocks(blocks, cwd=tmp_path, env=dict(os.environ), server_url=README_URL)
    assert len(failures) == 1 and failures[0].startswith("README.md line 4: exit 1")


def test_every_readme_command_runs(tmp_path):
    blocks = shell_blocks((REPO_ROOT / "README.md").read_text())
    assert [block for block in blocks if block.skip_reason is None], "the README runs no command at all"
    cwd = scratch_folder(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python` is this venv's
        "PYTHONPATH": str(REPO_ROOT),
        "PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    server_log = (tmp_path / "server.log").open("w")  # a file, not a pipe nobody drains while blocks run
    server = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=cwd, env=env, stdout=server_log, stderr=subprocess.STDOUT
    )
    server_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{server_url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server was not ready within 120 s"
            time.sleep(0.2)
        failures = run_blocks(blocks, cwd=cwd, env=env, server_url=server_url)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server_log.close()
    assert not failures, "\n\n".join(failures)
    assert (cwd / "runs" / "mine" / "model.safetensors").exists() and (
        cwd / "runs" / "mine-eval" / "eval.json"
    ).exists()
    assert (cwd / "runs" / "predict" / "predictions.jsonl").read_text().count("\n") == 1
