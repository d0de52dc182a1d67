"""Faster R-CNN on every backbone depth, both heads: shapes, training, degenerate targets, batching,
determinism, predict() on every image mode, inference optimisation."""

import numpy as np
import pytest
import torch
from helpers import TINY, assert_detections_valid, synthetic_batch
from PIL import Image

from backbone import create_model
from detection import DETECTOR_BACKBONES, build_detector
from detection.fusion import FusedBlock

# Tiny inputs and narrow networks keep every test a CPU fraction of a second to a few seconds.


@pytest.mark.parametrize("head", ["fpn", "c4"])
@pytest.mark.parametrize("backbone", DETECTOR_BACKBONES)
def test_every_depth_and_head_trains_and_detects(backbone, head):
    torch.manual_seed(0)
    # threshold 0: a deep random C4 head can put every box below 0.05, and these detections must exist
    model = build_detector(backbone=backbone, head=head, num_classes=2, box_score_thresh=0.0, **TINY)
    resnet = model.features.backbone
    if head == "fpn":
        lateral = model.features.fpn.inner_blocks
        expected = [resnet.feature_info[f"res{k}"].channels for k in (2, 3, 4, 5)]
        assert [block[0].in_channels for block in lateral] == expected
        assert model.features.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    else:
        res4 = resnet.feature_info["res4"]
        assert res4.stride == 16 and model.rpn.head.cls_logits.in_channels == res4.channels
        assert model.roi_heads.box_predictor.cls_score.in_features == 2 * res4.channels
        assert len(model.roi_heads.box_head.res5) == create_model(backbone).config["layers"][3]
    images, targets = synthetic_batch()
    losses, detections = model.train()(images, targets)
    assert detections == []
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(value) for value in losses.values())
    _, detections = model.eval()(images)
    # random ResNet-101/152 features blow up the box deltas: all their boxes may be degenerate and dropped
    assert_detections_valid(
        detections, images, num_classes=2, require_detections=backbone in ("resnet18", "resnet34", "resnet50")
    )


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_losses_go_down_on_a_fixed_batch(head):
    torch.manual_seed(0)
    options = dict(TINY, base_width=16, min_size=80, max_size=112, box_batch_size_per_image=32)
    model = build_detector(backbone="resnet18", head=head, num_classes=2, frozen_bn=False, freeze_at=0, **options)
    images, targets = synthetic_batch()

    def loss_with_fixed_sampling() -> float:  # the samplers draw at random: average a few seeded draws
        values = []
        with torch.no_grad():
            for seed in range(3):
                torch.manual_seed(100 + seed)
                values.append(sum(model(images, targets)[0].values()).item())
        return sum(values) / len(values)

    model.train()
    before = loss_with_fixed_sampling()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    for _ in range(10):
        losses, _ = model(images, targets)
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    after = loss_with_fixed_sampling()
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_empty_and_zero_area_targets_give_finite_losses_and_gradients(head):
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head=head, num_classes=2, frozen_bn=False, freeze_at=0, **TINY)
    images, _ = synthetic_batch()
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        # a zero-width and a zero-height box, and a single real one
        {
            "boxes": torch.tensor([[10.0, 10, 10, 40], [5, 20, 50, 20], [20, 20, 60, 70]]),
            "labels": torch.tensor([1, 2, 1]),
        },
    ]
    for only_empty in (True, False):
        batch = targets[:1] * 2 if only_empty else targets
        losses, _ = model.train()(images, batch)
        total = sum(losses.values())
        total.backward()
        assert torch.isfinite(total), losses
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    assert targets[1]["boxes"].shape == (3, 4)  # the caller's targets are not modified


