"""The test-time ladder through the one inference path (detection.predictor.Predictor): the same answer as
the ladder's own call, cut the same way, for the head-level rungs and for those that need the source image."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, synthetic_batch
from PIL import Image

from detection import build_detector
from detection.predictor import Cut, Predictor, cut_detections
from detection.test_time import TestTimeOptions, detect_with_options

DEMO = Path(__file__).resolve().parents[1] / "service" / "models" / "demo_detector.safetensors"


def _model(head: str):
    torch.manual_seed(0)
    return build_detector(backbone="resnet18", head=head, num_classes=2, **TINY).eval()


@pytest.mark.parametrize(
    ("head", "options"),
    [
        ("fpn", TestTimeOptions(refine_boxes=True)),
        ("fpn", TestTimeOptions(vote_threshold=0.6)),
        ("fpn", TestTimeOptions(test_flip=True, test_sizes=(48, 80))),
        ("fpn", TestTimeOptions(tile_size=64, tile_overlap=0.25, tile_full_image=True)),
        ("c4", TestTimeOptions(refine_boxes=True, maxout_sizes=(32, 64, 96))),
    ],
)
def test_the_predictor_gives_the_ladders_own_answer(head, options):
    model = _model(head)
    images, _ = synthetic_batch()
    cut = Cut(score_threshold=0.05, max_detections=100)
    with torch.no_grad():
        expected = [
            cut_detections(detection, cut)
            for image in images
            for detection in detect_with_options(model, [image], options, score_threshold=0.05, max_detections=100)
        ]
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False, test_time=options)
    got = predictor.detect([predictor.prepare(image, index=i) for i, image in enumerate(images)], [cut, cut])
    assert sum(len(d["scores"]) for d in got) > 0
    for a, b in zip(expected, got):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)


def test_the_default_predictor_runs_no_rung():
    model = _model("fpn")
    calls = []
    model.roi_heads.box_roi_pool.register_forward_hook(lambda *args: calls.append(1))
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False)
    images, _ = synthetic_batch()
    predictor.detect([predictor.prepare(images[0])], [Cut()])
    assert len(calls) == 1 and not predictor.test_time.from_source  # one pooling: no refinement, no variants


def test_the_predict_command_runs_the_ladder_and_refuses_to_mix_settings(tmp_path):
    from detection.data import generate_synthetic
    from detection.predict import main

    generate_synthetic(tmp_path / "shapes", num_train=1, num_val=2, image_size=128, seed=0)
    folder = tmp_path / "shapes" / "coco" / "val"
    flags = ["--refine-boxes", "--tile-size", "96", "--tile-full-image", "--test-flip", "--test-sizes", "96", "128"]
    output = tmp_path / "out"
    main([str(folder), "--checkpoint", str(DEMO), "--output", str(output), "--device", "cpu", "--precision", "fp32",
          "--score-threshold", "0.3", *flags])  # fmt: skip
    records = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    settings = json.loads((output / "predict_settings.json").read_text())
    assert settings["test_time"]["tile_size"] == 96 and settings["test_time"]["refine_boxes"] is True
    options = TestTimeOptions(
        refine_boxes=True, tile_size=96, tile_full_image=True, test_flip=True, test_sizes=(96, 128)
    )
    predictor = Predictor.from_checkpoint(DEMO, device="cpu", precision="fp32", test_time=options)
    for record in records:
        (expected,) = predictor.predict([folder / Path(record["file"]).name], score_threshold=0.3)
        assert [d["box"] for d in record["detections"]] == [d["box"] for d in expected["detections"]]
    assert sum(len(record["detections"]) for record in records) > 0
    # the same command again continues (its settings read back equal, sizes as lists and all)
    main([str(folder), "--checkpoint", str(DEMO), "--output", str(output), "--device", "cpu", "--precision", "fp32",
          "--score-threshold", "0.3", *flags])  # fmt: skip
    with pytest.raises(SystemExit, match="other settings"):
        main([str(folder), "--checkpoint", str(DEMO), "--output", str(output), "--device", "cpu", "--precision",
              "fp32", "--score-threshold", "0.3"])  # fmt: skip
    with pytest.raises(SystemExit, match="tile_overlap"):
        main([str(folder), "--checkpoint", str(DEMO), "--output", str(tmp_path / "bad"), "--tile-size", "96",
              "--tile-overlap", "1.5"])  # fmt: skip


def test_the_predict_command_refuses_eager_only_options_on_a_graph_runtime_in_one_line(tmp_path):
    """Before, `--refine-boxes --runtime onnxruntime` ran the graph without refinement and said nothing."""
    from detection.predict import main

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48)).save(image)
    command = [str(image), "--checkpoint", str(DEMO), "--output", str(tmp_path / "out")]
    for flags, named in (
        (["--refine-boxes", "--runtime", "onnxruntime"], "--runtime onnxruntime: --refine-boxes"),
        (["--tile-size", "64", "--runtime", "auto"], "--runtime auto: --tile-size"),
        (["--ensemble-checkpoints", str(DEMO), "--runtime", "openvino"], "--runtime openvino: --ensemble-checkpoints"),
    ):
        with pytest.raises(SystemExit) as raised:
            main([*command, *flags])
        message = str(raised.value)
        assert message.startswith(f"error: {named} needs the eager PyTorch model; runtime") and "\n" not in message
    classifier = DEMO.with_name("demo_classifier.safetensors")
    with pytest.raises(SystemExit, match="holds a classifier, not a detector"):
        main([*command, "--ensemble-checkpoints", str(classifier)])
    assert not (tmp_path / "out" / "predictions.jsonl").exists()
