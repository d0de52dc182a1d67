"""The detection and classification API: `create_app(settings)`, or `python -m service` to serve it."""

from service.app import create_app
from service.settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings"]
