"""The one logging setup of the commands: INFO by default, --quiet for warnings and errors, --verbose for debug."""

import argparse
import logging

import pytest

from backbone.command_logging import add_logging_flags, setup_logging


@pytest.mark.parametrize(
    ("flags", "level"), [([], logging.INFO), (["-q"], logging.WARNING), (["--verbose"], logging.DEBUG)]
)
def test_the_flags_set_the_level_of_every_logger(flags, level):
    parser = argparse.ArgumentParser()
    add_logging_flags(parser)
    args = parser.parse_args(flags)
    try:
        setup_logging(quiet=args.quiet, verbose=args.verbose)
        assert logging.getLogger().level == level
        assert logging.getLogger("detection.convert").getEffectiveLevel() == level
    finally:
        setup_logging()


def test_a_second_setup_adds_no_second_handler(capsys):
    setup_logging()
    setup_logging(verbose=True)
    logging.getLogger("detection.export").info("wrote model.onnx")
    assert capsys.readouterr().err.count("INFO detection.export: wrote model.onnx") == 1
    setup_logging()


def test_quiet_and_verbose_exclude_each_other(capsys):
    parser = argparse.ArgumentParser()
    add_logging_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--quiet", "--verbose"])
    assert "not allowed with argument" in capsys.readouterr().err
