"""CIFAR-10 on the training device (training.device_cifar): the same crops, flips and losses as the per-sample
path, exact resume after kill -9, packing, and clear errors; on a generated CIFAR-like tarball."""

from pathlib import Path

import pytest
import torch
from cifar_data import COLOURS, write_cifar_tarball
from training_scripts import assert_resumes_exactly_after_kill_9, train_losses

from training.classification_data import DatasetError, extract_once, find_split_root
from training.config import make_config
from training.device_cifar import (
    DeviceImages,
    DeviceTrainBatches,
    Normalizer,
    augment,
    cifar_crop_flip_params,
    load_cifar_arrays,
    mt19937_first_outputs,
    pack,
)
from training.device_data import main as device_data_main
from training.pretrain import RECIPES, PretrainConfig, main
from training.sampler import ResumableBatchSampler, SeededDataset
from training.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_train_transform

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cifar_tarball(tmp_path_factory) -> Path:
    return write_cifar_tarball(
        tmp_path_factory.mktemp("cifar") / "cifar10-jpeg.tar.gz", per_split={"train": 16, "test": 8}
    )


def test_replayed_generator_matches_torch_for_any_seed():
    seeds = torch.cat([torch.randint(0, 2**62, (300,)), torch.tensor([0, 1, 2**32 - 1, 2**32, 2**62 - 1])])
    generator = torch.Generator()
    expected = []
    for seed in seeds.tolist():
        generator.manual_seed(seed)
        # a small range takes one 32-bit output modulo the range: 2**16 keeps its low 16 bits
        expected.append([int(torch.randint(0, 2**16, (), generator=generator)) for _ in range(3)])
    assert (mt19937_first_outputs(seeds, 3) & 0xFFFF).tolist() == expected
    top, left, flip = cifar_crop_flip_params(seeds, padding=4)
    assert 0 <= int(top.min()) and int(top.max()) == 8 and int(left.max()) == 8
    assert 0.4 < flip.float().mean() < 0.6


def test_device_crops_and_flips_equal_the_per_sample_path(cifar_tarball, tmp_path):
    """Same (index, seed) keys -> the same normalised pixels as SeededDataset + cifar_train_transform."""
    arrays = load_cifar_arrays(cifar_tarball, cache_dir=tmp_path / "cache")
    split = DeviceImages(arrays.train_images, arrays.train_labels, classes=arrays.classes, padding=4, device=CPU)
    per_sample = SeededDataset(split, cifar_train_transform(crop_size=32, padding=4))
    keys = [(index % len(split), seed) for index, seed in enumerate(torch.randint(0, 2**62, (96,)).tolist())]
    indices, seeds = torch.tensor([k[0] for k in keys]), torch.tensor([k[1] for k in keys])
    ours = Normalizer(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=CPU)(augment(split, indices, seeds, crop_size=32))
    reference = torch.stack([per_sample[key][0] for key in keys])
    assert torch.equal(ours, reference)
    top, left, flip = cifar_crop_flip_params(seeds, padding=4)
    assert flip.any() and not flip.all() and len(set(top.tolist())) > 3  # the keys did exercise crops and flips


def test_batches_follow_the_sampler_and_resume_mid_epoch(cifar_tarball, tmp_path):
    arrays = load_cifar_arrays(cifar_tarball, cache_dir=tmp_path / "cache")
    split = DeviceImages(arrays.train_images, arrays.train_labels, classes=arrays.classes, padding=4, device=CPU)
    sampler = ResumableBatchSampler(dataset_size=len(split), global_batch_size=8, seed=3)
    batches = DeviceTrainBatches(split, sampler=sampler, crop_size=32,
                                 normalizer=Normalizer(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=CPU))  # fmt: skip
    sampler.set_epoch(2)
    whole_epoch = list(batches)
    sampler.set_epoch(2, start_step=4)
    resumed = list(batches)
    assert len(whole_epoch) == 6 and len(resumed) == 2
    for (images, labels), (images_again, labels_again) in zip(whole_epoch[4:], resumed):
        assert torch.equal(images, images_again) and torch.equal(labels, labels_again)
    keys = sampler.epoch_batches(2)[0]
    assert whole_epoch[0][1].tolist() == [int(arrays.train_labels[index]) for index, _ in keys]
    sampler.set_epoch(3)
    assert not torch.equal(next(iter(batches))[0], whole_epoch[0][0])  # a new epoch, new order and crops


