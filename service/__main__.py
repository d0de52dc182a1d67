"""`python -m service`: serve the API on HOST:PORT with the models the settings name.

Checks that the checkpoint files exist first, so a fresh checkout says which file is missing
and how to get it instead of printing a startup traceback.
"""

import argparse
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from backbone.command_logging import setup_logging
from service.settings import DEMO_MODEL_DIR, Settings, get_settings
from service.settings_doc import default_text

DEMO_HINT = (
    "The demo models are trained by this project's own pipeline: `make demo-models` retrains them; "
    "or point DETECTOR_CHECKPOINT / CLASSIFIER_CHECKPOINT at your checkpoints "
    "(an empty value disables that model)."
)


def settings_help() -> str:
    """Every setting, its default and what it does, from service/settings.py (`python -m service --help`)."""
    lines = ["Settings are environment variables (e.g. `PORT=9000 python -m service`):"]
    for name, field in Settings.model_fields.items():
        lines.append(f"  {name.upper()} (default: {default_text(name)})\n      {field.description}")
    return "\n".join(lines)


def problem_line(item: dict) -> str:
    """One setting's problem in one line after its name: "MAX_BATCH: set but empty: ...", "PORT: Input ..."."""
    name = ".".join(map(str, item["loc"])).upper() or "settings"
    # a validator that already names its setting (its message reads the same raised elsewhere) is not named twice
    return f"{name}: {item['msg'].removeprefix('Value error, ').removeprefix(f'{name}: ')}"


def build_parser() -> argparse.ArgumentParser:
    """No flags besides --help: every setting is an environment variable."""
    return argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__.split("\n\n")[0],
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stopped; `argv` (default: the command line) may only ask for --help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if any(argument in ("-h", "--help") for argument in argv):
        print(parser.format_help())
        return 0
    if argv:
        print(
            f"python -m service takes no arguments (got {' '.join(argv)}): settings are environment variables, "
            "e.g. `PORT=9000 python -m service`; `python -m service --help` lists them",
            file=sys.stderr,
        )
        return 2
    try:
        settings = get_settings()
    except ValidationError as error:  # a setting that would silently weaken the service: refuse to start
        problems = [problem_line(item) for item in error.errors()]
        print("resdet service cannot start:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    configured = {
        "DETECTOR_CHECKPOINT": settings.detector_checkpoint,
        "CLASSIFIER_CHECKPOINT": settings.classifier_checkpoint,
    }
    configured |= {f"MODEL_CHECKPOINTS[{index}]": path for index, path in enumerate(settings.model_checkpoints)}
    missing = [
        f"{name}: checkpoint not found: {path}" for name, path in configured.items() if path and not path.is_file()
    ]
    if settings.models_dir is not None and not settings.models_dir.is_dir():
        missing.append(f"MODELS_DIR: not a folder: {settings.models_dir}")
    if missing:
        print("resdet service cannot start:", *missing, sep="\n  ", file=sys.stderr)
        if any(path and path.parent == DEMO_MODEL_DIR for path in configured.values()):
            print(DEMO_HINT, file=sys.stderr)
        return 2
    setup_logging()
    from service.app import create_app  # torch and the models' code: only when serving, not for --help

    # server_header=False: naming the server software and version only helps whoever looks for its bugs
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
