"""Regressions from the first run on a GPU (issue 17), each caught here on the CPU.

Device bugs are caught on the `meta` device (a module left on the CPU next to meta weights is visible
without a GPU), RNG restore across GPU counts with a simulated torch.cuda, bf16 numerics on the CPU.
"""

from pathlib import Path

import pytest
import torch
import torchvision

from detection import build_detector

TINY = dict(base_width=8, fpn_channels=16, representation_size=32, min_size=(64,), max_size=96)


@pytest.mark.parametrize("head", ["fpn", "c4"])
@pytest.mark.parametrize(("device", "dtype"), [("meta", torch.float32), ("cpu", torch.float64)])
def test_optimize_for_inference_keeps_every_module_on_the_weights_device_and_dtype(head, device, dtype):
    model = build_detector(backbone="resnet18", head=head, num_classes=3, **TINY).to(device=device, dtype=dtype)
    model.optimize_for_inference()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    stray = sorted(
        name
        for name, tensor in tensors
        if tensor.device.type != device or (tensor.dtype.is_floating_point and tensor.dtype != dtype)
    )
    assert not stray, f"left on another device or dtype than the model's ({device}, {dtype}): {stray}"


class FakeCuda:
    """torch.cuda's RNG functions over `count` simulated devices; like the real ones, a state for a
    device index past the visible count raises IndexError."""

    def __init__(self, monkeypatch, *, count: int, current: int) -> None:
        self.states = [torch.full((16,), index, dtype=torch.uint8) for index in range(count)]
        self.current = current
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)

    def index(self, device) -> int:
        index = self.current if device == "cuda" else torch.device("cuda", device).index
        if index >= len(self.states):
            raise IndexError(f"cuda device {index} of {len(self.states)}")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [state.clone() for state in self.states]

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self.index(device)] = state.clone()

    def set_rng_state_all(self, states) -> None:
        for index, state in enumerate(states):
            self.set_rng_state(state, index)


def test_rng_state_saved_with_two_gpus_restores_on_one(monkeypatch):
    from training.run_checkpoint import capture_rng_state, restore_rng_state

    saved = FakeCuda(monkeypatch, count=2, current=1)  # rank 1 of a 2-GPU run
    saved.states[1] = torch.full((16,), 7, dtype=torch.uint8)
    state = capture_rng_state()
    resumed = FakeCuda(monkeypatch, count=1, current=0)  # the same rank resumed where one GPU is visible
    restore_rng_state(state)
    assert torch.equal(resumed.states[0], torch.full((16,), 7, dtype=torch.uint8))


def test_rng_state_of_an_old_checkpoint_with_every_gpu_restores_on_one(monkeypatch):
    from training.run_checkpoint import capture_rng_state, restore_rng_state

    state = capture_rng_state()  # CPU-only here: no "cuda" entry
    state["cuda"] = [torch.full((16,), 3, dtype=torch.uint8), torch.full((16,), 4, dtype=torch.uint8)]
    resumed = FakeCuda(monkeypatch, count=1, current=0)
    restore_rng_state(state)
    assert torch.equal(resumed.states[0], torch.full((16,), 3, dtype=torch.uint8))


