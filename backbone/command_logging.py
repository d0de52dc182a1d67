"""One logging setup for every command: `logging` with levels, `--quiet` (warnings and errors only) and
`--verbose` (debug messages too) beside the default (what the command did and where it wrote)."""

import argparse
import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the service's log lines and the commands' alike


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """`--quiet` / `-q` and `--verbose` / `-v`, which exclude each other."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="Print only warnings and errors.")
    group.add_argument("--verbose", "-v", action="store_true", help="Print debug messages too.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test or a redirection may have replaced it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_level(*, quiet: bool = False, verbose: bool = False) -> int:
    """The level the flags ask for: WARNING with --quiet, DEBUG with --verbose, INFO otherwise."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Route every logger of the process to stderr at the level the flags ask for (INFO by default). Called again
    (a command run twice in one process), it only changes the level; other handlers (a test's) are kept."""
    root = logging.getLogger()
    root.setLevel(log_level(quiet=quiet, verbose=verbose))
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
