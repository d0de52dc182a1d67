"""Runtimes (detection/runtimes.py): every runtime gives the eager model's detections and logits from the
same inputs; `auto` follows its fixed rule and says what it picked; combinations that cannot run are refused
with a message that says what to do instead."""

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from exported_models import CHECKPOINTS, DEMO_CLASSIFIER, DEMO_DETECTOR, exported
from test_export import assert_same_detections, three_sizes

from backbone.serving_checkpoint import load_classifier
from detection import load_detector, runtimes
from detection.data.synthetic_shapes import render_image
from detection.images import to_float_image
from detection.onnx_export import classifier_input_size
from detection.predictor import Predictor
from detection.runtime_predictor import RuntimePredictor
from detection.runtimes import RuntimeChoiceError, load_network, pick_runtime, require_eager

GRAPH_RUNTIMES = ("onnxruntime", "openvino")
COMPILE_TESTS = "RESDET_COMPILE_TESTS"


def needs(runtime: str) -> None:
    if not runtimes.installed(runtime):
        pytest.skip(f"{runtime} is not installed (pip install 'resdet[runtimes]' or 'resdet[export]')")


def network_source(name: str, runtime: str):
    """The graph runtimes read the cached ONNX export (an export takes a minute); PyTorch the checkpoint."""
    return exported(name) if runtime in GRAPH_RUNTIMES else CHECKPOINTS[name]()


