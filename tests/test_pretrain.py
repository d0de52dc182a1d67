"""training/pretrain.py end to end on generated class folders: it learns, resumes exactly after kill -9,
runs as 2 DDP processes, writes a serving checkpoint that initialises a detector backbone."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from training_scripts import (
    TORCHRUN_2_PROCESSES,
    assert_resumes_exactly_after_kill_9,
    run_script,
    train_losses,
)

from backbone import create_model
from backbone.pretrained import load_backbone_weights
from backbone.serving_checkpoint import load_classifier
from training.config import make_config
from training.plots import read_metrics
from training.pretrain import RECIPES, PretrainConfig, main
from training.run_checkpoint import (
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)
from training.synthetic import COLOURS, write_class_folders

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("colours"), per_class={"train": 16, "val": 8})


def tiny_config(data: Path, output_dir: Path, **overrides) -> PretrainConfig:
    """The CIFAR recipe shrunk to seconds: ResNet-20 on 48 images, batch 8 (6 iterations per epoch)."""
    values = {**RECIPES["cifar10"], "data_path": str(data), "val_split": "val", "output_dir": str(output_dir),
              "batch_size": 8, "lr_reference_batch": 8, "lr": 0.05, "max_iterations": 12, "lr_milestones": (9,),
              "log_every": 1, "eval_every": 0, "workers": 0, "tensorboard": False, **overrides}  # fmt: skip
    return make_config(PretrainConfig, values)


def test_a_few_iterations_lower_the_loss_and_write_every_output(colour_data, tmp_path):
    config = tiny_config(colour_data, tmp_path / "run", max_iterations=24, lr_milestones=(18,))
    results = main(config)
    losses = list(train_losses(tmp_path / "run").values())
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6  # colours are easy: the loss must fall fast
    assert results["top1_error_center"] < 0.5  # chance is 2/3

    for name in ("last.pt", "best.pt", "metrics.jsonl", "error.png", "loss.png", "lr.png", "model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    model, manifest = load_classifier(tmp_path / "run" / "model.safetensors")
    assert manifest["class_names"] == sorted(COLOURS)
    assert manifest["preprocessing"]["size"] == 32 and len(manifest["preprocessing"]["mean"]) == 3
    assert manifest["metrics"]["top1_error_center"] == results["top1_error_center"]
    assert manifest["provenance"]["config"]["batch_size"] == 8 and manifest["provenance"]["git_commit"]
    assert model.fc.out_features == 3
    eval_records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["iteration"] for r in eval_records] == [6, 12, 18, 24]  # once per epoch


@pytest.mark.slow
def test_resume_after_kill_9_continues_exactly(colour_data, tmp_path):
    reference = tiny_config(colour_data, tmp_path / "reference", max_iterations=16, checkpoint_every=4)
    # The same run, killed with SIGKILL as soon as its first checkpoint (iteration 4, mid-epoch) exists.
    killed = tiny_config(colour_data, tmp_path / "killed", max_iterations=16, checkpoint_every=4)
    assert_resumes_exactly_after_kill_9("pretrain.py", PretrainConfig, reference, killed, first_checkpoint=4,
                                        timeout=240)  # fmt: skip
    final = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["kind"] == "final"
    assert final["top1_error_center"] == read_metrics(tmp_path / "reference" / "metrics.jsonl")[-1]["top1_error_center"]


def test_resume_continues_the_rng_streams_of_the_checkpoint(colour_data, tmp_path):
    """Pretraining draws nothing from the global streams after building the model (augmentations run under
    per-sample seeds, loaders have their own generators), so its losses cannot show a lost RNG restore:
    read the streams back instead. The checkpoint gets streams no fresh process would have."""
    main(tiny_config(colour_data, tmp_path / "run", max_iterations=2, checkpoint_every=2, eval_every=2))
    checkpoint = load_training_checkpoint(tmp_path / "run" / "last.pt")
    outside = capture_rng_state()
    random.seed(2024)
    np.random.seed(2024)
    torch.manual_seed(2024)
    moved_on = capture_rng_state()
    restore_rng_state(outside)
    save_training_checkpoint(tmp_path / "run" / "last.pt", {**checkpoint, "rng": [moved_on]})

    main(tiny_config(colour_data, tmp_path / "run", max_iterations=4, checkpoint_every=2, eval_every=2,
                     resume="auto"))  # fmt: skip
    saved = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["iteration"] == 4
    streams = saved["rng"][0]
    assert streams["python"] == moved_on["python"]
    assert torch.equal(streams["torch"], moved_on["torch"])
    assert torch.equal(streams["numpy"]["keys"], moved_on["numpy"]["keys"])
    assert streams["numpy"]["position"] == moved_on["numpy"]["position"]


@pytest.mark.slow
def test_two_ddp_processes_match_one_process_on_the_same_global_batch(colour_data, tmp_path):
    # BatchNorm normalises each process's own share of the batch (the paper's per-GPU statistics;
    # torch's SyncBatchNorm is CUDA-only), so the two runs could only differ there by design. Frozen
    # BN takes that out and leaves what DDP must guarantee: the same samples and augmentations per
    # global batch, gradients averaged over ranks, identical updates.
    # fp32 (amp "none"): "--amp auto" picks bf16 on CPUs with native bf16, whose rounding differs between
    # one batch of 8 and two of 4 by far more than the tolerance of this fp32 identity.
    common = dict(max_iterations=6, norm="frozen_bn", lr=0.001, eval_every=6, amp="none")
    run_script("pretrain.py", tiny_config(colour_data, tmp_path / "single", **common))
    run_script("pretrain.py", tiny_config(colour_data, tmp_path / "ddp", **common),
               launcher=TORCHRUN_2_PROCESSES)  # fmt: skip
    single, ddp = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert sorted(single) == sorted(ddp) == list(range(1, 7))
    assert [ddp[i] for i in single] == pytest.approx([single[i] for i in single], rel=1e-4, abs=1e-5)
    assert single[6] != single[1]  # the weights did move
    weights = [load_classifier(tmp_path / run / "model.safetensors")[0].state_dict() for run in ("single", "ddp")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=1e-4, atol=1e-5)


def test_serving_checkpoint_evaluates_and_initialises_a_detector_backbone(colour_data, tmp_path):
    trained = main(tiny_config(colour_data, tmp_path / "run", max_iterations=2, eval_every=2))
    evaluated = main(tiny_config(colour_data, tmp_path / "eval", eval_only=str(tmp_path / "run" / "model.safetensors")))
    assert evaluated == trained

    classifier, _ = load_classifier(tmp_path / "run" / "model.safetensors")
    backbone = create_model(
        "cifar_resnet20", num_classes=0, norm="frozen_bn", freeze_at=2, out_features=("res3", "res4")
    )
    load_backbone_weights(backbone, tmp_path / "run" / "model.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = classifier.forward_features(images)
        got = backbone.eval().forward_features(images)
    for name in ("res3", "res4"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)  # frozen BN folds differently
