"""Training configs on the command line: help carried by each field, both flag spellings, bare switches,
the detector's options as one nested DetectorOptions, and checkpoints written before the nesting."""

import dataclasses

import pytest
from helpers import assert_sentences

from backbone.serving_checkpoint import read_manifest
from detection import DetectorOptions, build_detector
from training.config import (
    build_parser,
    config_differences,
    config_to_dict,
    flag_help,
    format_config,
    make_config,
    parse_config,
)
from training.pretrain import RECIPES as PRETRAIN_RECIPES
from training.pretrain import PretrainConfig
from training.run_options import RunOptions
from training.train_det import RECIPES as DET_RECIPES
from training.train_det import DetTrainConfig

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CONFIGS = [(DetTrainConfig, DET_RECIPES), (PretrainConfig, PRETRAIN_RECIPES)]


@pytest.mark.parametrize("config_class", [DetTrainConfig, PretrainConfig])
def test_every_training_flag_has_a_whole_sentence_of_help(config_class):
    helps = flag_help(config_class)
    assert len(helps) > 40
    assert_sentences(helps)


def test_help_that_spans_lines_survives_whole(capsys):
    helps = flag_help(DetTrainConfig)
    assert "the last entry is the test size" in helps["min_size"]
    assert helps["init"].endswith("initialises the whole model and fixes its architecture.")
    with pytest.raises(SystemExit):
        parse_config(DetTrainConfig, ["--help"], recipes=DET_RECIPES)
    shown = " ".join(capsys.readouterr().out.split())
    assert "initialises the whole model and fixes its architecture. (default: '')" in shown
    assert "the last entry is the test size (paper: 600, one scale). (default: (640, 672, 704, 736, 768, 800))" in shown
    assert "--data_path DATA_PATH, --data-path DATA_PATH" in shown


@pytest.mark.parametrize(("config_class", "recipes"), CONFIGS)
def test_hyphen_and_underscore_spellings_give_the_same_config(config_class, recipes):
    underscored = parse_config(config_class, ["--data_path", "d", "--output_dir", "o", "--log_every", "3"])
    hyphenated = parse_config(config_class, ["--data-path", "d", "--output-dir", "o", "--log-every", "3"])
    assert underscored == hyphenated
    assert (hyphenated.data_path, hyphenated.output_dir, hyphenated.log_every) == ("d", "o", 3)


@pytest.mark.parametrize("config_class", [DetTrainConfig, PretrainConfig])
def test_boolean_flags_take_a_value_or_stand_alone(config_class):
    # pretrain's channels_last is a bool, train_det's "auto"/"true"/"false" (a switch): the same spellings work
    on, off = (True, False) if config_class is PretrainConfig else ("true", "false")
    assert parse_config(config_class, ["--channels-last"]).channels_last == on
    assert parse_config(config_class, ["--channels_last", "true", "--compile"]).compile is True
    assert parse_config(config_class, ["--no-channels-last"]).channels_last == off
    assert parse_config(config_class, ["--no_channels_last"]).channels_last == off
    assert parse_config(config_class, ["--channels_last", "false"]).channels_last == off
    assert parse_config(config_class, ["--channels_last", "false", "--tensorboard"]).tensorboard is True
    assert parse_config(config_class, ["--no-tensorboard"]).tensorboard is False
    assert parse_config(config_class, ["--tensorboard", "false"]).tensorboard is False


@pytest.mark.parametrize(
    ("config_class", "output_dir"), [(DetTrainConfig, "runs/detection"), (PretrainConfig, "runs/pretrain")]
)
def test_the_shared_run_options_keep_their_help_and_each_command_its_output_folder(config_class, output_dir):
    shared = flag_help(RunOptions)
    helps = flag_help(config_class)
    assert {name: helps[name] for name in shared} == shared
    assert config_class().output_dir == output_dir
    # --help and the start-of-run printout: the command's own flags first, the shared ones close the list
    assert list(helps)[0] == "dataset" and list(helps)[-len(shared) :] == list(shared)
    assert format_config(config_class()).splitlines()[1].split()[0] == "dataset"
    # stored flat beside the command's own fields, as before RunOptions existed, so old checkpoints resume
    stored = config_to_dict(config_class(seed=3))
    assert (stored["output_dir"], stored["seed"]) == (output_dir, 3)
    assert make_config(config_class, stored) == config_class(seed=3)


