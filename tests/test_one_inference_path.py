"""Every entry point gives the same detections: the predict CLI, the service over HTTP, the Python API in one
batch of mixed shapes and ONNX Runtime, all in fp32, on a dozen images (coco-mini val and the demo images
where ../shared holds them, plus generated odd ones: sizes 1 px off the resize rule, extreme aspect
ratios, 16-bit, EXIF-rotated, palette, greyscale). Same count; boxes within 0.05 px, scores within 1e-3.
Before the one Predictor, the service's own 8-bit resize put boxes up to hundreds of pixels apart."""

import pytest
from exported_models import CHECKPOINTS, exported

from bench.agreement import ENTRY_POINTS, answers, compare, generated_images, matched, shared_images
from detection import load_detector

SCORE_THRESHOLD = 0.3  # well above the graph's own cut (box_score_thresh), so every entry point can honour it


def assert_all_agree(name: str, tmp_path) -> None:
    checkpoint = CHECKPOINTS[name]()
    model, _ = load_detector(checkpoint)
    files = shared_images(coco=4) + generated_images(tmp_path, model)
    results = answers(
        checkpoint, files, onnx_path=exported(name), score_threshold=SCORE_THRESHOLD, work=tmp_path / "work"
    )
    assert set(results) == set(ENTRY_POINTS)
    assert sum(len(detections) for detections in results["cli"]) >= len(files) // 2, "too few detections to compare"
    for other in ENTRY_POINTS[1:]:
        for file, ours, theirs in zip(files, results["cli"], results[other]):
            where = f"{other} vs the CLI on {file.name}"
            assert len(theirs) == len(ours), f"{where}: {len(theirs)} detections, not {len(ours)}"
            pairs = matched(ours, theirs)
            assert len(pairs) == len(ours), f"{where}: {len(ours) - len(pairs)} detections without a match"
            for a, b in pairs:
                assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.05, (where, a, b)
                assert abs(a["score"] - b["score"]) <= 1e-3, (where, a, b)
        row = compare(results["cli"], results[other])
        assert row["other_count"] == 0 and row["top_differs"] == 0, (other, row)


def test_the_demo_detector_answers_alike_through_every_entry_point(tmp_path):
    assert_all_agree("demo", tmp_path)


@pytest.mark.slow
def test_a_converted_torchvision_r50_fpn_answers_alike_through_every_entry_point(tmp_path, one_thread):
    assert_all_agree("r50_fpn", tmp_path)


@pytest.mark.parametrize("size", [(61, 97), (128, 128), (1000, 90)])
def test_prepare_is_the_training_transform_bit_for_bit(size):
    """The Predictor's resize and normalisation (in place, to spare a large upload two float copies) are
    the transform's own: training's batch of the same uint8 image holds the same floats."""
    import torch
    from torchvision.transforms.v2.functional import to_dtype

    from detection.predictor import Predictor

    model, _ = load_detector(CHECKPOINTS["demo"]())
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prepared = Predictor(model, device="cpu", precision="fp32", optimize=False).prepare(image)
    with torch.no_grad():
        batch, _ = model.eval().transform([to_dtype(image, torch.float32, scale=True)])
    height, width = batch.image_sizes[0]
    assert prepared.padded_shape == tuple(batch.tensors.shape[-2:]) and prepared.source_size == size
    assert torch.equal(prepared.pixels, batch.tensors[0, :, :height, :width])


@pytest.mark.parametrize("size", [(61, 97), (100, 60), (40, 400), (500, 700), (1, 3000)])
def test_a_queue_entry_prepared_at_batch_time_answers_exactly_as_one_prepared_at_admission(size):
    """The service queues the cheaper of the 8-bit source and the model's input (Predictor.queueable) and prepares
    the source at batch time: the same records, to the last bit, as preparing at admission."""
    import numpy as np

    from detection.decoding import DecodedImage
    from detection.predictor import Cut, Predictor, Prepared

    model, _ = load_detector(CHECKPOINTS["demo"]())
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False)
    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    image = DecodedImage(pixels=pixels)
    queued = predictor.queueable(image)
    assert queued.nbytes == min(pixels.nbytes, predictor.prepared_nbytes(*size))
    assert isinstance(queued, Prepared) == (pixels.nbytes > predictor.prepared_nbytes(*size))
    cut = Cut(score_threshold=0.0, max_detections=1000)
    assert predictor.run([queued], [cut]) == predictor.run([predictor.prepare(image)], [cut])
