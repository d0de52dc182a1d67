"""`python -m service`: serve the API on HOST:PORT with the models the settings name.

Checks that the checkpoint files exist first, so a fresh checkout says which file is missing
and how to get it instead of printing a startup traceback.
"""

import argparse
import logging
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.settings import DEMO_MODEL_DIR, Settings, get_settings

DEMO_HINT = (
    "The demo models are trained by this project's own pipeline: `make demo-models` retrains them; "
    "or point DETECTOR_CHECKPOINT / CLASSIFIER_CHECKPOINT at your checkpoints "
    "(an empty value disables that model)."
)


def settings_help() -> str:
    """One entry per setting: its environment variable, default and description."""
    lines = ["settings (environment variables; `PORT=9000 python -m service`):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, type(DEMO_MODEL_DIR)) and default.parent == DEMO_MODEL_DIR:
            default = f"service/models/{default.name}"  # relative: the same in every checkout
        lines.append(f"  {name.upper():<24} {field.description} (default: {default})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """No flags besides --help: every setting is an environment variable."""
    return argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the resdet API (/detect, /classify, /healthz, /readyz, /metrics) on HOST:PORT "
        "with the detector and classifier the settings name.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] = ()) -> int:
    """Serve until stopped; `argv` is the command line after `python -m service` (only --help is accepted)."""
    _, extra = build_parser().parse_known_args(argv)  # --help prints the settings and exits
    if extra:
        print(
            f"python -m service takes no arguments (got {' '.join(extra)}): settings are environment variables, "
            "e.g. `PORT=9000 python -m service`; `python -m service --help` lists them",
            file=sys.stderr,
        )
        return 2
    try:
        settings = get_settings()
    except ValidationError as error:  # a setting that would silently weaken the service: refuse to start
        problems = [
            f"{'.'.join(map(str, item['loc'])).upper() or 'settings'}: {item['msg']}" for item in error.errors()
        ]
        print("resdet service cannot start:", *problems, sep="\n  ", file=sys.stderr)
        return 2
    configured = {
        "DETECTOR_CHECKPOINT": settings.detector_checkpoint,
        "CLASSIFIER_CHECKPOINT": settings.classifier_checkpoint,
    }
    missing = [
        f"{name}: checkpoint not found: {path}" for name, path in configured.items() if path and not path.is_file()
    ]
    if missing:
        print("resdet service cannot start:", *missing, sep="\n  ", file=sys.stderr)
        if any(path and path.parent == DEMO_MODEL_DIR for path in configured.values()):
            print(DEMO_HINT, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
