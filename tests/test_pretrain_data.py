"""Pretraining data: class folders, CIFAR-10 python batches, archives, augmentations, and clear errors."""

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from backbone.preprocessing import ClassifierPreprocessing
from backbone.serving_checkpoint import load_classifier
from backbone.weights import CheckpointError
from training.classification_data import (
    CheckedCIFAR10,
    DatasetError,
    build_dataset,
    extract_once,
    find_split_root,
)
from training.config import make_config
from training.pretrain import RECIPES, PretrainConfig, main
from training.run_checkpoint import save_training_checkpoint
from training.transforms import PCALighting, cifar_train_transform, imagenet_train_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def write_images(folder: Path, count: int, *, size: tuple[int, int] = (32, 32), colour=(120, 60, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, colour).save(folder / f"{index}.jpg")


def quick_config(data_path: Path | str, output_dir: Path, **overrides) -> PretrainConfig:
    values = {**RECIPES["cifar10"], "data_path": str(data_path), "val_split": "val", "output_dir": str(output_dir),
              "batch_size": 4, "lr_reference_batch": 4, "max_iterations": 2, "lr_milestones": (), "log_every": 1,
              "workers": 0, "tensorboard": False, **overrides}  # fmt: skip
    return make_config(PretrainConfig, values)


# --- class folders ------------------------------------------------------------------------------------


def test_missing_split_folder_and_missing_data_path_are_named(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset folder not found: .*nowhere[/\\]train"):
        build_dataset(kind="folder", root=tmp_path / "nowhere", split="train")
    with pytest.raises(DatasetError, match="pass --data_path"):
        main(quick_config("", tmp_path / "run"))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"flat[/\\]train has no class folders"):
        build_dataset(kind="folder", root=tmp_path / "flat", split="train")


def test_empty_class_folder_is_named(tmp_path):
    write_images(tmp_path / "train" / "cat", 2)
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"class folder .*train[/\\]dog holds no images"):
        build_dataset(kind="folder", root=tmp_path, split="train")


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_unreadable_image_is_named(tmp_path, decoder):
    write_images(tmp_path / "train" / "cat", 1)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    dataset = build_dataset(kind="folder", root=tmp_path, split="train", decoder=decoder)
    image, label = dataset[[Path(path).name for path, _ in dataset.samples].index("0.jpg")]
    assert label == 0 and (image.size == (32, 32) if decoder == "pil" else image.shape == (3, 32, 32))
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.jpg"):
        dataset[[Path(path).name for path, _ in dataset.samples].index("broken.jpg")]


def test_training_stops_on_an_unreadable_image_naming_it(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            write_images(tmp_path / "data" / split / name, 4)
    (tmp_path / "data" / "train" / "b" / "3.jpg").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match=r"cannot read image .*train[/\\]b[/\\]3\.jpg"):
        main(quick_config(tmp_path / "data", tmp_path / "run", max_iterations=4))


def test_train_and_val_classes_must_match(tmp_path):
    write_images(tmp_path / "train" / "cat", 4)
    write_images(tmp_path / "val" / "cat", 2)
    write_images(tmp_path / "val" / "dog", 2)
    with pytest.raises(DatasetError, match=r"classes of .*train and .*val differ: \['dog'\]"):
        main(quick_config(tmp_path, tmp_path / "run"))


def test_corrupt_resume_checkpoint_is_named(tmp_path):
    for split in ("train", "val"):
        write_images(tmp_path / "data" / split / "a", 4)
        write_images(tmp_path / "data" / split / "b", 4, colour=(0, 200, 0))
    good = save_training_checkpoint(tmp_path / "good.pt", {"model": torch.nn.Linear(64, 64).state_dict()})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cannot read training checkpoint .*cut\.pt"):
        main(quick_config(tmp_path / "data", tmp_path / "run", resume=str(cut)))


# --- archives -------------------------------------------------------------------------------------------