def test_anchors_under_bf16_autocast_equal_float32_anchors_at_800x1344():
    from torchvision.models.detection.image_list import ImageList

    model = build_detector(backbone="resnet18", head="fpn", num_classes=3, **TINY).eval()
    rpn = model.rpn
    anchors = {}
    rpn.anchor_generator.register_forward_hook(lambda module, args, output: anchors.__setitem__("last", output))
    images = ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1344)])
    torch.manual_seed(0)
    features = {
        str(level): torch.randn(1, 16, -(-800 // 2**level), -(-1344 // 2**level)) for level in range(2, 7)
    }  # P2..P6 of an FPN
    with torch.no_grad():
        rpn(images, features)
        reference = anchors["last"][0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rpn(images, {name: feature.bfloat16() for name, feature in features.items()})
    assert anchors["last"][0].dtype == torch.float32
    assert torch.equal(anchors["last"][0], reference)


def test_frozen_batchnorm_keeps_the_bf16_input_dtype_and_fp32_values():
    from backbone.resnet import NORM_LAYERS

    torch.manual_seed(0)
    norm = NORM_LAYERS["frozen_bn"](8)
    norm.weight.uniform_(0.5, 2.0)
    norm.bias.uniform_(-1, 1)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 5, 5).bfloat16()
    reference = norm(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = norm(x)
    assert reduced.dtype == torch.bfloat16
    # two bf16 roundings (product, sum): a few units of bf16's 8-bit mantissa at these magnitudes
    assert torch.allclose(reduced.float(), reference, rtol=2**-7, atol=2**-5)
    # fp32 stays torchvision's computation bit for bit (its COCO weights give its detections in our model)
    assert torch.equal(reference, torchvision.ops.FrozenBatchNorm2d.forward(norm, x.float()))


def resume_parts(*, fp16_scaler: bool) -> dict:
    """What resume_training restores into: a one-layer model and its optimizer, schedule, scaler, window."""
    from training.meters import MetricWindow
    from training.schedule import LRSchedule

    model = torch.nn.Linear(2, 1)
    return dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        schedule=LRSchedule(base_lr=0.1),
        scaler=torch.amp.GradScaler("cpu", enabled=fp16_scaler),
        window=MetricWindow(),
    )


def test_resuming_a_bf16_checkpoint_with_fp16_names_both_settings(tmp_path):
    from backbone.weights import CheckpointError
    from training.distributed import DistributedContext
    from training.run_checkpoint import capture_rng_state, resume_training, save_training_checkpoint

    cpu = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parts = resume_parts(fp16_scaler=False)  # bf16: no loss scaling, an empty scaler state
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(iteration=5, rng=[capture_rng_state()], config={"amp": "bf16"})
    save_training_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(CheckpointError, match=r"last.pt was saved without fp16 loss scaling \(--amp bf16\)"):
        resume_training("auto", output_dir=tmp_path, config={"amp": "fp16"}, ctx=cpu, **resume_parts(fp16_scaler=True))


def test_a_checkpoint_on_rank_0_only_is_an_error_naming_the_path_and_the_ranks(tmp_path, monkeypatch):
    """Multi-node resume without a shared filesystem: last.pt on node 0's disk, rank 1 on node 1."""
    import training.run_checkpoint
    from training.distributed import DistributedContext
    from training.run_checkpoint import resume_training

    rank1 = DistributedContext(rank=1, world_size=2, local_rank=0, device=torch.device("cpu"))
    answers = {"rank 0": (True, "node0")}  # what rank 0 reports; rank 1's own answer comes from its disk
    monkeypatch.setattr(
        training.run_checkpoint, "all_gather_objects", lambda value, ctx: [answers["rank 0"], value], raising=False
    )
    with pytest.raises(FileNotFoundError, match=r"last.pt is missing on rank\(s\) \[1\] \(host\(s\) \S+\) of 2"):
        resume_training("auto", output_dir=tmp_path, config={}, ctx=rank1, **resume_parts(fp16_scaler=False))

    answers["rank 0"] = (False, "node0")  # nowhere: a fresh start, everywhere
    assert resume_training("auto", output_dir=tmp_path, config={}, ctx=rank1, **resume_parts(fp16_scaler=False)) is None
    with pytest.raises(FileNotFoundError, match="missing on rank"):  # an explicit --resume must exist everywhere
        resume_training(
            str(tmp_path / "last.pt"), output_dir=tmp_path, config={}, ctx=rank1, **resume_parts(fp16_scaler=False)
        )


def tiny_class_archive(tmp_path: Path) -> Path:
    import tarfile

    from PIL import Image

    source = tmp_path / "source" / "tiny"
    for split in ("train", "val"):
        for name, colour in (("a", (120, 60, 30)), ("b", (0, 200, 0))):
            (source / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(source / split / name / "0.jpg")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="tiny")
    return archive


class ProcessGroupStarted(Exception):
    """Raised by a stand-in start_process: the test ends where the process group would form."""


def test_pretraining_extracts_its_archive_before_the_process_group_forms(tmp_path, monkeypatch):
    """NCCL's timeout cannot run out during an ImageNet extraction that ends before init_process_group."""
    import training.loop
    import training.pretrain
    from training.config import make_config

    archive, cache = tiny_class_archive(tmp_path), tmp_path / "cache"
    seen = {}

    def start_process(**kwargs):
        seen["extracted"] = (cache / "tiny" / "tiny" / "val" / "b" / "0.jpg").is_file()
        raise ProcessGroupStarted

    monkeypatch.setattr(training.loop, "start_process", start_process)  # pretrain's main imports it when it runs
    config = make_config(training.pretrain.PretrainConfig, {"data_path": str(archive), "cache_dir": str(cache)})
    with pytest.raises(ProcessGroupStarted):
        training.pretrain.main(config)
    assert seen == {"extracted": True}


def test_every_process_of_a_node_may_extract_the_same_archive_at_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from training.classification_data import extract_once

    archive, cache = tiny_class_archive(tmp_path), tmp_path / "cache"
    with ThreadPoolExecutor(max_workers=4) as pool:
        targets = list(pool.map(lambda _: extract_once(archive, cache), range(4)))
    assert targets == [cache / "tiny"] * 4
    assert sorted(path.name for path in cache.iterdir() if not path.name.endswith(".lock")) == ["tiny"]


# --- slow on a GPU: what the training loop does per step ---------------------------------------------------


def uint8_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=generator) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 40.0], [5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 2.0, 60.0, 30.0]]), "labels": torch.tensor([3])},
    ]
    return images, targets


