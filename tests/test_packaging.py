"""Packaging: serving needs only the base dependencies; the training extras are named when missing."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_ONLY = ("tensorboard", "matplotlib")

# Runs `code` in a Python where importing a TRAIN_ONLY package fails as if it were not installed.
WITHOUT_TRAIN_EXTRA = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
"""


def run_without_train_extra(code: str) -> subprocess.CompletedProcess:
    script = WITHOUT_TRAIN_EXTRA.format(blocked=TRAIN_ONLY) + code
    return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_base_dependencies_are_what_serving_needs_and_training_has_an_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"]}
    assert not names & set(TRAIN_ONLY)
    assert {"torch", "torchvision", "numpy", "fastapi"} <= names
    assert {dep.split(">")[0] for dep in project["optional-dependencies"]["train"]} == set(TRAIN_ONLY)
    torch_spec = next(dep for dep in project["dependencies"] if dep.startswith("torch>"))
    assert "<" in torch_spec, "state the supported torch range, upper bound included"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "-e '.[dev]'" in makefile.split("$(VENV)/.installed:")[1].split("touch")[0]
    assert any("train" in dep for dep in project["optional-dependencies"]["dev"]), "make test must install train"


def test_the_service_and_predict_import_without_the_train_extra():
    # training.train_det needs matplotlib for its plots: its run (not its --help, nor its import) must say so
    # before it reads any data, not fail later
    result = run_without_train_extra(
        "import service.app, service.__main__, detection.predict, detection.convert\n"
        "from training.train_det import DetTrainConfig, main\n"
        "main(DetTrainConfig(dataset='coco', data_path='no-such-folder'))\n"
    )
    assert "training's plots need matplotlib, part of the `train` extra" in result.stderr, result.stderr[-2000:]
    result = run_without_train_extra(
        "import service.app, service.__main__, detection.predict, detection.convert\n"
        "from service.app import create_app\n"
        "import sys; assert not {'matplotlib', 'tensorboard'} & set(sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_tensorboard_missing_is_named_with_the_way_out(tmp_path):
    code = (
        "from training.run_log import RunLog\n"
        "from training.distributed import DistributedContext\n"
        "import torch\n"
        "ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device('cpu'))\n"
        f"RunLog(output_dir={str(tmp_path)!r}, ctx=ctx, total_iterations=1, start_iteration=0,"
        " images_per_iteration=1, tensorboard=True)\n"
    )
    result = run_without_train_extra(code)
    assert result.returncode != 0
    assert "pass --no-tensorboard" in result.stderr, result.stderr[-2000:]
