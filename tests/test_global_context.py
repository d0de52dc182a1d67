"""Global context (DetectorOptions.global_context): the whole image pooled as one more RoI, its feature
concatenated with each region's; saved in the manifest; checkpoints written before the option still load."""

import pytest
import torch
from helpers import TINY, assert_detections_valid, synthetic_batch

from backbone.serving_checkpoint import load_checkpoint, save_checkpoint
from detection import build_detector, load_detector, save_detector
from detection.exportable import ExportableDetector


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_the_global_roi_covers_each_whole_image_and_widens_the_classifier_input(head):
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", head=head, num_classes=2, global_context=True, **TINY).eval()
    plain = build_detector(backbone="resnet18", head=head, num_classes=2, **TINY)
    width = plain.roi_heads.box_predictor.cls_score.in_features
    assert model.roi_heads.box_predictor.cls_score.in_features == 2 * width
    pooled_boxes = []
    model.roi_heads.box_roi_pool.register_forward_pre_hook(lambda module, args: pooled_boxes.append(args[1]))
    head_inputs = []
    model.roi_heads.box_predictor.register_forward_pre_hook(lambda module, args: head_inputs.append(args[0]))
    images, _ = synthetic_batch()  # 96x128 and 112x80: resized to different sizes, padded into one batch
    with torch.no_grad():
        batch, _ = model.transform(images)
        _, detections = model(images)
    assert_detections_valid(detections, images, num_classes=2)
    regions, whole = pooled_boxes
    assert [boxes.tolist() for boxes in whole] == [[[0.0, 0.0, w, h]] for h, w in batch.image_sizes]
    assert batch.image_sizes[0] != batch.image_sizes[1]  # each image's own extent, not the padded batch's
    (features,) = head_inputs
    counts = [len(boxes) for boxes in regions]
    # the second half of every row is its image's context feature, the same for all of the image's regions
    first, second = features[: counts[0], width:], features[counts[0] :, width:]
    assert torch.equal(first, first[:1].expand_as(first)) and torch.equal(second, second[:1].expand_as(second))
    assert not torch.equal(first[0], second[0])


def test_the_option_is_saved_trains_and_refuses_export(tmp_path):
    torch.manual_seed(0)
    model = build_detector(
        backbone="resnet18", head="c4", num_classes=2, global_context=True, frozen_bn=False, freeze_at=0, **TINY
    )
    images, targets = synthetic_batch()
    losses, _ = model.train()(images, targets)
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad[:, -1].abs().sum() > 0  # context columns learn
    path = save_detector(tmp_path / "context.safetensors", model=model.eval())
    loaded, manifest = load_detector(path)
    assert manifest["architecture_kwargs"]["global_context"] is True and loaded.roi_heads.global_context
    with pytest.raises(ValueError, match="global context"):
        ExportableDetector(loaded)


def test_a_checkpoint_from_before_the_option_loads_without_context(tmp_path):
    model = build_detector(backbone="resnet18", head="c4", num_classes=2, **TINY).eval()
    path = save_detector(tmp_path / "new.safetensors", model=model)
    state_dict, manifest = load_checkpoint(path)
    del manifest["architecture_kwargs"]["global_context"]
    old = save_checkpoint(tmp_path / "old.safetensors", state_dict=state_dict, manifest=manifest)
    loaded, _ = load_detector(old)
    assert loaded.roi_heads.global_context is False
    images, _ = synthetic_batch()
    with torch.no_grad():
        (expected, *_), (got, *_) = model(images)[1], loaded(images)[1]
    assert torch.equal(expected["boxes"], got["boxes"])
