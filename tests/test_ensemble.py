"""Ensembles (detection/ensemble.py): the first model's proposals, every model's head outputs averaged, run by the
Predictor as one detector."""

import copy
from dataclasses import replace

import pytest
import torch
from helpers import TINY, synthetic_batch

from detection import build_detector
from detection.box_voting import VOTE_IOU_THRESHOLD
from detection.ensemble import EnsembleDetector, average_head_outputs
from detection.predictor import Predictor
from detection.test_time import TestTimeOptions


def _model(seed: int, **options):
    torch.manual_seed(seed)
    return build_detector(backbone="resnet18", head="c4", num_classes=2, **{**TINY, **options}).eval()


def _assert_same(expected, got):
    """What holds for a model and an ensemble of it with itself: the same detections in the same order, the scores
    to 1e-6 and the boxes to 1e-4 px (the softmax of the log of the mean probabilities rounds differently)."""
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert len(a["labels"]) > 0
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)


def test_an_ensemble_of_a_model_with_itself_is_the_model_with_box_voting():
    """An ensemble merges by NMS + box voting (Detectron's 0.8 unless told): it gives the model's own detections
    voted at the same threshold."""
    model = _model(0, box_score_thresh=0.0)
    images, _ = synthetic_batch()
    twins = EnsembleDetector([model, copy.deepcopy(model)])
    with torch.no_grad():
        _assert_same(model(images, vote_threshold=VOTE_IOU_THRESHOLD)[1], EnsembleDetector([model])(images)[1])
        _assert_same(model(images, vote_threshold=VOTE_IOU_THRESHOLD)[1], twins(images)[1])
        voted = model(images, vote_threshold=0.3)[1]  # low enough that voting moves this random model's boxes
        _assert_same(voted, twins(images, vote_threshold=0.3)[1])
        plain = model(images)[1]
    assert any(not torch.equal(a["boxes"], b["boxes"]) for a, b in zip(plain, voted)), "voting changed nothing here"


def test_the_predictor_runs_an_ensemble_and_its_rungs_as_one_model():
    model = _model(0, box_score_thresh=0.0)
    images, _ = synthetic_batch()
    ensemble = EnsembleDetector([model, copy.deepcopy(model)])
    for options in (TestTimeOptions(), TestTimeOptions(refine_boxes=True), TestTimeOptions(test_flip=True)):
        voted = replace(options, vote_threshold=VOTE_IOU_THRESHOLD)
        single = Predictor(model, device="cpu", precision="fp32", optimize=False, test_time=voted)
        both = Predictor(ensemble, device="cpu", precision="fp32", optimize=False, test_time=options)
        expected = single.predict(images, score_threshold=0.05)
        got = both.predict(images, score_threshold=0.05)
        assert any(result["detections"] for result in expected), options
        for a, b in zip(expected, got):
            assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]], options
            for x, y in zip(a["detections"], b["detections"]):
                assert abs(x["score"] - y["score"]) <= 1e-6
                assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= 0.011  # records round to 0.01 px


def test_averaging_on_hand_built_head_outputs():
    """Probabilities (0.5, 0.5) and (0.9, 0.1) average to (0.7, 0.3), given back by the heads' softmax; deltas mean."""
    first = (torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    second = (torch.tensor([[0.9, 0.1]]).log(), torch.tensor([[3.0, 0.0, -3.0, 8.0]]))
    logits, deltas = average_head_outputs([first, second])
    torch.testing.assert_close(logits.softmax(dim=-1), torch.tensor([[0.7, 0.3]]), rtol=0, atol=1e-7)
    assert torch.equal(deltas, torch.tensor([[2.0, 1.0, 0.0, 6.0]]))


def test_scores_are_the_mean_of_the_models_probabilities_on_shared_proposals():
    first, second = _model(0), _model(1)
    outputs = {}
    for name, model in (("first", first), ("second", second)):
        model.roi_heads.box_predictor.register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, output[0].softmax(dim=-1))
        )
    images, _ = synthetic_batch()
    # nothing suppressed (IoU never exceeds 1), nothing cut: every candidate comes back
    with torch.no_grad():
        _, got = EnsembleDetector([first, second])(images[:1], score_threshold=0.0, max_detections=10**6,
                                                   iou_threshold=1.0)  # fmt: skip
    assert outputs["first"].shape == outputs["second"].shape  # the same proposals, classified by both
    mean = (outputs["first"] + outputs["second"]) / 2
    expected = mean[:, 1:].reshape(-1).sort(descending=True).values
    assert len(got[0]["scores"]) == len(expected)
    torch.testing.assert_close(got[0]["scores"], expected, rtol=0, atol=1e-6)
    single = outputs["first"][:, 1:].reshape(-1).sort(descending=True).values
    assert not torch.allclose(got[0]["scores"], single, atol=1e-4)


def test_incompatible_members_and_options_are_refused_by_name():
    images, _ = synthetic_batch()
    with pytest.raises(ValueError, match="other classes"):
        EnsembleDetector([_model(0), _model(1, class_names=["x", "y"])])
    with pytest.raises(ValueError, match="min_size"):
        EnsembleDetector([_model(0), _model(1, min_size=80)])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleDetector([])
    ensemble = EnsembleDetector([_model(0), _model(1)])
    ensemble.others[0].train()
    with pytest.raises(ValueError, match="eval mode"):
        ensemble(images)
    with pytest.raises(ValueError, match="maxout"):
        EnsembleDetector([_model(0), _model(1)]).eval()(images, maxout_sizes=(64, 96))
