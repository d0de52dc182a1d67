"""The speed benches that run on a GPU only at release time must not rot: their --smoke modes on the CPU."""

import json

import pytest
import torch

import service.loading
from bench import bf16_accuracy, gpu_suite, service_naive
from bench.timing import ratio_table, time_round_robin
from detection.data import generate_synthetic


def test_round_robin_waits_for_the_gpu_before_every_clock_reading(monkeypatch):
    # CUDA calls return before their kernels finish: without a synchronize per step the times are wrong.
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    variants = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    times = time_round_robin(variants, seconds=0, warmup=1, min_repeats=2, device=torch.device("cuda"))
    assert [len(t) for t in times.values()] == [2, 2]
    assert events == ["a", "b", "sync"] + ["a", "sync", "b", "sync"] * 2


def test_ratio_table_compares_with_the_fastest_fp32_row_of_the_reference():
    times = {"torchvision x, fp32 (anchor)": [4.0], "torchvision x, fp32 channels_last": [2.0],
             "torchvision x, bf16 autocast": [1.0], "ours, bf16": [0.5]}  # fmt: skip
    rows = {row["variant"]: row for row in ratio_table(times, batch_size=2, reference="torchvision", goal=2.0)}
    assert rows["ours, bf16"]["vs_anchor"] == 8.0
    assert rows["ours, bf16"]["vs_best_reference_fp32"] == 4.0  # against 2.0 s, not the bf16 row's 1.0 s
    assert rows["ours, bf16"]["images_per_s"] == 4.0


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_section_and_writes_json_and_markdown(tmp_path):
    assert gpu_suite.main(["--smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    sections = results["sections"]
    assert len(sections) == 5 and not [name for name, entry in sections.items() if "error" in entry]
    classification = {row["variant"] for row in sections["ResNet-50 classification training, images/s"]["rows"]}
    assert any("ours" in name and "bf16" in name for name in classification)
    inference = {row["variant"]: row for row in sections["Faster R-CNN R50-FPN inference, ms/image"]["rows"]}
    assert inference["ours, optimize_for_inference(), fp32"]["same_detections"] is True
    runs = sections["torchrun --nproc_per_node=1, both trainers"]["rows"]
    assert [row["returncode"] for row in runs] == [0, 0]
    assert all(row["processes_line"].startswith("processes: 1, device: cpu, batch: ") for row in runs)
    assert all(row["requests_per_s"] > 0 for row in sections["service under load"]["rows"])
    markdown = (tmp_path / "results.md").read_text()
    assert "## service under load" in markdown and "FAILED" not in markdown


@pytest.mark.slow
def test_bf16_accuracy_smoke_trains_twice_and_compares_inference(tmp_path):
    bf16_accuracy.main(["--smoke", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    tables = results["tables"]
    curve_rows = tables["training: fp32 vs bf16 autocast, same schedule (eval on the training images)"]
    assert {row["training"] for row in curve_rows} == {"fp32", "bf16"}
    assert (tmp_path / "bf16_accuracy_cocomini_curves.png").stat().st_size > 10_000
    inference = tables["inference: fp32 vs bf16 on the same images"]
    assert {(row["model"][:4], row["inference"]) for row in inference} == {
        ("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "fp32"), ("bf16", "bf16")}  # fmt: skip
    assert all(row["AP_change_points"] == 0 for row in inference if row["inference"] == "fp32")
    assert all(0 <= row["AP"] <= 1 for row in inference)
    demo = tables["demo detector: fp32 vs bf16 inference, CPU"]
    assert [row["inference"] for row in demo] == ["fp32", "bf16"] and demo[0]["AP"] > 0.5  # a trained model
    assert "budget for BF16=auto" in results["verdict"]


def test_bf16_accuracy_infer_compares_a_given_checkpoint_and_names_a_missing_split(tmp_path):
    # the CPU path of the real-image check: a model trained elsewhere, fp32 vs bf16 inference, one verdict
    layout = generate_synthetic(tmp_path / "shapes", num_train=1, num_val=4, image_size=128, seed=0)
    data_path = layout.root / "coco"
    checkpoint = bf16_accuracy.SERVICE_MODELS / "demo_detector.safetensors"
    command = ["--parts", "infer", "--checkpoint", str(checkpoint), "--data-path", str(data_path), "--split", "val"]
    bf16_accuracy.main([*command, "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["tables"]["inference: fp32 vs bf16 on the same images"]
    assert [(row["model"], row["inference"]) for row in rows] == [("demo_detector", "fp32"), ("demo_detector", "bf16")]
    assert rows[0]["AP"] > 0.5 and rows[1]["AP_change_points"] == pytest.approx(100 * (rows[1]["AP"] - rows[0]["AP"]))
    assert "budget for BF16=auto" in results["verdict"]
    with pytest.raises(SystemExit, match="instances_test.json"):
        bf16_accuracy.main([*command[:-1], "test", "--out", str(tmp_path / "out2")])
    with pytest.raises(SystemExit, match="no such file: .*nowhere.safetensors"):
        bf16_accuracy.main(["--parts", "infer", "--checkpoint", str(tmp_path / "nowhere.safetensors"),
                            "--out", str(tmp_path / "out3")])  # fmt: skip


@pytest.mark.parametrize(("value", "native", "expected"), [("true", False, True), ("false", True, False),
                                                          ("auto", True, True), ("auto", False, False)])  # fmt: skip
def test_the_naive_anchor_computes_in_the_precision_the_service_would(monkeypatch, value, native, expected):
    # bench/service.py's ratios compare serving designs: the anchor must not run fp32 beside a bf16 service
    built = {}
    monkeypatch.setenv("DETECTOR_CHECKPOINT", "demo.safetensors")
    monkeypatch.setenv("BF16", value)
    monkeypatch.setattr(service.loading, "native_bf16", lambda device: native)
    monkeypatch.setattr(service_naive, "create_naive_app", lambda path, **options: built.update(options))
    service_naive.app_from_environment()
    assert built == {"optimize": True, "bf16": expected}
