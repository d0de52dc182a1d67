"""Evaluation views (centre crop, 10-crop, multi-scale) and backbone initialisation from classifiers."""

import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from backbone import create_model
from backbone.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ClassifierPreprocessing
from backbone.pretrained import load_backbone_weights
from backbone.serving_checkpoint import save_classifier
from backbone.weights import CheckpointError
from training.distributed import DistributedContext
from training.evaluation import (
    PAPER_TEST_SCALES,
    collate_list,
    evaluate,
    fully_convolutional_scores,
    predict_center,
    predict_multi_scale,
    predict_ten_crop,
    topk_errors,
)
from training.sampler import SeededDataset
from training.transforms import ten_crop_transform, whole_image_transform

CPU = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
VIEW = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.fixture(scope="module")
def small_resnet():
    """ResNet-18 layout (ImageNet stem, stride 32) at 1/8 width, with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = create_model("resnet18", base_width=8, num_classes=7)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 96, 96))
    return model.eval()


def test_view_shapes_and_probabilities(small_resnet):
    photo = Image.new("RGB", (300, 260), (30, 90, 200))
    crops = ten_crop_transform(resize=256, crop_size=224, **VIEW)(photo)
    assert crops.shape == (10, 3, 224, 224)
    center = ClassifierPreprocessing(size=224, resize=256).transform()(photo)
    assert center.shape == (3, 224, 224)
    whole = whole_image_transform(**VIEW)(photo)
    assert whole.shape == (3, 260, 300)
    with torch.no_grad():
        ten = predict_ten_crop(small_resnet, torch.stack([crops, crops]))
        multi = predict_multi_scale(small_resnet, torch.randn(3, 40, 56), scales=(32, 64, 96))
        score_map = fully_convolutional_scores(small_resnet, torch.randn(1, 3, 64, 96))
    assert ten.shape == (2, 7) and multi.shape == (1, 7)
    assert torch.allclose(ten.sum(dim=1), torch.ones(2)) and torch.allclose(multi.sum(dim=1), torch.ones(1))
    assert score_map.shape == (1, 7, 2, 3)  # stride 32: one score vector per 32x32 input cell


def test_convolutional_fc_averaged_over_positions_equals_the_classifier(small_resnet):
    image = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        pooled_scores = fully_convolutional_scores(small_resnet, image).mean(dim=(2, 3))
        torch.testing.assert_close(pooled_scores, small_resnet(image), rtol=1e-4, atol=1e-5)
        one_scale = predict_multi_scale(small_resnet, image[0], scales=(160,))
        torch.testing.assert_close(one_scale, small_resnet(image[:1]).softmax(dim=1), rtol=1e-4, atol=1e-6)


def test_ten_crop_and_multi_scale_agree_with_centre_crop_on_a_constant_image(small_resnet):
    """Every crop of a constant image is the same image, and so is the whole image at the crop size."""
    with torch.no_grad():
        for colour in ((200, 30, 60), (10, 240, 120)):
            photo = Image.new("RGB", (256, 256), colour)
            view = ClassifierPreprocessing(size=224, resize=256).transform()
            center = predict_center(small_resnet, view(photo)[None])
            ten = predict_ten_crop(small_resnet, ten_crop_transform(resize=256, crop_size=224, **VIEW)(photo)[None])
            torch.testing.assert_close(ten, center, rtol=1e-5, atol=1e-6)
            square = whole_image_transform(**VIEW)(Image.new("RGB", (224, 224), colour))
            multi = predict_multi_scale(small_resnet, square, scales=(224,))
            torch.testing.assert_close(multi, center, rtol=1e-4, atol=1e-6)


def _noise_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy())


def test_ten_crop_averages_the_four_corners_the_centre_and_their_mirrors(small_resnet):
    """On a noise image every crop scores differently: the centre crop alone (or one corner, or no
    mirrors) gives another answer than the average of the paper's ten views."""
    photo = _noise_photo(112, 96)
    crops = ten_crop_transform(resize=96, crop_size=64, **VIEW)(photo)
    whole = whole_image_transform(**VIEW)(photo)  # already 96 on the shorter side: Resize(96) is the identity

    def five(image):  # four corners and the centre
        corners = [image[:, :64, :64], image[:, :64, -64:], image[:, -64:, :64], image[:, -64:, -64:]]
        return [*corners, image[:, 16:80, 24:88]]

    views = five(whole) + five(whole.flip(-1))  # and the same of the mirror image
    centre = views[4]
    torch.testing.assert_close(crops, torch.stack(views), rtol=0, atol=1e-6)
    with torch.no_grad():
        per_view = predict_center(small_resnet, torch.stack(views))
        ten = predict_ten_crop(small_resnet, crops[None])
        centre_only = predict_center(small_resnet, centre[None])
    torch.testing.assert_close(ten, per_view.mean(dim=0, keepdim=True), rtol=1e-5, atol=1e-6)
    assert (ten - centre_only).abs().max() > 1e-3  # the image tells the ten views apart from the centre


def test_multi_scale_averages_every_scale_over_the_whole_image(small_resnet):
    image = whole_image_transform(**VIEW)(_noise_photo(96, 64, seed=1))
    with torch.no_grad():
        native = small_resnet(image[None]).softmax(dim=1)  # scale 64: the image as it is
        doubled = small_resnet(
            torch.nn.functional.interpolate(image[None], size=(128, 192), mode="bilinear", antialias=True)
        ).softmax(dim=1)
        both = predict_multi_scale(small_resnet, image, scales=(64, 128))
    torch.testing.assert_close(both, (native + doubled) / 2, rtol=1e-4, atol=1e-6)
    assert (native - doubled).abs().max() > 1e-3  # dropping either scale would change the answer


class DominantChannelClassifier(torch.nn.Module):
    """A classifier whose answers are known: class c scores channel c's mean (classes 0-2), classes 3-6
    score fixed decreasing constants. Fully convolutional like ours (forward_features, last_stage, fc)."""

    last_stage = "res5"

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 7)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:3] = 10 * torch.eye(3)
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -30.0, -31.0, -32.0, -33.0]))

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"res5": images}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(images.mean(dim=(2, 3)))


def test_evaluate_reports_the_known_errors_for_every_view():
    model = DominantChannelClassifier()
    red, green, blue = (230, 20, 20), (20, 230, 20), (20, 20, 230)
    # predicted classes 0, 1, 2, 0, 1, 2 and top-5 {0, 1, 2, 3, 4}: two top-1 misses, one top-5 miss
    labelled = [(red, 0), (green, 1), (blue, 2), (red, 1), (green, 6), (blue, 2)]
    images = [(Image.new("RGB", (224, 224), colour), label) for colour, label in labelled]

    def errors(mode, transform, **kwargs):
        loader = DataLoader(SeededDataset(images, transform), batch_size=1 if mode == "multi_scale" else 4,
                            collate_fn=collate_list if mode == "multi_scale" else None)  # fmt: skip
        return evaluate(model, loader, mode=mode, ctx=CPU, **kwargs)

    expected = {"top1_error": pytest.approx(2 / 6), "top5_error": pytest.approx(1 / 6), "count": 6}
    assert errors("center", ClassifierPreprocessing(size=224, resize=224).transform()) == expected
    assert errors("ten_crop", ten_crop_transform(resize=256, crop_size=224, **VIEW)) == expected
    assert errors("multi_scale", whole_image_transform(**VIEW), scales=PAPER_TEST_SCALES) == expected
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate(model, [], mode="twelve_crop", ctx=CPU)


def test_topk_errors_count_hits():
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    assert topk_errors(probabilities, torch.tensor([1, 2, 0])) == (1, 3)  # 3 classes: top-5 is top-3


# --- backbone initialisation --------------------------------------------------------------------------


def test_torchvision_weights_initialise_a_frozen_bn_backbone(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).eval()
    for module in reference.modules():  # non-trivial statistics so that a wrong mapping shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnet18-torchvision.pth")
    backbone = create_model("resnet18", num_classes=0, norm="frozen_bn", freeze_at=2)
    load_backbone_weights(backbone, tmp_path / "resnet18-torchvision.pth")
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = torch.nn.Sequential(*list(reference.children())[:-2])(image)  # up to layer4
        torch.testing.assert_close(backbone.eval()(image), expected, rtol=1e-4, atol=1e-5)

    paper_layout = create_model("resnet50", num_classes=0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match="stride_in_1x1=False"):
        load_backbone_weights(paper_layout, tmp_path / "resnet50.pth")


def test_classifier_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = save_classifier(tmp_path / "resnet20.safetensors", model=create_model("cifar_resnet20"),
                           architecture="cifar_resnet20", class_names=[str(i) for i in range(10)])  # fmt: skip
    deeper = create_model("cifar_resnet32", num_classes=0)
    with pytest.raises(CheckpointError, match=r"does not fit this backbone: layers: checkpoint \[3, 3, 3\]"):
        load_backbone_weights(deeper, path)
    keeps_fc = create_model("cifar_resnet20", num_classes=4)  # a new classifier head of its own
    fc_before = keeps_fc.fc.weight.clone()
    load_backbone_weights(keeps_fc, path)
    assert torch.equal(keeps_fc.fc.weight, fc_before)
