"""One copy of each input rule: PIL-to-RGB for the detector and the service, and a classifier's preprocessing
from its manifest for training's evaluation and the service."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from backbone import create_model
from backbone.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ClassifierPreprocessing
from backbone.serving_checkpoint import load_classifier, save_classifier
from detection.decoding import DecodedImage, decode_image
from detection.images import to_float_image
from service.predictors import ClassifierPredictor


def tiff(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("value", [2**30, 2**31 - 1, 70_000])
def test_a_32_bit_tiff_means_the_same_to_the_detector_and_the_service(value):
    """The detector divided every "I" image by 65535: a 32-bit TIFF at half range turned white, not grey."""
    data = tiff(Image.new("I", (4, 3), value))
    served = pil_to_tensor(decode_image(data, max_pixels=10_000, label="deep.tiff").to_pil()).float() / 255
    detected = to_float_image(Image.open(io.BytesIO(data)))
    assert detected.shape == served.shape == (3, 3, 4)
    assert float((detected - served).abs().max()) <= 0.5 / 255 + 1e-6


def test_manifest_defaults_follow_the_stem_and_round_trip():
    assert ClassifierPreprocessing.from_manifest({}, stem="cifar") == ClassifierPreprocessing(size=32, resize=32)
    imagenet = ClassifierPreprocessing.from_manifest({"size": 224})
    assert (imagenet.resize, imagenet.mean, imagenet.std) == (256, IMAGENET_MEAN, IMAGENET_STD)
    assert ClassifierPreprocessing.from_manifest(imagenet.to_manifest()) == imagenet
    with pytest.raises(ValueError, match="resize 30 is smaller than the crop size 32"):
        ClassifierPreprocessing(size=32, resize=30)


def test_the_service_serves_with_the_preprocessing_training_saved(tmp_path):
    trained = ClassifierPreprocessing(size=40, resize=48, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    path = save_classifier(tmp_path / "model.safetensors", model=create_model("cifar_resnet20", base_width=4),
                           architecture="cifar_resnet20", class_names=[str(i) for i in range(10)],
                           preprocessing=trained.to_manifest())  # fmt: skip
    model, manifest = load_classifier(path)
    predictor = ClassifierPredictor(model, class_names=manifest["class_names"], preprocessing=manifest["preprocessing"],
                                    device=torch.device("cpu"), optimize=False, bf16=False)  # fmt: skip
    assert predictor.preprocessing == trained
    generator = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (70, 90, 3), generator=generator, dtype=torch.uint8).numpy())
    # the service's 8-bit region resize and training's evaluation transform: the same pixels within one level
    difference = (predictor.prepare(DecodedImage(np.asarray(image))) - trained.transform()(image)) * torch.tensor(
        trained.std
    ).view(3, 1, 1)
    assert predictor.prepare(DecodedImage(np.asarray(image))).shape == (3, 40, 40)
    assert float(difference.abs().max()) * 255 <= 1.01