def test_malformed_targets_are_rejected_with_the_image_named():
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, **TINY).train()
    images, targets = synthetic_batch()
    cases = [
        ({"boxes": torch.tensor([[30.0, 10, 20, 40]]), "labels": torch.tensor([1])}, "x2 < x1"),
        ({"boxes": torch.tensor([[0.0, 0, float("nan"), 4]]), "labels": torch.tensor([1])}, "NaN"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3])}, "outside 1..2"),
        ({"boxes": torch.tensor([0.0, 0, 5, 5]), "labels": torch.tensor([1])}, "shape [N, 4]"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1, 2])}, "labels of shape"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match="target 1") as error:
            model(images, [targets[0], bad])
        assert message in str(error.value)
    with pytest.raises(ValueError, match="needs targets"):
        model(images)


def test_eval_mode_returns_validation_losses_and_detections():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, **TINY).eval()
    images, targets = synthetic_batch()
    losses, detections = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(value) for value in losses.values())
    assert len(detections) == 2
    assert_detections_valid(detections, images, num_classes=2)
    _, without_targets = model(images)
    for with_losses, plain in zip(detections, without_targets):  # losses do not change the detections
        assert torch.equal(with_losses["boxes"], plain["boxes"])


def test_differently_sized_images_batch_independently_of_order():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, **TINY).eval()
    images = [torch.rand(3, 60, 150), torch.rand(3, 140, 70), torch.rand(3, 100, 100)]
    with torch.inference_mode():
        _, forward = model(images)
        _, reverse = model(images[::-1])
    assert_detections_valid(forward, images, num_classes=2)
    for a, b in zip(forward, reverse[::-1]):
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4) and torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_cpu_determinism_under_a_fixed_seed(head):
    def run() -> tuple[list[float], list[dict]]:
        torch.manual_seed(123)
        model = build_detector(backbone="resnet18", head=head, num_classes=2, frozen_bn=False, freeze_at=0, **TINY)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        images, targets = synthetic_batch()
        losses, _ = model.train()(images, targets)
        sum(losses.values()).backward()
        optimizer.step()
        with torch.inference_mode():
            _, detections = model.eval()(images)
        return [value.item() for value in losses.values()], detections

    (losses_a, detections_a), (losses_b, detections_b) = run(), run()
    assert losses_a == losses_b
    for a, b in zip(detections_a, detections_b):
        assert all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


def pil_in_every_mode() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(70, 90), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    return {
        "RGB": rgb,
        "L": Image.fromarray(grey),
        "RGBA": Image.fromarray(np.dstack([np.stack([grey] * 3, axis=-1), np.full_like(grey, 255)])),
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
        "I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "CMYK": rgb.convert("CMYK"),
    }


def test_predict_accepts_every_image_mode_and_returns_named_original_pixel_boxes():
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head="fpn", num_classes=2, class_names=["cat", "dog"], **TINY)
    images = pil_in_every_mode()
    assert images["I;16"].mode == "I;16" and images["P"].mode == "P"
    wide = torch.randint(0, 256, (3, 40, 130), dtype=torch.uint8)
    inputs = [*images.values(), wide, wide[0], wide[:1].repeat(3, 1, 1)]  # uint8 CHW and HW tensors
    results = model.train().predict(inputs, score_threshold=0.0, max_detections=7, batch_size=3)
    assert model.training  # predict restores the mode it found
    assert len(results) == len(inputs)
    for result, image in zip(results, inputs):
        width, height = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
        assert_detections_valid([result], [torch.empty(3, height, width)], num_classes=2)
        assert 0 < len(result["boxes"]) <= 7
        assert result["names"] == [["cat", "dog"][label - 1] for label in result["labels"].tolist()]
    by_mode = dict(zip(images, results))
    for mode in ("L", "RGBA", "I;16", "CMYK"):  # same grey pixels in another mode: same detections
        assert torch.allclose(by_mode[mode]["boxes"], by_mode["RGB"]["boxes"], atol=1e-4), mode
    assert torch.equal(results[-2]["boxes"], results[-1]["boxes"])  # HW = that channel repeated 3 times
    strict = model.predict([images["RGB"]], score_threshold=0.5)[0]
    assert (strict["scores"] > 0.5).all()
    with pytest.raises(TypeError, match="image 1"):
        model.predict([images["RGB"], "not an image"])
    with pytest.raises(ValueError, match="image 0"):
        model.predict([torch.zeros(2, 5, 5, dtype=torch.uint8)])


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_optimize_for_inference_keeps_detections(head):
    torch.manual_seed(0)
    model = build_detector(backbone="resnet50", head=head, num_classes=3, frozen_bn=False, **TINY)
    for module in model.modules():  # non-trivial BN statistics, so folding has something to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    images, _ = synthetic_batch()
    reference = model.eval().predict(images, score_threshold=0.0)
    model.optimize_for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.features.backbone.modules())
    assert any(isinstance(m, FusedBlock) for m in model.modules())
    optimized = model.predict(images, score_threshold=0.0)
    for a, b in zip(reference, optimized):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-4)
    with pytest.raises(RuntimeError, match="optimized for inference"):
        model.train()(*synthetic_batch())
    model.optimize_for_inference(fold_bn=False, channels_last=False, bf16=True)  # the reduced-precision hook
    bf16 = model.eval().predict(images, score_threshold=0.0)
    assert all(r["boxes"].dtype == torch.float32 and torch.isfinite(r["boxes"]).all() for r in bf16)


