"""The OpenAPI document: FastAPI's, plus an example for the multipart bodies it generates (Body_* schemas)."""

from typing import Any

from fastapi import FastAPI

# What /docs shows for an upload field; Swagger UI offers a file picker for it.
FILE_EXAMPLE = "(the bytes of bus.jpg)"


def install_openapi(app: FastAPI) -> None:
    """Replace app.openapi with FastAPI's document completed with examples for the generated request bodies."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for name, schema in document.get("components", {}).get("schemas", {}).items():
                if name.startswith("Body_") and "examples" not in schema:
                    schema["examples"] = [
                        {
                            field: [FILE_EXAMPLE, FILE_EXAMPLE] if spec.get("type") == "array" else FILE_EXAMPLE
                            for field, spec in schema.get("properties", {}).items()
                        }
                    ]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi
