"""ONNX export (detection/export.py): ONNX Runtime gives our PyTorch models' detections and logits, at
batch 1 and 3, with images of different sizes in one batch; bad checkpoints get a one-line error."""

import json

import numpy as np
import onnxruntime
import pytest
import torch
from exported_models import CHECKPOINTS, exported
from helpers import DEMO_IMAGES, sample_images
from PIL import Image

from backbone.serving_checkpoint import load_classifier
from detection import load_detector
from detection.data.synthetic_shapes import render_image
from detection.export import main
from detection.images import to_float_image
from detection.onnx_export import DETECTOR_INPUTS, DETECTOR_OUTPUTS, MANIFEST_KEY, classifier_input_size
from detection.predictor import Predictor


def session(name: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(exported(name)), options, providers=["CPUExecutionProvider"])


def three_sizes(*, shapes: bool = False) -> list[torch.Tensor]:
    """Real images of three different sizes and aspect ratios. Where ../shared is absent: generated ones,
    noise for the random-weight models, or (`shapes`) the synthetic shapes the demo detector knows, since
    it finds nothing in noise and a comparison of two empty lists proves nothing."""
    if shapes and not DEMO_IMAGES.is_dir():
        rng = np.random.default_rng(7)
        portrait, landscape = (
            to_float_image(render_image(rng, image_size=size, max_objects=3)[0]) for size in (192, 256)
        )
        return [portrait[:, :, 24:168], landscape, landscape[:, 32:224, :]]
    portrait, landscape = sample_images()
    return [portrait, landscape, landscape[:, 100:600, 200:900]]


def onnx_detections(name: str, images: list[torch.Tensor], model) -> list[dict[str, np.ndarray]]:
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False)
    inputs = predictor.batch([predictor.prepare(image) for image in images])
    config = model.config
    boxes, scores, labels, counts = session(name).run(
        list(DETECTOR_OUTPUTS), {key: value.numpy() for key, value in zip(DETECTOR_INPUTS, inputs)}
    )
    assert boxes.shape == (len(images), config["box_detections_per_img"], 4)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # highest first, padding (0) last
    return [
        {"boxes": box[:n], "scores": score[:n], "labels": label[:n]}
        for box, score, label, n in zip(boxes, scores, labels, counts)
    ]


def assert_same_detections(ours: dict[str, torch.Tensor], theirs: dict[str, np.ndarray]) -> None:
    """One to one: each PyTorch detection has an ONNX one of the same label, box within 1e-2 px, score
    within 1e-4 (matched by box: near-equal scores may be listed in either order)."""
    assert len(theirs["boxes"]) == len(ours["boxes"]) > 0
    distance = np.abs(ours["boxes"].numpy()[:, None] - theirs["boxes"][None]).max(axis=-1)
    distance[ours["labels"].numpy()[:, None] != theirs["labels"][None]] = np.inf
    closest = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-2
    assert len(set(closest.tolist())) == len(closest)
    assert np.abs(ours["scores"].numpy() - theirs["scores"][closest]).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "r50_fpn", "c4"])
def test_onnx_runtime_gives_the_pytorch_detections(name, one_thread):
    model, _ = load_detector(CHECKPOINTS[name]())
    images = three_sizes(shapes=name == "demo")
    for batch in ([images[0]], images):  # batch 1; batch 3 of three different sizes
        with torch.no_grad():
            _, ours = model(batch)
        for pytorch, onnx in zip(ours, onnx_detections(name, batch, model)):
            assert_same_detections(pytorch, onnx)


@pytest.mark.slow
def test_onnx_runtime_gives_the_classifier_logits(one_thread):
    model, manifest = load_classifier(CHECKPOINTS["classifier"]())
    size = classifier_input_size(manifest)
    for batch in (1, 3):
        crops = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ours = model(crops).numpy()
        (theirs,) = session("classifier").run(["logits"], {"images": crops.numpy()})
        assert theirs.shape == ours.shape
        assert np.abs(theirs - ours).max() < 1e-4
    metadata = session("classifier").get_modelmeta().custom_metadata_map
    assert json.loads(metadata[MANIFEST_KEY])["class_names"] == manifest["class_names"]


def test_a_foreign_or_broken_checkpoint_gets_a_one_line_error(tmp_path):
    foreign = tmp_path / "fasterrcnn.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, foreign)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(CHECKPOINTS["classifier"]().read_bytes()[:1000])
    image = tmp_path / "image.safetensors"
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    image.write_bytes((tmp_path / "image.png").read_bytes())
    for path in (foreign, truncated, image, tmp_path / "missing.safetensors"):
        with pytest.raises(SystemExit) as raised:
            main([str(path), "--format", "onnx", "--output", str(tmp_path / "model.onnx")])
        message = str(raised.value.code)
        assert message.startswith("error: ") and path.name in message and "\n" not in message
        assert not (tmp_path / "model.onnx").exists()


def test_export_command_needs_exactly_one_destination(capsys):
    for argv in ([str(CHECKPOINTS["demo"]())], [str(CHECKPOINTS["demo"]()), "-o", "a.onnx", "--triton-repo", "r"]):
        with pytest.raises(SystemExit) as raised:
            main(argv)
        assert raised.value.code == 2
        assert "exactly one of --output" in capsys.readouterr().err
