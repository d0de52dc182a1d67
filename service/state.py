"""What the lifespan handler builds and the routes read: loaded models, readiness, metrics."""

from dataclasses import dataclass

import torch

from service.loading import ServedModel
from service.metrics import ServiceMetrics
from service.settings import Settings


@dataclass
class ServiceState:
    """Ready only once every configured model has loaded and answered a warm-up batch."""

    settings: Settings
    device: torch.device
    models: dict[str, ServedModel]
    metrics: ServiceMetrics
    ready: bool = False
    warmup_error: str | None = None