def test_a_tarball_with_mismatched_splits_is_named(tmp_path):
    tarball = write_cifar_tarball(tmp_path / "odd.tar.gz", per_split={"train": 1, "val": 1})
    with pytest.raises(DatasetError, match="'test' has classes \\[\\], expected those of 'train'"):
        load_cifar_arrays(tarball)


def test_pack_round_trip_and_errors(cifar_tarball, tmp_path, capsys):
    packed = tmp_path / "cifar_uint8.pt"
    assert device_data_main(["pack", str(cifar_tarball), "-o", str(packed), "--cache_dir", str(tmp_path / "c")]) == 0
    assert "48 training and 24 test images" in capsys.readouterr().out
    # The tarball is decoded without extraction; the extracted folders (the per-sample path's) must agree.
    extracted = load_cifar_arrays(find_split_root(extract_once(cifar_tarball, tmp_path / "c"), "test"))
    loaded = load_cifar_arrays(packed)
    assert torch.equal(extracted.train_images, loaded.train_images) and loaded.classes == sorted(COLOURS)
    assert torch.equal(extracted.test_images, loaded.test_images)
    assert torch.equal(extracted.train_labels, loaded.train_labels)
    assert loaded.train_images.shape == (48, 32, 32, 3) and loaded.train_images.dtype == torch.uint8
    with pytest.raises(ValueError, match="must end with .pt"):
        pack(loaded, tmp_path / "cifar.npz")
    (tmp_path / "foreign.pt").write_bytes(b"not a torch file")
    with pytest.raises(DatasetError, match="cannot read packed CIFAR file"):
        load_cifar_arrays(tmp_path / "foreign.pt")
    assert device_data_main(["pack", str(tmp_path / "missing.tar.gz"), "-o", str(packed)]) == 2
    assert "CIFAR data not found" in capsys.readouterr().err


def device_config(data: Path, output_dir: Path, **overrides) -> PretrainConfig:
    """The CIFAR recipe shrunk to seconds: ResNet-20 on 48 images, batch 8 (6 iterations per epoch)."""
    values = {**RECIPES["cifar10"], "data_path": str(data), "output_dir": str(output_dir),
              "cache_dir": str(output_dir.parent / "cache"), "batch_size": 8, "lr_reference_batch": 8, "lr": 0.05,
              "max_iterations": 12, "lr_milestones": (9,), "log_every": 1, "eval_every": 6, "workers": 0,
              "tensorboard": False, "data_on_device": True, **overrides}  # fmt: skip
    return make_config(PretrainConfig, values)


def test_on_device_training_gives_the_per_sample_paths_losses(cifar_tarball, tmp_path):
    on_device = main(device_config(cifar_tarball, tmp_path / "device"))
    per_sample = main(device_config(cifar_tarball, tmp_path / "loader", data_on_device=False))
    device_losses, loader_losses = train_losses(tmp_path / "device"), train_losses(tmp_path / "loader")
    assert sorted(device_losses) == list(range(1, 13))
    assert device_losses == pytest.approx(loader_losses, rel=1e-5, abs=1e-6)
    assert on_device["top1_error_center"] == per_sample["top1_error_center"]


def test_on_device_training_from_a_packed_file_and_bad_settings(cifar_tarball, tmp_path):
    packed = pack(load_cifar_arrays(cifar_tarball, cache_dir=tmp_path / "cache"), tmp_path / "packed.pt")
    results = main(device_config(packed, tmp_path / "run", max_iterations=6))
    assert 0 <= results["top1_error_center"] <= 1 and (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="--augmentation cifar"):
        main(device_config(packed, tmp_path / "bad", augmentation="imagenet"))


@pytest.mark.slow
def test_on_device_resume_after_kill_9_continues_exactly(cifar_tarball, tmp_path):
    reference = device_config(cifar_tarball, tmp_path / "reference", max_iterations=16, checkpoint_every=4)
    killed = device_config(cifar_tarball, tmp_path / "killed", max_iterations=16, checkpoint_every=4)
    assert_resumes_exactly_after_kill_9("pretrain.py", PretrainConfig, reference, killed, first_checkpoint=4,
                                        timeout=240)  # fmt: skip