def network_detections(network, images: list[torch.Tensor], model) -> list[dict[str, np.ndarray]]:
    """The network's answer to the Predictor's own inputs (prepare, then pad to one batch)."""
    predictor = Predictor(model, device="cpu", precision="fp32", optimize=False)
    boxes, scores, labels, counts = network(*predictor.batch([predictor.prepare(image) for image in images]))
    return [
        {"boxes": box[:n].numpy(), "scores": score[:n].numpy(), "labels": label[:n].numpy()}
        for box, score, label, n in zip(boxes, scores, labels, counts)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", *GRAPH_RUNTIMES])
@pytest.mark.parametrize("name", ["demo", "c4"])
def test_every_runtime_gives_the_eager_detections(name, runtime, one_thread):
    """The exported graph's in-graph postprocessing, run by each runtime, against Detector.forward."""
    needs(runtime)
    model, _ = load_detector(CHECKPOINTS[name]())
    network = load_network(network_source(name, runtime), runtime=runtime, precision="fp32")
    assert (network.kind, network.runtime, network.precision) == ("detector", runtime, "fp32")
    images = three_sizes(shapes=name == "demo")
    for batch in ([images[0]], images):  # batch 1; batch 3 of three different sizes
        with torch.no_grad():
            _, ours = model(batch)
        for eager, theirs in zip(ours, network_detections(network, batch, model)):
            assert_same_detections(eager, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", *GRAPH_RUNTIMES])
def test_the_predictor_answers_alike_under_every_runtime(runtime, one_thread):
    """RuntimePredictor: the Predictor's records with the network call swapped, from a checkpoint or an export
    (whose transform is rebuilt from its manifest)."""
    needs(runtime)
    eager = Predictor.from_checkpoint(DEMO_DETECTOR, device="cpu", precision="fp32", optimize=False)
    swapped = RuntimePredictor.from_source(network_source("demo", runtime), runtime=runtime, precision="fp32")
    images = three_sizes(shapes=True)
    expected = eager.predict(images, score_threshold=0.3)
    answered = swapped.predict(images, score_threshold=0.3)
    assert {answer["precision"] for answer in answered} == {"fp32"}
    for ours, theirs in zip(expected, answered):
        assert len(ours["detections"]) == len(theirs["detections"]) > 0
        for mine, other in zip(ours["detections"], theirs["detections"]):
            assert (mine["label"], mine["name"]) == (other["label"], other["name"])
            assert np.abs(np.subtract(mine["box"], other["box"])).max() <= 0.02
            assert abs(mine["score"] - other["score"]) < 1e-4
    if runtime != "torch":
        with pytest.raises(ValueError, match="another overlap needs runtime 'torch'"):
            swapped.predict(images[:1], iou_threshold=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_bf16_detections_keep_the_confident_fp32_ones(runtime, one_thread):
    """bf16 moves scores in the third digit: every fp32 detection above 0.5 is still found, same class, near."""
    needs(runtime)
    model, _ = load_detector(DEMO_DETECTOR)
    network = load_network(network_source("demo", runtime), runtime=runtime, precision="bf16")
    rng = np.random.default_rng(5)  # the shapes it was trained on: on photographs its boxes mean nothing
    images = [to_float_image(render_image(rng, image_size=size, max_objects=3)[0]) for size in (128, 192)]
    with torch.no_grad():
        _, fp32 = model(images)
    for ours, theirs in zip(fp32, network_detections(network, images, model)):
        confident = ours["scores"] > 0.5
        assert confident.any()
        for box, label in zip(ours["boxes"][confident].numpy(), ours["labels"][confident].numpy()):
            same_class = theirs["boxes"][theirs["labels"] == label]
            assert len(same_class) and np.abs(same_class - box).max(axis=1).min() < 2.0


def classifier_crops(batch: int) -> torch.Tensor:
    _, manifest = load_classifier(DEMO_CLASSIFIER)
    size = classifier_input_size(manifest)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize("runtime", ["torch", *GRAPH_RUNTIMES])
def test_every_runtime_gives_the_classifier_logits(runtime, one_thread):
    needs(runtime)
    model, _ = load_classifier(DEMO_CLASSIFIER)
    network = load_network(network_source("classifier", runtime), runtime=runtime, precision="fp32")
    for batch in (1, 5):
        crops = classifier_crops(batch)
        with torch.no_grad():
            expected = model(crops)
        (logits,) = network(crops)
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max() < 1e-4


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_bf16_classifier_logits_point_where_fp32_ones_do(runtime, one_thread):
    needs(runtime)
    model, _ = load_classifier(DEMO_CLASSIFIER)
    network = load_network(network_source("classifier", runtime), runtime=runtime, precision="bf16")
    crops = classifier_crops(16)
    with torch.no_grad():
        expected = model(crops)
    (logits,) = network(crops)
    assert logits.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(logits, expected).min() > 0.99
    assert 0 < (logits - expected).abs().max() < 1.0  # bf16 did run: not fp32's logits to the bit


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get(COMPILE_TESTS) != "1",
    reason=f"torch.compile takes 1-3 minutes on 2 cores, out of `make test` (issue 26): set {COMPILE_TESTS}=1",
)
def test_torch_compile_gives_the_eager_logits(one_thread):
    """Inductor with frozen weights, on the small demo classifier."""
    model, _ = load_classifier(DEMO_CLASSIFIER)
    network = load_network(DEMO_CLASSIFIER, runtime="torch-compile", precision="fp32")
    for batch in (2, 3):  # a second batch size: dynamic shapes, no recompilation error
        crops = classifier_crops(batch)
        with torch.no_grad():
            expected = model(crops)
        (logits,) = network(crops)
        assert (logits - expected).abs().max() < 1e-4


def test_auto_follows_a_fixed_rule_and_reports_it(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda runtime: True)
    assert pick_runtime("auto", precision="fp32") == "openvino"
    monkeypatch.setattr(runtimes, "installed", lambda runtime: runtime != "openvino")
    assert pick_runtime("auto", precision="fp32") == "onnxruntime"
    assert pick_runtime("auto", precision="bf16") == "torch"  # ONNX Runtime has no bf16 CPU kernels
    monkeypatch.setattr(runtimes, "installed", lambda runtime: runtime in ("torch", "torch-compile"))
    assert pick_runtime("auto", precision="fp32") == "torch"
    network = load_network(DEMO_CLASSIFIER, runtime="auto", precision="fp32")
    assert network.describe() == {
        "runtime": "torch", "precision": "fp32", "requested_runtime": "auto",
        "reason": "auto: neither OpenVINO nor ONNX Runtime is installed: eager PyTorch",
    }  # fmt: skip
    for installed, precision, reason in (
        (("openvino",), "fp32", "auto: OpenVINO is installed"),
        (("onnxruntime",), "fp32", "auto: OpenVINO is not installed, ONNX Runtime is"),
        (("onnxruntime",), "bf16", "auto: OpenVINO is not installed and ONNX Runtime has no bf16 CPU kernels"),
    ):
        monkeypatch.setattr(runtimes, "installed", lambda runtime, present=installed: runtime in present)
        chosen = pick_runtime("auto", precision=precision)
        said = runtimes.pick_reason("auto", chosen, kind="detector", precision=precision, quantized=False)
        assert said.startswith(reason)
    monkeypatch.setattr(runtimes, "installed", lambda runtime: True)
    classifier = load_network(DEMO_CLASSIFIER, runtime="auto", precision="bf16", build=False)  # nothing exported
    assert classifier.reason == (
        "auto: OpenVINO is installed (fastest on ResNet-50 at bf16 and int8; at fp32 ONNX Runtime measured about as "
        "fast or faster, docs/BENCHMARKS.md)"
    )  # the detector's figures are not the classifier's reason
    asked = runtimes.pick_reason("onnxruntime", "onnxruntime", kind="detector", precision="fp32", quantized=False)
    assert asked == "asked for onnxruntime"


def test_an_absent_runtime_is_named_with_its_extra(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda runtime: runtime != "openvino")
    with pytest.raises(RuntimeChoiceError, match=r"'openvino' is not installed: pip install 'resdet\[runtimes\]'"):
        load_network(DEMO_CLASSIFIER, runtime="openvino")


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [
        ("tensorrt", "fp32", "runtime 'tensorrt': choose one of auto, torch"),
        ("torch", "fp16", "precision 'fp16': choose one of fp32, bf16, int8"),
        ("torch", "int8", "int8 runs only from a model written by `python -m detection.quantize`"),
        ("onnxruntime", "int8", "int8 runs only from a model written by `python -m detection.quantize`"),
        ("onnxruntime", "bf16", "onnxruntime has no bf16 CPU kernels"),
    ],
)
def test_a_combination_that_cannot_run_is_refused_with_what_to_do(runtime, precision, message):
    needs("onnxruntime")
    with pytest.raises(RuntimeChoiceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_network(DEMO_CLASSIFIER, runtime=runtime, precision=precision)


@pytest.mark.slow
def test_an_export_runs_only_under_a_graph_runtime(one_thread):
    needs("onnxruntime")
    with pytest.raises(RuntimeChoiceError, match="runs under onnxruntime or openvino, not 'torch'"):
        load_network(exported("classifier"), runtime="torch")
    with pytest.raises(RuntimeChoiceError, match="int8 runs only from a model written by"):
        load_network(exported("classifier"), runtime="onnxruntime", precision="int8")


def test_an_onnx_file_without_a_resdet_manifest_is_refused(tmp_path):
    needs("onnxruntime")
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"\x08\x07")  # an ONNX ModelProto with ir_version 7 and nothing else
    with pytest.raises(RuntimeChoiceError, match="foreign.onnx was not written by detection.export"):
        load_network(foreign, runtime="onnxruntime")


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime", "torch-compile"])
def test_options_that_need_the_eager_model_refuse_other_runtimes(runtime):
    require_eager("torch", "--refine-boxes")
    with pytest.raises(RuntimeChoiceError, match=f"--refine-boxes needs the eager PyTorch model; runtime '{runtime}'"):
        require_eager(runtime, "--refine-boxes")


def test_a_checkpoint_is_exported_once_and_reused(tmp_path, one_thread):
    needs("onnxruntime")
    first = load_network(DEMO_CLASSIFIER, runtime="onnxruntime", cache_dir=tmp_path)
    (written,) = (tmp_path / "exports").glob("*.onnx")
    modified = written.stat().st_mtime_ns
    second = load_network(DEMO_CLASSIFIER, runtime="onnxruntime", cache_dir=tmp_path)
    assert list((tmp_path / "exports").glob("*.onnx")) == [written]  # beside it only its (empty) lock file
    assert written.stat().st_mtime_ns == modified
    crops = classifier_crops(2)
    assert torch.equal(first(crops)[0], second(crops)[0])


@pytest.mark.slow
def test_the_predict_command_runs_an_export_under_openvino_and_records_it(tmp_path, one_thread):
    needs("openvino")
    from detection.predict import main as predict_main
    from detection.prediction_pipeline import PREDICTIONS_FILE, SETTINGS_FILE

    rng = np.random.default_rng(9)
    for index in range(2):
        render_image(rng, image_size=160, max_objects=3)[0].save(tmp_path / f"shapes{index}.png")
    records = {}
    for runtime, checkpoint in (("torch", DEMO_DETECTOR), ("openvino", exported("demo"))):
        output = tmp_path / runtime
        predict_main(
            [str(tmp_path / "*.png"), "--checkpoint", str(checkpoint), "--output", str(output), "--runtime", runtime,
             "--precision", "fp32", "--score-threshold", "0.3"]
        )  # fmt: skip
        settings = json.loads((output / SETTINGS_FILE).read_text())
        assert (settings["runtime"], settings["precision"]) == (runtime, "fp32")
        lines = [json.loads(line) for line in (output / PREDICTIONS_FILE).read_text().splitlines()]
        records[runtime] = {Path(line["file"]).name: line["detections"] for line in lines}
    assert records["torch"].keys() == records["openvino"].keys() and any(records["torch"].values())
    for name, ours in records["torch"].items():
        theirs = records["openvino"][name]
        assert [d["label"] for d in ours] == [d["label"] for d in theirs]
        assert all(np.abs(np.subtract(a["box"], b["box"])).max() <= 0.02 for a, b in zip(ours, theirs))


def test_two_starts_at_once_export_once_and_read_one_file(tmp_path, monkeypatch):
    """The export cache under two processes starting together: the second waits on the first's lock (flock, which
    two threads' own opens contend for as two processes do) and reads its file; neither sees a partial one."""
    from detection import onnx_export

    calls, started = [], threading.Event()

    def slow_export(checkpoint, output):
        calls.append(checkpoint)
        started.set()
        time.sleep(0.5)  # the other start arrives while this one exports
        Path(output).write_bytes(b"graph")
        return onnx_export.ExportedModel(path=Path(output), kind="classifier", manifest={})

    monkeypatch.setattr(onnx_export, "export_checkpoint", slow_export)
    results = []

    def start() -> None:
        results.append(runtimes.exported_onnx(DEMO_CLASSIFIER, cache_dir=tmp_path))

    threads = [threading.Thread(target=start) for _ in range(2)]
    threads[0].start()
    started.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == b"graph"
    assert sorted(path.suffix for path in (tmp_path / "exports").iterdir()) == [".lock", ".onnx"]  # no scratch left


def test_an_unwritable_export_cache_is_named_with_the_setting_to_change(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(RuntimeChoiceError, match=r"cannot write the export cache .* set RESDET_CACHE to a writable"):
        runtimes.exported_onnx(DEMO_CLASSIFIER, cache_dir=blocked)


@pytest.mark.parametrize("runtime", ["openvino", "auto"])
@pytest.mark.parametrize("flag", [["--refine-boxes"], ["--test-sizes", "96", "128"], ["--tile-size", "64"]])
def test_the_predict_command_refuses_test_time_rungs_outside_eager_pytorch(runtime, flag, tmp_path):
    """Test-time rungs run the eager model's pieces: under another runtime they were dropped without a word."""
    from detection.predict import main as predict_main

    render_image(np.random.default_rng(1), image_size=96, max_objects=1)[0].save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=f"error: --runtime {runtime}: {flag[0]} needs the eager PyTorch model; "):
        predict_main([str(tmp_path / "a.png"), "--checkpoint", str(DEMO_DETECTOR), "--output", str(tmp_path / "out"),
                      "--runtime", runtime, *flag])  # fmt: skip
    assert not (tmp_path / "out").exists()
