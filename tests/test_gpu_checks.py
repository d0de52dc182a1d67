"""bench/gpu_checks.py, the one command the GPU machine runs, exercised in its CPU smoke mode."""

import json

from bench.gpu_checks import CHECKS, main


def test_smoke_run_passes_every_check_and_writes_both_summaries(tmp_path, one_thread):
    assert main([str(tmp_path / "out"), "--smoke"]) == 0
    report = json.loads((tmp_path / "out" / "gpu_checks.json").read_text())
    assert list(report["checks"]) == list(CHECKS)
    assert all(result["ok"] for result in report["checks"].values()), report["checks"]
    assert report["checks"]["service"]["optimize"] is True  # the service's default path
    assert report["checks"]["train_bf16"]["max_loss_difference_after_resume"] == 0.0  # CPU kernels: exact
    assert report["checks"]["anchors"]["before_fix_max_px_off"] > 0  # the check can see the bug it guards
    summary = (tmp_path / "out" / "gpu_checks.md").read_text()
    assert all(f"| {name} | yes |" in summary for name in CHECKS)
