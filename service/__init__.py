"""The detection and classification API: `create_app(settings)`, or `python -m service` to serve it."""

from backbone.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "create_app": "service.app",
        "Settings": "service.settings",
        "get_settings": "service.settings",
    },
)

__all__ = ["Settings", "create_app", "get_settings"]
