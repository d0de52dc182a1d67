"""What the lifespan handler builds and the routes read: the model registry, the decoders and the readiness."""

from dataclasses import dataclass

import torch

from service.registry import ModelRegistry
from service.settings import Settings
from service.uploads import UploadDecoders


@dataclass
class ServiceState:
    """Ready only once every configured model has loaded and answered a warm-up batch."""

    settings: Settings
    device: torch.device
    registry: ModelRegistry
    decoders: UploadDecoders
    ready: bool = False
    warmup_error: str | None = None
    warming: str | None = None  # what the warm-up does now (an export, a compile, a batch), for /readyz