def test_every_detector_option_is_a_flag_and_reaches_the_detector():
    cfg = parse_config(
        DetTrainConfig,
        ["--recipe", "synthetic", "--box-head", "conv_fc", "--fpn_norm", "bn", "--rpn_conv_depth", "2",
         "--anchor_ratios", "0.5", "1", "--box_nms_thresh", "0.4", "--box_score_thresh", "0.2",
         "--rpn_nms_thresh", "0.6", "--base_width", "8"],
        recipes=DET_RECIPES,
    )  # fmt: skip
    assert {f.name for f in dataclasses.fields(DetectorOptions)} <= set(flag_help(DetTrainConfig))
    assert cfg.detector.box_head == "conv_fc" and cfg.detector.anchor_ratios == (0.5, 1.0)
    assert cfg.detector.min_size == (128,)  # the recipe's flat value went into the nested options
    model = build_detector(backbone=cfg.backbone, head=cfg.head, num_classes=2, **cfg.detector.to_dict())
    for name in ("box_head", "fpn_norm", "rpn_conv_depth", "anchor_ratios", "box_nms_thresh", "box_score_thresh",
                 "rpn_nms_thresh", "base_width", "min_size"):  # fmt: skip
        assert model.config[name] == getattr(cfg.detector, name), name
    assert model.roi_heads.nms_thresh == 0.4 and model.rpn.nms_thresh == 0.6


def test_training_defaults_are_stated_once_and_the_head_default_is_an_empty_tuple():
    cfg = DetTrainConfig()
    assert cfg.detector.min_size == (640, 672, 704, 736, 768, 800)  # multi-scale training
    differing = {f.name for f in dataclasses.fields(DetectorOptions) if getattr(cfg.detector, f.name) != f.default}
    assert differing == {"min_size"}
    assert DetectorOptions().anchor_sizes == () and DetectorOptions(anchor_sizes=None).anchor_sizes == ()
    assert DetTrainConfig().detector is not DetTrainConfig().detector  # one instance per config


# Written by training/train_det.py before the detector's options were nested: one flat dict.
OLD_FLAT_CONFIG = {
    "dataset": "coco", "data_path": "runs/shapes/coco", "train_split": ["train"], "val_split": "val",
    "keep_empty": False, "flip_prob": 0.5, "group_aspect_ratio": True, "workers": 1, "backbone": "resnet18",
    "head": "fpn", "stride_in_1x1": True, "base_width": 16, "frozen_bn": False, "freeze_at": 0, "min_size": [128],
    "max_size": 128, "anchor_sizes": [], "fpn_channels": 64, "representation_size": 256,
    "rpn_post_nms_top_n_train": 500, "rpn_post_nms_top_n_test": 300, "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 128, "box_detections_per_img": 100, "init": "", "batch_size": 4, "lr": 0.02,
    "lr_reference_batch": 8, "momentum": 0.9, "weight_decay": 0.0001, "max_iterations": 2000, "lr_milestones": [],
    "warmup_iterations": 100, "warmup_factor": 0.001, "max_grad_norm": 0.0, "metrics": [], "eval_every": 500,
    "eval_batch_size": 2, "eval_only": "", "output_dir": "runs/x", "device": "auto", "amp": "auto",
    "channels_last": True, "compile": False, "seed": 0, "log_every": 20, "checkpoint_every": 0, "resume": "",
    "tensorboard": True,
}  # fmt: skip


def test_configs_stored_flat_before_the_nesting_still_load_and_resume_without_differences():
    cfg = make_config(DetTrainConfig, OLD_FLAT_CONFIG)
    assert (cfg.detector.base_width, cfg.detector.min_size, cfg.detector.anchor_sizes) == (16, (128,), ())
    assert cfg.backbone == "resnet18" and cfg.max_iterations == 2000
    # resume_training warns about these: a flat old config against the nested new one shows none
    assert config_differences(OLD_FLAT_CONFIG, config_to_dict(cfg)) == {}
    assert config_differences(OLD_FLAT_CONFIG, {**config_to_dict(cfg), "lr": 0.5}) == {"lr": (0.02, 0.5)}
    # and the nested form round-trips
    assert make_config(DetTrainConfig, config_to_dict(cfg)) == cfg
    # the demo detector's manifest holds such a flat config too
    stored = read_manifest(REPO_ROOT / "service" / "models" / "demo_detector.safetensors")["provenance"]["config"]
    assert make_config(DetTrainConfig, stored).detector.anchor_sizes == tuple(stored["anchor_sizes"])


def test_unknown_settings_are_named():
    with pytest.raises(ValueError, match="unknown DetTrainConfig fields: bogus"):
        make_config(DetTrainConfig, {"bogus": 1})
    with pytest.raises(ValueError, match="unknown DetectorOptions fields: bogus"):
        make_config(DetTrainConfig, {"detector": {"bogus": 1}})


def test_every_flag_is_on_the_parser_in_both_spellings():
    parser = build_parser(DetTrainConfig, recipes=DET_RECIPES)
    flags = {option for action in parser._actions for option in action.option_strings}
    for name in flag_help(DetTrainConfig):
        assert f"--{name}" in flags and f"--{name.replace('_', '-')}" in flags, name


@pytest.mark.parametrize(("config_class", "recipes"), CONFIGS)
def test_every_recipe_still_applies(config_class, recipes):
    for name, values in recipes.items():
        cfg = parse_config(config_class, ["--recipe", name], recipes=recipes)
        flat = dict(format_line.split(None, 1) for format_line in format_config(cfg).splitlines()[1:])
        for key, value in values.items():
            assert flat[key] == repr(value), (name, key)