def test_archive_is_extracted_once_into_the_cache_and_trained_on(tmp_path):
    source = tmp_path / "source" / "tiny"
    for split, count_b in (("train", 4), ("val", 2)):  # 4 + 2 val images: an error is never 1 - itself
        write_images(source / split / "a", 4)
        write_images(source / split / "b", count_b, colour=(0, 200, 0))
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="tiny")  # wrapped in one folder, like cifar10-jpeg.tar.gz
    cache = tmp_path / "cache"
    extracted = extract_once(archive, cache)
    marker = extracted / "tiny" / "train" / "a" / "0.jpg"
    marker.write_bytes(b"changed after extraction")
    assert extract_once(archive, cache) == extracted and marker.read_bytes() == b"changed after extraction"
    assert find_split_root(extracted, "train") == extracted / "tiny"
    with pytest.raises(DatasetError, match=r"no 'test' folder in"):
        find_split_root(extracted, "test")
    with pytest.raises(DatasetError, match=r"dataset archive not found: .*absent\.tar\.gz"):
        extract_once(tmp_path / "absent.tar.gz", cache)

    marker.unlink()
    results = main(quick_config(archive, tmp_path / "run", cache_dir=str(tmp_path / "cache2")))
    assert (tmp_path / "cache2" / "tiny" / "tiny" / "val" / "b").is_dir()
    # the reported error is the serving checkpoint's own on the 6 val images
    model, manifest = load_classifier(tmp_path / "run" / "model.safetensors")
    preprocessing = manifest["preprocessing"]
    view = ClassifierPreprocessing.from_manifest(preprocessing, stem=model.config["stem"]).transform()
    val = source / "val"
    images = torch.stack([view(Image.open(path).convert("RGB")) for path in sorted(val.glob("*/*.jpg"))])
    labels = torch.tensor([0 if path.parent.name == "a" else 1 for path in sorted(val.glob("*/*.jpg"))])
    with torch.no_grad():
        wrong = int((model(images).argmax(dim=1) != labels).sum())
    assert len(labels) == 6 and results["top1_error_center"] == pytest.approx(wrong / 6)


# --- CIFAR-10 python batches ------------------------------------------------------------------------------


def write_cifar_batches(root: Path, *, images_per_batch: int = 10) -> dict[str, str]:
    """Files in the original layout and pickle format (tiny batches); returns their md5 sums."""
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    for name in names:
        batch = {"data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
                 "labels": [int(i % 10) for i in range(images_per_batch)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in [*names, "batches.meta"]}


@pytest.fixture
def cifar_batches(tmp_path, monkeypatch) -> Path:
    """Generated batches, with torchvision's md5 table pointed at them (the real files are 170 MB)."""
    sums = write_cifar_batches(tmp_path / "cifar")
    monkeypatch.setattr(CIFAR10, "train_list", [[name, sums[name]] for name, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[name, sums[name]] for name, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})
    return tmp_path / "cifar"


def test_cifar_python_batches_load_and_train(cifar_batches, tmp_path):
    train = CheckedCIFAR10(cifar_batches, train=True)
    test = CheckedCIFAR10(cifar_batches / CIFAR10.base_folder, train=False)  # the batches folder itself works too
    assert len(train) == 50 and len(test) == 10 and train.classes[3] == "cat"
    image, label = train[13]
    assert image.size == (32, 32) and label == 3
    results = main(quick_config(cifar_batches, tmp_path / "run", dataset="cifar10", val_split="test"))
    assert set(results) == {"top1_error_center", "top5_error_center"}


def test_cifar_batch_of_the_wrong_size_is_named(cifar_batches):
    batch = cifar_batches / CIFAR10.base_folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"data_batch_3 has the wrong size or content \(1000 bytes"):
        CheckedCIFAR10(cifar_batches, train=True)
    batch.unlink()
    with pytest.raises(DatasetError, match=r"CIFAR-10 batch file missing: .*data_batch_3"):
        CheckedCIFAR10(cifar_batches, train=True)


def test_cifar_folder_missing_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(DatasetError, match=r"CIFAR-10 batches not found: .*cifar-10-batches-py.*nothing is downloaded"):
        CheckedCIFAR10(tmp_path, train=True)


# --- augmentation -------------------------------------------------------------------------------------------


def test_pca_lighting_adds_one_colour_offset_per_image():
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    torch.manual_seed(0)
    shifted = PCALighting(std=0.1)(image)
    offset = shifted - image
    assert isinstance(shifted, tv_tensors.Image)
    assert torch.allclose(offset, offset[:, :1, :1].expand_as(offset), atol=1e-6)  # the same shift at every pixel
    assert offset.abs().max() > 0
    torch.manual_seed(0)
    assert torch.equal(v2.Compose([PCALighting(std=0.1)])(image), shifted)  # seeded like every v2 transform
    assert torch.equal(PCALighting(std=0.0)(image), image)
    with pytest.raises(TypeError, match="needs a float image"):
        PCALighting()(tv_tensors.Image(torch.zeros(3, 4, 4, dtype=torch.uint8)))


def test_recipe_transforms_give_the_papers_input_sizes():
    torch.manual_seed(0)
    photo = Image.new("RGB", (400, 300), (10, 200, 30))
    imagenet = imagenet_train_transform()(photo)
    assert imagenet.shape == (3, 224, 224) and imagenet.dtype == torch.float32
    cifar = cifar_train_transform()(Image.new("RGB", (32, 32), (255, 255, 255)))
    assert cifar.shape == (3, 32, 32)
    padded = [cifar_train_transform()(Image.new("RGB", (32, 32), (255, 255, 255))) for _ in range(20)]
    # Zero padding shows up as darker borders in some crops: the crop really moves within the 40x40 pad.
    assert any(crop.min() < 0 for crop in padded) and any(crop.min() > 1.5 for crop in padded)
