"""Every command answers --help and exits, without runpy warnings and without importing torch or the other
heavy modules (bench/help_time.py measures the seconds); every flag's help is a whole sentence and every long
flag takes both spellings (`--class-names`, `--class_names`)."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_sentences

from detection.convert import build_parser as convert_parser
from detection.data.synthetic import build_parser as synthetic_parser
from detection.export import build_parser as export_parser
from detection.predict import build_parser as predict_parser
from detection.quantize import build_parser as quantize_parser
from service.__main__ import build_parser as service_parser
from service.settings import Settings
from training.analysis import build_parser as analysis_parser
from training.device_data import build_parser as device_data_parser
from training.plots import build_parser as plots_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "service": ["-m", "service"],
    "backbone.summary": ["-m", "backbone.summary"],
    "detection.convert": ["-m", "detection.convert"],
    "detection.export": ["-m", "detection.export"],
    "detection.predict": ["-m", "detection.predict"],
    "detection.quantize": ["-m", "detection.quantize"],
    "detection.data.synthetic": ["-m", "detection.data.synthetic"],
    "training.plots": ["-m", "training.plots"],
    "training.analysis": ["-m", "training.analysis"],
    "training.device_data": ["-m", "training.device_data"],
    "train_det.py": ["training/train_det.py"],
    "pretrain.py": ["training/pretrain.py"],
}
# What --help must not import: each costs seconds (torch alone 3-8 s on a loaded 2-core machine).
HEAVY_MODULES = ("torch", "torchvision", "pycocotools", "onnx", "onnxruntime", "onnxscript")
# Every command answers --help without them (issue 25); service.ray_serve, added below where Ray is installed,
# imports Ray Serve itself.
LIGHT_HELP = list(COMMANDS)
PARSERS = {
    "detection.convert": convert_parser,
    "detection.export": export_parser,
    "detection.predict": predict_parser,
    "detection.quantize": quantize_parser,
    "detection.data.synthetic": synthetic_parser,
    "training.plots": plots_parser,
    "training.analysis": analysis_parser,
    "training.device_data": device_data_parser,
}
if importlib.util.find_spec("ray") is not None:  # the ray extra: service.ray_serve imports Ray Serve
    from service.ray_serve import build_parser as ray_serve_parser

    COMMANDS["service.ray_serve"] = ["-m", "service.ray_serve"]
    PARSERS["service.ray_serve"] = ray_serve_parser


def all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions and its sub-commands' (a sub-command's own help included)."""
    actions = []
    for action in parser._actions:
        actions.append(action)
        if isinstance(action, argparse._SubParsersAction):
            actions += action._choices_actions
            for subparser in action.choices.values():
                actions += all_actions(subparser)
    return actions


def imported_modules(importtime_log: str) -> set[str]:
    """The top-level packages of every module a `python -X importtime` run imported."""
    names = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name.split(".")[0])
    return names


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, subprocess.CompletedProcess]:
    """`--help` of every command, run side by side under `-X importtime`; stderr without its import lines,
    which are in `.importtime`."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-X", "importtime", *args, "--help"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, args in COMMANDS.items()
    }
    outputs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        lines = stderr.splitlines(keepends=True)
        importtime = "".join(line for line in lines if line.startswith("import time:"))
        stderr = "".join(line for line in lines if not line.startswith("import time:"))
        outputs[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        outputs[name].importtime = importtime
    return outputs


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_answers_help_and_exits_without_warnings(help_outputs, name):
    result = help_outputs[name]
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    assert "RuntimeWarning" not in result.stderr, result.stderr


@pytest.mark.parametrize("name", LIGHT_HELP)
def test_help_imports_no_heavy_module(help_outputs, name):
    result = help_outputs[name]
    assert result.returncode == 0 and "argparse" in imported_modules(result.importtime)
    assert not imported_modules(result.importtime) & set(HEAVY_MODULES)


def test_imported_modules_reads_the_importtime_log():
    log = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |     torch._C\n"
        "import time:      3000 |       3120 |   torch\n"
        "import time:        40 |         40 | argparse\n"
    )
    assert imported_modules(log) == {"torch", "argparse"}


def test_service_help_lists_every_setting_instead_of_starting_a_server(help_outputs):
    shown = help_outputs["service"].stdout
    for name in Settings.model_fields:
        assert name.upper() in shown, name
    assert "Uvicorn running" not in help_outputs["service"].stderr


def test_service_refuses_arguments_and_points_at_the_environment(capsys):
    from service.__main__ import main

    assert main(["--port", "9000"]) == 2
    assert "settings are environment variables" in capsys.readouterr().err


def test_service_settings_are_described_in_whole_sentences():
    assert_sentences({name: field.description or "" for name, field in Settings.model_fields.items()})
    assert service_parser().epilog.count("(default:") == len(Settings.model_fields)


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_flag_of_every_command_has_a_whole_sentence_of_help(name):
    parser = PARSERS[name]()
    helps = {
        "/".join(action.option_strings) or action.dest: action.help or ""
        for action in all_actions(parser)
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and action.help != argparse.SUPPRESS
    }
    assert helps
    assert_sentences(helps)


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_long_flag_takes_both_spellings(name):
    flags = {option for action in all_actions(PARSERS[name]()) for option in action.option_strings}
    for flag in flags:
        if flag.startswith("--") and ("-" in flag[2:] or "_" in flag[2:]):
            assert flag.replace("-", "_").replace("__", "--", 1) in flags, flag
            assert "--" + flag[2:].replace("_", "-") in flags, flag


def test_both_spellings_give_the_same_values():
    parser = predict_parser()
    common = ["a.jpg", "--checkpoint", "m.safetensors"]
    hyphens = parser.parse_args([*common, "--output-dir", "o", "--class-names", "c.txt", "--score-threshold", "0.3"])
    underscores = parser.parse_args([*common, "--output_dir", "o", "--class_names", "c.txt", "--score_threshold=0.3"])
    assert hyphens == underscores and hyphens.output == "o" and hyphens.score_threshold == 0.3
    assert synthetic_parser().parse_args(["--out", "x", "--num_train", "3"]).num_train == 3