def test_c4_backbone_and_res5_load_classifier_weights():
    classifier = create_model("resnet18", base_width=8)
    model = build_detector(backbone="resnet18", head="c4", num_classes=2, **TINY)
    model.load_backbone_state_dict(classifier.state_dict(), source="resnet18 classifier")
    ours = model.state_dict()
    for key, value in classifier.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        target = f"roi_heads.box_head.{key}" if key.startswith("res5.") else f"features.backbone.{key}"
        assert torch.equal(ours[target], value), key


def test_unknown_options_and_backbones_are_rejected():
    with pytest.raises(TypeError, match="anchor_size"):
        build_detector(backbone="resnet18", num_classes=2, anchor_size=(32,))
    with pytest.raises(ValueError, match="cifar_resnet20"):
        build_detector(backbone="cifar_resnet20", num_classes=2)
    with pytest.raises(ValueError, match="5 levels"):
        build_detector(backbone="resnet18", num_classes=2, anchor_sizes=(32, 64))
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        build_detector(backbone="resnet18", num_classes=2, class_names=["a", "b", "c"])


def test_threaded_roi_pooling_equals_torchvision_multiscale_roi_align():
    from torchvision.ops import MultiScaleRoIAlign

    from detection.poolers import MultiLevelRoIAlign

    torch.manual_seed(0)
    features = {f"p{k}": torch.randn(2, 8, 256 // 2**k, 320 // 2**k) for k in (2, 3, 4, 5)}
    corner = torch.rand(2, 300, 2) * torch.tensor([300.0, 240.0])
    size = torch.rand(2, 300, 2) ** 2 * 250 + 1
    boxes = list(torch.cat([corner, (corner + size).clamp(max=torch.tensor([320.0, 256.0]))], dim=-1))
    shapes = [(256, 320), (240, 300)]
    reference = MultiScaleRoIAlign(list(features), output_size=7, sampling_ratio=2)(features, boxes, shapes)
    ours = MultiLevelRoIAlign(strides={f"p{k}": 2**k for k in (2, 3, 4, 5)}, output_size=7, sampling_ratio=2)
    with torch.inference_mode():  # chunked over threads
        assert torch.equal(ours(features, boxes, shapes), reference)
    channels_last = {name: f.contiguous(memory_format=torch.channels_last) for name, f in features.items()}
    assert torch.equal(ours(channels_last, boxes, shapes), reference)  # one call, autograd on
    bf16 = {name: f.bfloat16() for name, f in features.items()}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not reach threads
        threaded = ours(bf16, boxes, shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(threaded, ours(bf16, boxes, shapes))
