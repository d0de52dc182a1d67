"""`python -m service`: serve the API on HOST:PORT with the models the settings name.

Checks that the checkpoint files exist first, so a fresh checkout says which file is missing
and how to get it instead of printing a startup traceback.
"""

import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.settings import DEMO_MODEL_DIR, get_settings

DEMO_HINT = (
    "The demo models are trained by this project's own pipeline: `make demo-models` retrains them; "
    "or point DETECTOR_CHECKPOINT / CLASSIFIER_CHECKPOINT at your checkpoints "
    "(an empty value disables that model)."
)


def main() -> int:
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
    sys.exit(main())