def test_batch_to_device_checks_targets_before_the_copy_and_makes_floats_there():
    from torchvision.transforms import v2

    from detection.transform import batch_to_device

    images, targets = uint8_batch()
    # On `meta` a data-dependent check (.any(), a boolean mask) cannot run: it would be a GPU sync.
    on_meta, meta_targets = batch_to_device(images, targets, device=torch.device("meta"), num_classes=3)
    assert all(image.device.type == "meta" and image.dtype == torch.float32 for image in on_meta)
    assert [tuple(t["boxes"].shape) for t in meta_targets] == [(1, 4), (1, 4)]  # the zero-width box dropped
    floats, _ = batch_to_device(images, targets, device=torch.device("cpu"), num_classes=3)
    for image, converted in zip(images, floats):
        assert torch.equal(converted, v2.ToDtype(torch.float32, scale=True)(image))
    targets[1]["labels"] = torch.tensor([4])
    with pytest.raises(ValueError, match=r"target 1: label 4 outside 1..3"):
        batch_to_device(images, targets, device=torch.device("meta"), num_classes=3)


def test_prepared_targets_give_the_losses_of_checked_ones():
    from detection.transform import batch_to_device

    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=3, **TINY).train()
    images, targets = uint8_batch()
    floats, prepared = batch_to_device(images, targets, device=torch.device("cpu"), num_classes=3)
    torch.manual_seed(1)
    checked, _ = model(floats, targets)
    torch.manual_seed(1)
    skipped, _ = model(floats, prepared, targets_prepared=True)
    assert checked.keys() == skipped.keys() and all(torch.equal(checked[k], skipped[k]) for k in checked)


def test_ddp_broadcasts_buffers_only_where_training_changes_them():
    from training.loop import buffers_change_in_training

    assert not buffers_change_in_training(build_detector(backbone="resnet18", head="fpn", num_classes=3, **TINY))
    trained_bn = build_detector(backbone="resnet18", head="fpn", num_classes=3, frozen_bn=False, freeze_at=0, **TINY)
    assert buffers_change_in_training(trained_bn)


def test_every_rank_draws_its_own_multi_scale_sizes():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from training.distributed import DistributedContext
    from training.loop import seed_per_rank

    def sizes(rank: int) -> list[int]:
        seed_per_rank(0, DistributedContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")))
        transform = GeneralizedRCNNTransform(tuple(range(640, 801, 32)), 1333, [0.0] * 3, [1.0] * 3)
        return [transform.torch_choice(transform.min_size) for _ in range(20)]

    assert sizes(0) == sizes(0)  # reproducible per rank
    assert sizes(0) != sizes(1)


def test_channels_last_default_follows_the_device_measurements():
    from training.det_model import detection_channels_last

    assert detection_channels_last("auto", torch.device("cpu")) is True
    assert detection_channels_last("auto", torch.device("cuda", 0)) is False
    assert detection_channels_last("true", torch.device("cuda", 0)) is True
    assert detection_channels_last("false", torch.device("cpu")) is False
    with pytest.raises(ValueError, match="--channels_last must be auto, true or false, got 'sometimes'"):
        detection_channels_last("sometimes", torch.device("cpu"))


# --- containers -------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_compose_gives_gpus_to_docker_and_podman_and_trains_with_real_flags():
    yaml = pytest.importorskip("yaml")
    import re
    from dataclasses import fields

    from training.train_det import DetTrainConfig

    # overlays, not profiles: podman-compose 1.0.3 ignores profiles (tests/test_compose_file.py)
    gpu_text, compose_text = ((REPO_ROOT / f"docker-compose.{kind}.yml").read_text() for kind in ("gpu", "train"))
    services = {"api-gpu": yaml.safe_load(gpu_text)["services"]["api"], **yaml.safe_load(compose_text)["services"]}
    for name in ("api-gpu", "train"):
        assert "nvidia.com/gpu=all" in services[name]["devices"], f"{name}: no CDI device (podman)"
        assert services[name]["deploy"]["resources"]["reservations"]["devices"], f"{name}: no Docker reservation"
    train = services["train"]
    assert "torchrun --standalone --nproc_per_node=gpu training/train_det.py" in train["command"]
    assert train["user"] and train["build"]["target"] == "train"
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", dockerfile, flags=re.MULTILINE)
    assert ("runtime", "train") in stages and "gcc" in dockerfile.split("AS train", 1)[1]
    assert stages[-1] == ("runtime", "api")  # a build without --target still gives the API image
    examples = [line for line in compose_text.splitlines() if "TRAIN_ARGS=" in line]
    deployment = (REPO_ROOT / "docs" / "DEPLOYMENT.md").read_text()
    examples += [line for line in deployment.splitlines() if "TRAIN_ARGS=" in line]
    flags = {flag for line in examples for flag in re.findall(r"--(\w+)", line)}
    assert flags and flags <= {field.name for field in fields(DetTrainConfig)}, flags
