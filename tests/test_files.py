"""Every file the project writes is whole or absent, and as readable as the user's umask allows."""

import os
import stat

import pytest
import torch

from backbone.files import write_atomically
from backbone.registry import create_model
from backbone.serving_checkpoint import save_classifier
from detection.evaluation import write_json
from training.run_checkpoint import save_training_checkpoint


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_atomically(tmp_path / "report.json", lambda temporary: temporary.write_text("old"))

    def fails_half_way(temporary):
        temporary.write_text("half of the new")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        write_atomically(target, fails_half_way)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_the_temporary_keeps_the_suffix_and_the_folder_is_made(tmp_path):
    seen = []
    path = write_atomically(tmp_path / "new" / "image.png", lambda temporary: seen.append(temporary) or
                            temporary.write_bytes(b"x"))  # fmt: skip
    assert path.read_bytes() == b"x" and seen[0].suffix == ".png" and seen[0].parent == path.parent


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_is_0666_less_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        path = write_atomically(tmp_path / "file.bin", lambda temporary: temporary.write_bytes(b"1"))
    finally:
        os.umask(previous)
    assert mode(path) == expected


def test_reports_checkpoints_and_models_are_readable_by_others(tmp_path, umask_022):
    """eval.json, detections.json and last.pt came out 0600 (tempfile's mode) before one writer served all."""
    written = [
        write_json(tmp_path / "eval.json", {"AP": float("nan")}),
        save_training_checkpoint(tmp_path / "last.pt", {"iteration": 3}),
        save_classifier(
            tmp_path / "model.safetensors",
            model=create_model("cifar_resnet20", num_classes=2),
            architecture="cifar_resnet20",
            class_names=["a", "b"],
        ),  # fmt: skip
    ]
    assert {path.name: mode(path) for path in written} == {name: 0o644 for name in
                                                          ("eval.json", "last.pt", "model.safetensors")}  # fmt: skip
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 3
