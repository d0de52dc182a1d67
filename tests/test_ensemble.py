"""Ensembles (detection/ensemble.py): the first model's proposals, every model's head outputs averaged."""

import pytest
import torch
from helpers import TINY, synthetic_batch

from detection import build_detector
from detection.ensemble import detect_ensemble


def _model(seed: int, **options):
    torch.manual_seed(seed)
    return build_detector(backbone="resnet18", head="c4", num_classes=2, **{**TINY, **options}).eval()


def test_an_ensemble_of_one_is_the_model_itself():
    model = _model(0, box_score_thresh=0.0)
    images, _ = synthetic_batch()
    with torch.no_grad():
        _, expected = model(images)
    got = detect_ensemble([model], images, vote_threshold=None)
    for a, b in zip(expected, got):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)


def test_scores_are_the_mean_of_the_models_probabilities_on_shared_proposals():
    first, second = _model(0), _model(1)
    outputs = {}
    for name, model in (("first", first), ("second", second)):
        model.roi_heads.box_predictor.register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, output[0].softmax(dim=-1))
        )
    images, _ = synthetic_batch()
    # nothing suppressed (IoU never exceeds 1), nothing cut: every candidate comes back
    got = detect_ensemble([first, second], images[:1], score_threshold=0.0, max_detections=10**6, iou_threshold=1.0,
                          vote_threshold=None)  # fmt: skip
    assert outputs["first"].shape == outputs["second"].shape  # the same proposals, classified by both
    mean = (outputs["first"] + outputs["second"]) / 2
    expected = mean[:, 1:].reshape(-1).sort(descending=True).values
    assert len(got[0]["scores"]) == len(expected)
    torch.testing.assert_close(got[0]["scores"], expected, rtol=0, atol=1e-6)
    single = outputs["first"][:, 1:].reshape(-1).sort(descending=True).values
    assert not torch.allclose(got[0]["scores"], single, atol=1e-4)


def test_incompatible_members_are_refused_by_name():
    images, _ = synthetic_batch()
    with pytest.raises(ValueError, match="other classes"):
        detect_ensemble([_model(0), _model(1, class_names=["x", "y"])], images)
    with pytest.raises(ValueError, match="min_size"):
        detect_ensemble([_model(0), _model(1, min_size=80)], images)
    with pytest.raises(ValueError, match="eval mode"):
        detect_ensemble([_model(0), _model(1).train()], images)
    with pytest.raises(ValueError, match="at least one"):
        detect_ensemble([], images)
