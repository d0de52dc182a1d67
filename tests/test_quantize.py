"""int8 with an accuracy guard (detection/quantize.py, its work in detection/int8_calibration.py) and the held-out
scores it rests on (detection/network_accuracy.py). Calibration here is kept tiny (a dozen 32 px images): issue 26 caps
torch.compile and int8 calibration in the suite at about a minute together."""

import shutil
import warnings

import numpy as np
import pytest
import torch
from cifar_data import write_cifar_tarball
from exported_models import DEMO_CLASSIFIER, DEMO_DETECTOR, seed_export_cache
from PIL import Image

from detection import int8_calibration, network_accuracy, quantize
from detection.data.synthetic_shapes import generate_synthetic
from detection.network_accuracy import coco_ap, image_files, labelled_images, matched_fraction, top1
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import CACHE_ENV, RuntimeChoiceError, installed, load_network, read_graph_manifest

FORMATS = {"openvino": ".xml", "onnxruntime": ".onnx"}


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """CIFAR-laid-out JPEGs of three of the demo classifier's classes (bird, cat, ship)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_tarball(root / "cifar10-jpeg.tar.gz", per_split={"train": 4, "test": 4})
    return root / "cifar10"


def quantize_args(cifar_like, output, *extra: str) -> list[str]:
    return [
        str(DEMO_CLASSIFIER), "--calibration", str(cifar_like / "train"), "--eval-folder", str(cifar_like),
        "--output", str(output), *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_int8_model_carries_its_measured_accuracy(runtime, cifar_like, tmp_path, capsys, one_thread):
    if not installed(runtime) or (runtime == "openvino" and not installed("onnxruntime")):
        pytest.skip(f"{runtime} is not installed (pip install 'resdet[runtimes,export]')")
    output = tmp_path / f"demo_classifier.int8{FORMATS[runtime]}"
    quantize.main(quantize_args(cifar_like, output, "--runtime", runtime, "--max-drop", "100"))
    assert f"wrote {output}: top-1 fp32" in capsys.readouterr().out
    report = read_graph_manifest(output)["quantization"]
    assert (report["runtime"], report["calibration_images"], report["metric"]) == (runtime, 12, "top-1")
    samples = labelled_images(cifar_like, class_names=read_graph_manifest(output)["class_names"], split="test")
    fp32 = load_network(DEMO_CLASSIFIER, runtime="torch")
    int8 = load_network(output, runtime=runtime, precision="int8")
    assert int8.describe()["quantization"] == report
    assert load_network(output, precision="int8").runtime == runtime  # auto: the runtime it was checked under
    if runtime == "onnxruntime" and installed("openvino"):
        with pytest.raises(RuntimeChoiceError, match="was quantized and checked for onnxruntime, not 'openvino'"):
            load_network(output, runtime="openvino", precision="int8")
    assert report["fp32"] == round(top1(fp32, samples), 2)
    assert report["int8"] == round(top1(int8, samples), 2)
    assert report["drop"] == round(report["fp32"] - report["int8"], 2)
    crops = torch.cat([pixels for pixels, _ in network_accuracy.crops(fp32, samples)])
    (expected,), (logits,) = fp32(crops), int8(crops)
    assert torch.nn.functional.cosine_similarity(logits, expected).min() > 0.9
    assert (logits - expected).abs().max() > 1e-3  # int8 did run


@pytest.mark.slow
def test_a_model_that_drops_too_far_is_not_written_unless_forced(cifar_like, tmp_path, monkeypatch, one_thread):
    if not installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed (pip install 'resdet[export]')")
    scores = iter([90.0, 88.5, 90.0, 88.5])  # fp32, then int8: a 1.5-point drop, each run
    monkeypatch.setattr(int8_calibration, "top1", lambda network, samples: next(scores))
    output = tmp_path / "out" / "demo_classifier.int8.onnx"
    with pytest.raises(SystemExit, match=r"refused: top-1 fp32 90.00, int8 88.50 \(drop 1.50\) exceeds --max-drop 1.0"):
        quantize.main(quantize_args(cifar_like, output, "--runtime", "onnxruntime"))
    assert list(output.parent.iterdir()) == []  # nothing written, no partial file left
    quantize.main(quantize_args(cifar_like, output, "--runtime", "onnxruntime", "--force"))
    report = read_graph_manifest(output)["quantization"]
    assert (report["drop"], report["forced"], report["max_drop"]) == (1.5, True, 1.0)


# The detector's postprocessing in OpenVINO: none of it may read an int8 (fake-quantized) tensor.
POSTPROCESSING_TYPES = {
    "Multiply", "Subtract", "Divide", "Exp", "Sqrt", "Log", "Sigmoid", "Softmax", "TopK", "NonMaxSuppression",
    "Minimum", "Maximum", "Clamp", "Gather", "ROIAlign", "ScatterNDUpdate",
}  # fmt: skip


def fed_by_quantizer(value) -> bool:
    """Whether the input `value` reads a FakeQuantize's output, directly or through max pooling or a reshape
    (where NNCF moves a quantizer up to)."""
    node = value.get_source_output().get_node()
    while node.get_type_name() in ("MaxPool", "Reshape"):
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


@pytest.mark.slow
def test_detector_int8_quantizes_the_network_and_keeps_postprocessing_in_float(tmp_path, monkeypatch, one_thread):
    """The calibration of the old code quantized the box-area sqrt, box clipping and each FPN level's RoIAlign
    output: a level without RoIs on a calibration image overflowed NNCF's statistics (numpy's warning) and got a
    range of [0, 8e-5]. Calibrated on images of the normalisation's mean colour (network input 0 everywhere, every
    range near zero), the int8 model really loses its AP, and the guard still refuses it."""
    if not installed("openvino") or not installed("onnxruntime"):
        pytest.skip("openvino is not installed (pip install 'resdet[runtimes,export]')")
    import openvino

    seed_export_cache("demo", tmp_path / "cache")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "grey").mkdir()
    for index in range(2):
        Image.new("RGB", (128, 128), (124, 116, 104)).save(tmp_path / "grey" / f"{index}.png")
    shapes = generate_synthetic(tmp_path / "shapes", num_train=1, num_val=4, image_size=128, seed=3)
    kept = tmp_path / "kept"
    calibrate = int8_calibration.calibrate

    def calibrate_and_keep(onnx_path, items, *, runtime, output):
        written = calibrate(onnx_path, items, runtime=runtime, output=output)
        shutil.copytree(written.parent, kept)  # the refusal below deletes it
        return written

    monkeypatch.setattr(int8_calibration, "calibrate", calibrate_and_keep)
    output = tmp_path / "out" / "demo_detector.int8.xml"
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit, match="refused: AP fp32"):
        warnings.simplefilter("always")
        quantize.main(
            [str(DEMO_DETECTOR), "--runtime", "openvino", "--calibration", str(tmp_path / "grey"), "--eval-coco",
             str(shapes.coco_annotation_file("val")), "--eval-images", str(shapes.coco_image_dir("val")),
             "--output", str(output)]
        )  # fmt: skip
    assert not output.exists()
    assert not [warning for warning in caught if "overflow" in str(warning.message)]
    model = openvino.Core().read_model(str(kept / output.name))
    quantizers = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert not [op for op in quantizers if op.input_value(0).get_node().get_type_name() == "ROIAlign"]
    readers = {target.get_node().get_type_name() for op in quantizers for target in op.output(0).get_target_inputs()}
    assert not readers & POSTPROCESSING_TYPES
    compute = [op for op in model.get_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    assert len(compute) > 40  # the ResNet-18 backbone, FPN, RPN head and box head, all of them in int8
    assert all(fed_by_quantizer(op.input(0)) for op in compute)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runtime", "openvino", "--output", "x.onnx"], "--runtime openvino writes a .xml file, not x.onnx"),
        (["--eval-coco", "a.json", "--output", "x.xml"], "give --eval-coco and --eval-images together"),
        (["--output", "x.xml"], "give a held-out set"),
    ],
)
def test_the_command_names_what_is_missing(extra, message, capsys):
    with pytest.raises(SystemExit):
        quantize.main([str(DEMO_CLASSIFIER), "--calibration", "images", *extra])
    assert message in capsys.readouterr().err


def test_a_detector_is_not_scored_on_class_folders(cifar_like, tmp_path):
    with pytest.raises(SystemExit, match="a detector is scored on a COCO-format set"):
        quantize.main(
            [str(DEMO_DETECTOR), "--runtime", "openvino", "--calibration", str(cifar_like), "--eval-folder",
             str(cifar_like), "--output", str(tmp_path / "d.xml")]
        )  # fmt: skip


def test_calibration_images_are_spread_over_every_folder(cifar_like):
    chosen = image_files([cifar_like / "train"], limit=3)
    assert sorted(path.parent.name for path in chosen) == ["bird", "cat", "ship"]
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        image_files([cifar_like / "nowhere"])


def test_class_folders_the_model_does_not_know_are_refused(cifar_like):
    with pytest.raises(ValueError, match=r"class folders \['bird'\] are not among the model's classes"):
        labelled_images(cifar_like, class_names=["cat", "ship"], split="test")


def test_the_demo_detector_scores_on_held_out_shapes_and_matches_itself(tmp_path, one_thread):
    layout = generate_synthetic(tmp_path, num_train=1, num_val=6, image_size=128, seed=3)
    predictor = RuntimePredictor.from_source(DEMO_DETECTOR, runtime="torch")
    score = coco_ap(predictor, layout.coco_annotation_file("val"), layout.coco_image_dir("val"))
    assert score.ap > 50.0  # a trained model on its own kind of images (its manifest: AP ~80 on synthetic val)
    assert len(score.predictions) == 6
    assert matched_fraction(score.predictions, score.predictions) == 1.0
    moved = {
        key: {**value, "boxes": value["boxes"] + np.array([40.0, 0.0, 40.0, 0.0], dtype=np.float32)}
        for key, value in score.predictions.items()
    }
    assert matched_fraction(score.predictions, moved) < 0.5
