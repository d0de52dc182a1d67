"""The shared training engine: config flags, resumable sampling, LR schedule, checkpoints, logs, plots."""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from backbone.flags import option
from backbone.weights import CheckpointError
from training import run_checkpoint as training_checkpoint
from training.config import config_to_dict, format_config, make_config, parse_config
from training.distributed import DistributedContext
from training.loop import (
    BestMetric,
    Step,
    iterate_batches,
    log_training,
    prepare_model,
    run_command,
    train_step,
    unwrap_model,
)
from training.meters import MetricWindow
from training.plots import plot_error_curves, plot_run, read_metrics
from training.precision import Precision, flush_denormals
from training.run_checkpoint import (
    RunCheckpoints,
    capture_rng_state,
    load_training_checkpoint,
    restore_rng_state,
    resume_training,
    save_training_checkpoint,
)
from training.run_log import RunLog
from training.sampler import ResumableBatchSampler, SeededDataset
from training.schedule import LRSchedule

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass
class ToyConfig:
    lr: float = option(0.1, "Learning rate at batch 256.")
    steps: int = 10
    name: str = "toy"
    amp: bool = False
    milestones: tuple[int, ...] = (3, 6)


# --- config -------------------------------------------------------------------------------------


def test_config_flags_recipes_and_round_trip():
    recipes = {"short": {"steps": 2, "milestones": (1,)}}
    cfg = parse_config(ToyConfig, ["--recipe", "short", "--lr", "0.5", "--amp", "true", "--name", "x"], recipes=recipes)
    assert cfg == ToyConfig(lr=0.5, steps=2, name="x", amp=True, milestones=(1,))
    assert parse_config(ToyConfig, ["--milestones", "5", "7", "9"]).milestones == (5, 7, 9)
    assert parse_config(ToyConfig, ["--milestones"]).milestones == ()
    # What a checkpoint stores (JSON-able, tuples as lists) rebuilds the same config.
    assert make_config(ToyConfig, config_to_dict(cfg)) == cfg
    assert "milestones" in format_config(cfg) and "(1,)" in format_config(cfg)


def test_config_rejects_bad_values_and_unknown_flags(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--amp", "maybe"])
    assert "expected true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--steps", "ten"])
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--no_such_key", "1"])
    with pytest.raises(ValueError, match="unknown ToyConfig fields: bogus"):
        make_config(ToyConfig, {"bogus": 1})


def test_help_text_comes_from_the_field_itself(capsys):
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--help"])
    assert "Learning rate at batch 256. (default: 0.1)" in " ".join(capsys.readouterr().out.split())


# --- sampler ------------------------------------------------------------------------------------


