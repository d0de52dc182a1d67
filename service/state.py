"""What the lifespan handler builds and the routes read: the loaded models and their readiness."""

from dataclasses import dataclass

import torch

from service.loading import ServedModel
from service.settings import Settings


@dataclass
class ServiceState:
    """Ready only once every configured model has loaded and answered a warm-up batch."""

    settings: Settings
    device: torch.device
    models: dict[str, ServedModel]
    ready: bool = False
    warmup_error: str | None = None
