"""bench/cifar_paper.sh: the plan it derives from measured step times, and its --smoke run end to end on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cifar_data import write_cifar_tarball

from bench.cifar_paper import PAPER_ITERATIONS, PRIORITY, Measurement, estimated_wall, make_plan, run_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def measurement(eager_ms: float, *, compiled_ratio: float | None = 0.25, compile_s: float = 20.0) -> Measurement:
    """Step times as the bench records them: eager time proportional to depth, ResNet-20 compiled at a ratio."""
    m = Measurement(data_load_s=1.0)
    for model in PRIORITY:
        layers = int("".join(c for c in model if c.isdigit()))
        m.step_s[f"{model}/bf16_cl_eager"] = eager_ms / 1000 * layers / 20
    if compiled_ratio is not None:
        m.step_s["cifar_resnet20/bf16_cl_compiled"] = eager_ms / 1000 * compiled_ratio
        m.first_step_s["cifar_resnet20/bf16_cl_compiled"] = compile_s
    return m


def wall(models, iterations, m) -> float:
    alone, gpu, _ = estimated_wall(models, iterations, m)
    return max(alone, gpu)


def test_everything_fits_on_a_fast_device():
    plan = make_plan(list(PRIORITY), measurement(0.04), available_s=245, prefer="full_schedule")
    assert plan.models == list(PRIORITY) and plan.iterations == PAPER_ITERATIONS
    assert not any(plan.compiled.values())  # 64k steps take 3-14 s eager here: compiling (20 s+) costs more
    assert plan.estimated_s <= 245 and "all 7 nets" in plan.reason


def test_the_largest_prefix_that_fits_the_full_schedule_runs_and_the_reason_names_the_next():
    m = measurement(2.0)  # compiled ResNet-20: 0.5 ms/step, 32 s of GPU for 64k
    plan = make_plan(list(PRIORITY), m, available_s=200, prefer="full_schedule")
    assert plan.iterations == PAPER_ITERATIONS and plan.models == list(PRIORITY[: len(plan.models)])
    assert 1 <= len(plan.models) < len(PRIORITY)
    assert plan.compiled["cifar_resnet20"]  # 128 s eager against 20 s compiling + 32 s of steps
    assert wall(plan.models, PAPER_ITERATIONS, m) <= 200
    assert wall(list(PRIORITY[: len(plan.models) + 1]), PAPER_ITERATIONS, m) > 200
    assert f"adding {'ResNet-' if 'resnet' in PRIORITY[len(plan.models)] else 'plain-'}" in plan.reason


def test_a_shortened_common_schedule_when_nothing_fits_or_when_all_nets_are_preferred():
    slow = measurement(20.0, compiled_ratio=None)  # no compiled measurement (e.g. the compiler failed): eager
    plan = make_plan(list(PRIORITY), slow, available_s=200, prefer="full_schedule")
    assert not any(plan.compiled.values()) and plan.models == list(PRIORITY)
    assert 100 <= plan.iterations < PAPER_ITERATIONS and plan.iterations % 100 == 0
    assert wall(plan.models, plan.iterations, slow) <= 200
    assert wall(plan.models, plan.iterations + 100, slow) > 200
    assert f"{100 * plan.iterations / PAPER_ITERATIONS:.1f}% of the schedule" in plan.reason
    everyone = make_plan(list(PRIORITY), measurement(2.0), available_s=200, prefer="all_models")
    assert everyone.models == list(PRIORITY) and everyone.iterations < PAPER_ITERATIONS


def test_shortened_runs_keep_the_recipe_proportions(tmp_path):
    config = run_config("cifar_resnet110", data=tmp_path / "d.pt", output_dir=tmp_path, iterations=6400,
                        compiled=True, smoke=False, device="cuda")  # fmt: skip
    assert config.lr_milestones == (3200, 4800) and config.max_iterations == 6400
    assert config.warmup_factor == 0.1 and config.warmup_until_error == 0.8 and config.warmup_iterations == 400
    assert config.batch_size == 128 and config.lr == 0.1 and config.weight_decay == 1e-4 and config.momentum == 0.9
    assert config.data_on_device and config.compile and config.compile_mode == "reduce-overhead"
    full = run_config("cifar_resnet20", data=tmp_path / "d.pt", output_dir=tmp_path, iterations=PAPER_ITERATIONS,
                      compiled=False, smoke=False, device="cuda")  # fmt: skip
    assert full.lr_milestones == (32000, 48000) and full.warmup_iterations == 0 and not full.compile


@pytest.mark.slow
def test_smoke_run_writes_the_table_and_figures(tmp_path):
    data = write_cifar_tarball(tmp_path / "tiny.tar.gz", per_split={"train": 16, "test": 8})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run([str(REPO_ROOT / "bench" / "cifar_paper.sh"), str(tmp_path / "out"), "--smoke",
                             "--data", str(data)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("table6.md", "results.json", "measurement.json", "fig6_plain.png", "fig6_resnet.png", "fig7.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "results.json").read_text())
    assert summary["results"]["cifar_resnet20"]["status"] == "finished"
    assert (
        summary["results"]["cifar_resnet20"]["iterations"] == 6
        and summary["results"]["cifar_resnet110"]["status"] == "not run"
    )
    assert "| ResNet-20 |" in (out / "table6.md").read_text() and "8.75" in (out / "table6.md").read_text()
    assert set(json.loads((out / "fig7.json").read_text())) == {"ResNet-20", "plain-20"}
    assert "cifar_resnet20/bf16_cl_eager" in summary["measurement"]["step_s"]
