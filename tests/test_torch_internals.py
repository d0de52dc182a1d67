"""Guards on the torch and torchvision internals the detector relies on: each fails with a message naming
the version, the piece that changed and the file of ours that needs updating, instead of a shape error
deep inside a training step (pyproject.toml states the supported range)."""

import inspect

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import rpn as tv_rpn
from torchvision.ops.poolers import LevelMapper

from detection import build_detector, fusion

VERSIONS = f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(
    ("function", "expected", "ours"),
    [
        (tv_roi_heads.RoIHeads.select_training_samples, ["self", "proposals", "targets"], "detection/roi_heads.py"),
        (tv_roi_heads.fastrcnn_loss, ["class_logits", "box_regression", "labels", "regression_targets"],
         "detection/roi_heads.py"),
        (tv_rpn.RegionProposalNetwork.filter_proposals,
         ["self", "proposals", "objectness", "image_shapes", "num_anchors_per_level"], "detection/rpn.py"),
        (tv_rpn.RegionProposalNetwork.assign_targets_to_anchors, ["self", "anchors", "targets"], "detection/rpn.py"),
        (tv_rpn.RegionProposalNetwork.compute_loss,
         ["self", "objectness", "pred_bbox_deltas", "labels", "regression_targets"], "detection/rpn.py"),
        (tv_rpn.concat_box_prediction_layers, ["box_cls", "box_regression"], "detection/rpn.py"),
        (LevelMapper.__init__, ["self", "k_min", "k_max", "canonical_scale", "canonical_level", "eps"],
         "detection/poolers.py"),
    ],
    ids=lambda value: getattr(value, "__qualname__", None),
)  # fmt: skip
def test_torchvision_internals_we_call_keep_their_signatures(function, expected, ours):
    found = parameters(function)
    if found != expected:
        pytest.fail(
            f"{VERSIONS}: {function.__module__}.{function.__qualname__} now takes {found}, not {expected}; "
            f"{ours} calls it with the old arguments: update it (or pin torchvision to the range in pyproject.toml)"
        )


def test_the_internals_still_return_what_we_unpack():
    """One training step's internals on a tiny detector: the tuples our forward passes unpack."""
    torch.manual_seed(0)
    model = build_detector(backbone="resnet18", num_classes=2, base_width=8, fpn_channels=16,
                           representation_size=32, min_size=(64,), max_size=64)  # fmt: skip
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 50.0, 50.0]])]
    sampled = model.roi_heads.select_training_samples(proposals, targets)
    if not (isinstance(sampled, tuple) and len(sampled) == 4):
        pytest.fail(f"{VERSIONS}: RoIHeads.select_training_samples no longer returns (proposals, matched_idxs, "
                    "labels, regression_targets): update detection/roi_heads.py")  # fmt: skip
    objectness = torch.rand(1, 6)
    boxes = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 30.0, 30.0], [5.0, 5.0, 9.0, 9.0]] * 2])
    filtered = model.rpn.filter_proposals(boxes, objectness, [(64, 64)], [6])
    if not (isinstance(filtered, tuple) and len(filtered) == 2 and len(filtered[0]) == 1):
        pytest.fail(f"{VERSIONS}: RegionProposalNetwork.filter_proposals no longer returns (boxes, scores) per "
                    "image: update detection/rpn.py")  # fmt: skip
    model.train()
    losses, _ = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def test_level_mapper_still_assigns_fpn_levels_by_box_size():
    mapper = LevelMapper(2, 5, canonical_scale=224, canonical_level=4)
    boxes = [torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 56.0, 56.0], [0.0, 0.0, 900.0, 900.0]])]
    levels = mapper(boxes).flatten().tolist()
    if levels != [2, 0, 3]:  # FPN Eqn. 1, as indices from k_min: P4, P2, P5
        pytest.fail(f"{VERSIONS}: torchvision's LevelMapper now maps 224/56/900 px boxes to {levels}, not "
                    "[2, 0, 3] (P4, P2, P5): update detection/poolers.py")  # fmt: skip


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_private_fused_convolution_op_is_there_and_computes_conv_add_relu():
    if fusion._POINTWISE is None:
        pytest.fail(f"{VERSIONS}: torch.ops.mkldnn._convolution_pointwise is gone: detection/fusion.py now falls "
                    "back to unfused (slower) convolutions on the CPU; port it to this torch's fused op")  # fmt: skip
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x, shortcut = torch.rand(1, 4, 8, 8), torch.rand(1, 6, 8, 8)
    with torch.no_grad():
        try:
            fused = (
                fusion.conv_relu(conv, x),
                fusion.conv_add_relu(conv, x, shortcut),
                fusion.conv_add(conv, x, shortcut),
            )
        except (RuntimeError, TypeError) as error:
            pytest.fail(f"{VERSIONS}: torch.ops.mkldnn._convolution_pointwise changed its arguments ({error}): "
                        "update detection/fusion.py")  # fmt: skip
        expected = F.relu(conv(x)), F.relu(conv(x) + shortcut), conv(x) + shortcut
    for got, want in zip(fused, expected, strict=True):
        torch.testing.assert_close(got, want)