def test_ranks_split_every_global_batch_exactly_like_one_process():
    single = ResumableBatchSampler(dataset_size=37, global_batch_size=8, seed=3)
    ranks = [ResumableBatchSampler(dataset_size=37, global_batch_size=8, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        whole = list(single)
        shares = [list(sampler) for sampler in ranks]
        assert len(whole) == 4 and all(len(batch) == 8 for batch in whole)  # 37 -> 4 whole batches
        assert all(len(share) == 4 and all(len(batch) == 4 for batch in share) for share in shares)
        for step in range(4):
            # the same images with the same augmentation seeds
            assert sorted(whole[step]) == sorted(shares[0][step] + shares[1][step])
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert [key for batch in first for key in batch] != [key for batch in single for key in batch]  # reshuffled


def test_sampler_resumes_mid_epoch_with_the_remaining_batches():
    sampler = ResumableBatchSampler(dataset_size=50, global_batch_size=10, rank=1, world_size=2, seed=0)
    sampler.set_epoch(2)
    whole_epoch = list(sampler)
    sampler.set_epoch(2, start_step=3)
    assert list(sampler) == whole_epoch[3:] and len(sampler) == 2
    with pytest.raises(ValueError, match="start_step must be in"):
        sampler.set_epoch(0, start_step=5)
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        ResumableBatchSampler(dataset_size=50, global_batch_size=10, world_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableBatchSampler(dataset_size=5, global_batch_size=10)


def test_grouped_batches_hold_one_group_and_resume_too():
    groups = [index % 3 for index in range(60)]  # e.g. aspect-ratio bins of a detection dataset
    sampler = ResumableBatchSampler(dataset_size=60, global_batch_size=8, rank=0, world_size=2, group_ids=groups)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == sampler.steps_per_epoch == 7 and all(len(batch) == 4 for batch in batches)
    single_group = [len({groups[index] for index, _ in batch}) == 1 for batch in batches]
    assert sum(single_group) >= 5  # only the end-of-epoch leftovers may mix groups
    used = sorted(key for batch in batches for key in batch)
    assert used == sorted(sampler.epoch_keys(1)[0::2])  # every key of this rank once
    sampler.set_epoch(1, start_step=4)
    assert list(sampler) == batches[4:]
    with pytest.raises(ValueError, match="group_ids has 3 entries for 60 samples"):
        ResumableBatchSampler(dataset_size=60, global_batch_size=8, group_ids=[0, 1, 2])


class RandomNoise:
    """An augmentation that draws from torch's global RNG, as torchvision's do."""

    def __call__(self, image):
        return image + torch.rand(3)


def test_seeded_dataset_repeats_augmentations_and_leaves_the_global_rng_alone():
    dataset = SeededDataset([(torch.zeros(3), 0), (torch.ones(3), 1)], RandomNoise())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second = dataset[(1, 42)], dataset[(1, 42)]
    assert torch.equal(first[0], second[0]) and first[1] == 1
    assert not torch.equal(dataset[(1, 43)][0], first[0])
    assert torch.equal(torch.get_rng_state(), before)


class NoiseWithTarget:
    """A joint (detection-style) augmentation: the image and its target move together."""

    def __call__(self, image, target):
        shift = torch.rand(3)
        return image + shift, {"label": target, "shift": shift}


def test_seeded_dataset_plain_indices_and_joint_transforms():
    data = [(torch.zeros(3), 0), (torch.full((3,), 5.0), 1)]
    plain = SeededDataset(data, lambda image: image * 2)  # evaluation: deterministic, keys are indices
    image, label = plain[1]
    assert torch.equal(image, torch.full((3,), 10.0)) and label == 1 and len(plain) == 2
    joint = SeededDataset(data, NoiseWithTarget(), joint=True)
    image, target = joint[(1, 42)]
    assert target["label"] == 1 and torch.equal(image, 5.0 + target["shift"])
    again, _ = joint[(1, 42)]
    assert torch.equal(again, image) and not torch.equal(joint[(1, 43)][0], image)


def test_iterate_batches_from_iteration_k_gives_the_uninterrupted_batches():
    data = SeededDataset([(torch.tensor([float(i)]), i) for i in range(20)], RandomNoise())
    sampler = ResumableBatchSampler(dataset_size=20, global_batch_size=4, seed=1)
    loader = DataLoader(data, batch_sampler=sampler)
    full = [(s.iteration, s.batch[0].clone()) for s in iterate_batches(loader, sampler, start_iteration=0,
                                                                        max_iterations=13)]  # fmt: skip
    tail = iterate_batches(loader, sampler, start_iteration=7, max_iterations=13)
    resumed = [(s.iteration, s.batch[0].clone()) for s in tail]
    assert [s.due(5) for s in iterate_batches(loader, sampler, start_iteration=8, max_iterations=13)] == [
        False, True, False, False, True  # done 9, 10, 11, 12, and 13 (the end)
    ]  # fmt: skip
    assert [it for it, _ in full] == list(range(13))
    assert [it for it, _ in resumed] == list(range(7, 13))
    for (it_a, a), (it_b, b) in zip(full[7:], resumed):
        assert it_a == it_b and torch.equal(a, b)


# --- schedule -------------------------------------------------------------------------------------


def test_schedule_steps_warmup_and_plateau():
    steps = LRSchedule(base_lr=0.1, milestones=(32000, 48000))  # the paper's CIFAR schedule
    assert [steps.lr_at(i) for i in (0, 31999, 32000, 48000)] == pytest.approx([0.1, 0.1, 0.01, 0.001])

    warm = LRSchedule(base_lr=0.1, warmup_iterations=2000, warmup_factor=0.1)  # ResNet-110's 0.01 warm-up
    assert warm.lr_at(0) == pytest.approx(0.01) and warm.in_warmup(399)
    warm.end_warmup(400)
    assert warm.lr_at(401) == pytest.approx(0.1) and not warm.in_warmup(401)
    assert LRSchedule(base_lr=0.1, warmup_iterations=2000, warmup_factor=0.1).lr_at(2000) == pytest.approx(0.1)

    linear = LRSchedule(base_lr=0.02, warmup_iterations=1000, warmup_factor=0.001, warmup_method="linear")
    assert linear.lr_at(0) == pytest.approx(0.02 * 0.001) and linear.lr_at(500) == pytest.approx(0.02 * 0.5005)

    plateau = LRSchedule(base_lr=0.1, plateau_patience=2)
    drops = [plateau.observe(error) for error in (0.5, 0.4, 0.4, 0.41, 0.3, 0.3, 0.3)]
    assert drops == [False, False, False, True, False, False, True]
    assert plateau.lr_at(0) == pytest.approx(0.001)
    restored = LRSchedule(base_lr=0.1, plateau_patience=2)
    restored.load_state_dict(plateau.state_dict())
    assert restored.lr_at(0) == pytest.approx(0.001) and restored.best_metric == 0.3

    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    assert steps.apply(optimizer, 40000) == pytest.approx(0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="increasing"):
        LRSchedule(base_lr=0.1, milestones=(5, 3))


# --- checkpoints ----------------------------------------------------------------------------------


def test_training_checkpoint_round_trip_and_rng_restore(tmp_path):
    model = nn.Linear(3, 2)
    path = save_training_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "iteration": 7,
                                                           "config": {"lr": 0.1, "milestones": [1, 2]}})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind
    state = load_training_checkpoint(path)
    assert state["iteration"] == 7 and torch.equal(state["model"]["weight"], model.weight.detach())

    random.seed(1)
    torch.manual_seed(1)
    rng = capture_rng_state()
    expected = (random.random(), torch.rand(2))
    restore_rng_state(load_training_checkpoint(save_training_checkpoint(tmp_path / "rng.pt", {"rng": rng}))["rng"])
    assert random.random() == expected[0] and torch.equal(torch.rand(2), expected[1])


def _draws() -> tuple:
    """One draw from each stream a checkpoint carries; numpy's first normal is the cached second half of
    the last Box-Muller pair, so the gauss cache is read back too."""
    return random.random(), float(np.random.standard_normal()), int(np.random.randint(1 << 30)), torch.rand(3)


def test_resume_restores_this_ranks_rng_streams_numpy_included(tmp_path, capsys, monkeypatch):
    # one process plays every rank: each rank's check that last.pt exists everywhere sees only itself
    monkeypatch.setattr("training.run_checkpoint.all_gather_objects", lambda value, ctx: [value] * ctx.world_size)
    rng, expected = [], []
    for rank in (0, 1):  # what each rank of a 2-process run saved, and what it drew next
        random.seed(100 + rank)
        np.random.seed(100 + rank)
        torch.manual_seed(100 + rank)
        np.random.standard_normal()  # leaves a cached gaussian
        rng.append(capture_rng_state())
        expected.append(_draws())
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule, scaler, window = LRSchedule(base_lr=0.1), torch.amp.GradScaler("cpu", enabled=False), MetricWindow()
    path = save_training_checkpoint(tmp_path / "last.pt", {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(), "window": window.state_dict(), "iteration": 5, "rng": rng, "config": {},
    })  # fmt: skip
    parts = dict(model=model, optimizer=optimizer, schedule=schedule, scaler=scaler, window=window)

    def resume(rank: int, world_size: int, resume: str = "auto"):
        random.seed(7)  # whatever the new process drew before resuming
        np.random.seed(7)
        torch.manual_seed(7)
        ctx = DistributedContext(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"))
        return resume_training(resume, output_dir=tmp_path, config={}, ctx=ctx, **parts)

    def assert_continues(streams: tuple) -> None:
        draws = _draws()
        assert draws[:3] == streams[:3] and torch.equal(draws[3], streams[3])

    assert resume(1, 2)["iteration"] == 5
    assert_continues(expected[1])  # rank 1 takes its own streams, not rank 0's
    assert resume(0, 2, resume=str(path))["iteration"] == 5
    assert_continues(expected[0])
    resume(2, 3)  # another world size: every rank takes rank 0's streams
    assert_continues(expected[0])
    assert "resumed from" in capsys.readouterr().out
    assert resume(0, 1, resume="") is None
    assert resume_training("auto", output_dir=tmp_path / "fresh", config={}, ctx=CPU, **parts) is None


class Pickled:
    """Not a tensor nor a plain value: weights_only loading must refuse it (unpickling runs code)."""


def test_checkpoint_is_written_beside_its_target_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "new" / "folder" / "last.pt"
    save_training_checkpoint(path, {"iteration": 1})  # creates the folders
    renames = []
    real_replace = training_checkpoint.os.replace
    monkeypatch.setattr(training_checkpoint.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    save_training_checkpoint(path, {"iteration": 2})
    ((source, target),) = renames
    assert Path(source).parent == path.parent and Path(target) == path  # a rename in one folder is atomic

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training_checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_training_checkpoint(path, {"iteration": 3})
    assert load_training_checkpoint(path)["iteration"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind


def test_checkpoint_with_foreign_objects_or_a_newer_version_is_refused(tmp_path):
    torch.save({"format": "resdet.training", "format_version": 1, "object": Pickled()}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match=r"cannot read training checkpoint .*pickle\.pt"):
        load_training_checkpoint(tmp_path / "pickle.pt")
    torch.save({"format": "resdet.training", "format_version": 2}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"future\.pt: training checkpoint version 2 is newer than this code"):
        load_training_checkpoint(tmp_path / "future.pt")


def test_truncated_or_foreign_checkpoint_names_the_file(tmp_path):
    path = save_training_checkpoint(tmp_path / "last.pt", {"model": nn.Linear(64, 64).state_dict()})
    truncated = tmp_path / "killed.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read training checkpoint .*killed\.pt"):
        load_training_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a resdet training checkpoint"):
        load_training_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_training_checkpoint(tmp_path / "missing.pt")


def test_run_checkpoints_write_last_and_best_and_resume_the_best_metric(tmp_path):
    def parts():
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return dict(model=model, optimizer=optimizer, schedule=LRSchedule(base_lr=0.1), window=MetricWindow(),
                    scaler=Precision(amp="none", device=torch.device("cpu")).scaler)  # fmt: skip

    saved = RunCheckpoints(output_dir=tmp_path, ctx=CPU, config={"lr": 0.1}, class_names=["a", "b"],
                           best=BestMetric(key="best_map", higher_is_better=True), **parts())  # fmt: skip
    assert saved.best.update(0.25) and not saved.best.update(0.2) and saved.best.value == 0.25
    saved.save(iteration=4, epoch=0, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    saved.save(iteration=6, epoch=1, is_best=True)
    assert load_training_checkpoint(tmp_path / "best.pt")["iteration"] == 6

    resumed = RunCheckpoints(output_dir=tmp_path, ctx=CPU, config={"lr": 0.1}, class_names=["a", "b"],
                             best=BestMetric(key="best_map", higher_is_better=True), **parts())  # fmt: skip
    assert resumed.resume("auto") == 6 and resumed.best.value == 0.25
    assert not resumed.best.update(0.25) and resumed.best.update(0.3)
    fresh = RunCheckpoints(output_dir=tmp_path / "new", ctx=CPU, config={}, class_names=[],
                           best=BestMetric(key="best_top1_error", higher_is_better=False), **parts())  # fmt: skip
    assert fresh.resume("auto") == 0 and fresh.best.value == math.inf


def test_log_training_stops_a_diverged_run_and_logs_the_epoch(tmp_path):
    run_log = RunLog(output_dir=tmp_path, ctx=CPU, total_iterations=10, tensorboard=False)
    window = MetricWindow()
    window.update({"loss": torch.tensor(2.0)})
    step = Step(epoch=0, iteration=4, batch=None, max_iterations=10)
    assert log_training(window, step=step, lr=0.1, steps_per_epoch=10, ctx=CPU, run_log=run_log) == {"loss": 2.0}
    window.update({"loss": torch.tensor(float("nan"))})
    with pytest.raises(FloatingPointError, match="loss is nan at iteration 5: training diverged"):
        log_training(window, step=step, lr=0.1, steps_per_epoch=10, ctx=CPU, run_log=run_log)
    run_log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["loss"], r["epoch"]) for r in records] == [(5, 2.0, 0.5)]


def test_run_command_ends_a_user_error_in_one_line_and_lets_bugs_through():
    def missing_folder(config):
        raise FileNotFoundError(f"--data_path {config} is not a folder")

    with pytest.raises(SystemExit, match="^error: --data_path nowhere is not a folder$"):
        run_command(missing_folder, "nowhere", user_errors=(FileNotFoundError, ValueError))
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_command(lambda config: config["absent"], {}, user_errors=(FileNotFoundError, ValueError))


# --- the step, the meters, the logs -----------------------------------------------------------------


def test_train_step_lowers_the_loss_and_unwrap_finds_the_module(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    wrapped = prepare_model(model, ctx=CPU, channels_last=True)
    assert unwrap_model(wrapped) is model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    images, labels = torch.randn(8, 3, 8, 8), torch.tensor([0, 1] * 4)
    images[labels == 1] += 1.0

    def compute_loss(net, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
        return loss, {}

    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu sse2 avx2\n")  # a CPU without native bf16: fp32
    precision = Precision(amp="auto", device=torch.device("cpu"), cpuinfo=tmp_path / "cpuinfo")
    assert precision.mode == "none" and not precision.scaler.is_enabled()
    losses = [train_step(model=wrapped, batch=(images, labels), compute_loss=compute_loss, optimizer=optimizer,
                         precision=precision)["loss"].item() for _ in range(20)]  # fmt: skip
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        Precision(amp="fp16", device=torch.device("cpu"))


def test_metric_window_averages_steps_and_survives_a_checkpoint():
    window = MetricWindow()
    window.update({"loss": torch.tensor(1.0), "error": torch.tensor(0.5)})
    copy = MetricWindow()
    copy.load_state_dict(window.state_dict(), device=torch.device("cpu"))
    for meter in (window, copy):
        meter.update({"loss": torch.tensor(3.0), "error": torch.tensor(0.25)})
    assert window.reduce(CPU) == copy.reduce(CPU) == pytest.approx({"loss": 2.0, "error": 0.375})
    assert window.reduce(CPU) == {}  # a new window starts after each read


def test_run_log_writes_jsonl_tensorboard_and_plots_and_truncates_on_resume(tmp_path):
    log = RunLog(output_dir=tmp_path, ctx=CPU, total_iterations=4, images_per_iteration=8)
    for iteration in range(1, 5):
        log.step()
        log.log("train", iteration, {"loss": 2.0 / iteration, "error": 0.9 / iteration, "lr": 0.1})
        if iteration % 2 == 0:
            log.log("eval", iteration, {"top1_error": 1.0 / iteration, "top5_error": 0.1})
    log.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["train", "train", "eval", "train", "train", "eval"]
    assert all(r["images_per_s"] > 0 for r in records if r["kind"] == "train")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    resumed = RunLog(output_dir=tmp_path, ctx=CPU, total_iterations=4, start_iteration=2, tensorboard=False)
    resumed.close()
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 2]

    written = plot_run(tmp_path, label="toy")
    assert sorted(p.name for p in written) == ["error.png", "loss.png", "lr.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"kind": "eval", "iteration": 2, "top1_error": 0.2}) + "\n")
    figure = plot_error_curves({"a": tmp_path / "metrics.jsonl", "b": other}, tmp_path / "fig6.png")
    assert figure.stat().st_size > 1000


def test_other_ranks_write_nothing(tmp_path):
    rank1 = DistributedContext(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    log = RunLog(output_dir=tmp_path / "run", ctx=rank1, total_iterations=3)
    log.log("train", 1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_flush_denormals_zeroes_subnormal_cpu_arithmetic():
    supported = torch.set_flush_denormal(True)  # probe, then back to PyTorch's default
    torch.set_flush_denormal(False)
    if not supported:
        pytest.skip("this CPU has no flush-to-zero mode (needs SSE3 on x86)")
    tiny = torch.tensor([1e-39])  # subnormal in fp32
    assert (tiny * 1.0).item() != 0.0
    try:
        flush_denormals(torch.device("cpu"))
        assert (tiny * 1.0).item() == 0.0
        assert (torch.tensor([1e-30]) * 1.0).item() == pytest.approx(1e-30)  # normal floats untouched
    finally:
        torch.set_flush_denormal(False)
