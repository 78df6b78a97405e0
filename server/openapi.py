"""The OpenAPI document says what the server accepts: limits from the settings that FastAPI's
signatures cannot express (a file has at least one byte, a batch
1..max_batch_files files; a bad file in a batch gets its own error in a 200 answer), and
optional form fields are optional by being left out (a multipart form has no null), and `model`
(and the inference protocol's `model_version`) names one of the models this server loaded.

What no schema can say: that a file's bytes decode as an image. A schema-valid upload that is not
one gets 415 (or 400 when truncated or corrupt), as documented; schemathesis.toml tells the
contract test so."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .config import Settings
from .v2_http import described


def _body_schema(schema: dict, path: str) -> dict:
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _without_null(prop: dict) -> None:
    variants = [v for v in prop.pop("anyOf") if v.get("type") != "null"]
    (variant,) = variants
    prop.update(variant)


def document_limits(app: FastAPI, settings: Settings, model_names: list[str], versions: list[str]) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*app.routes, *described.routes],
            )
            file = _body_schema(schema, "/classify")["properties"]["file"]
            file.update(minLength=1, maxLength=settings.max_upload_bytes)
            files = _body_schema(schema, "/classify/batch")["properties"]["files"]
            files.update(minItems=1, maxItems=settings.max_batch_files)
            for path in ("/classify", "/classify/batch"):
                body = _body_schema(schema, path)["properties"]
                for name in ("model", "threshold"):
                    _without_null(body[name])
                body["model"]["enum"] = model_names
            for operations in schema["paths"].values():  # the inference protocol's model routes
                for operation in operations.values():
                    for param in operation.get("parameters", []):
                        if param["in"] == "path" and param["name"] in ("model", "model_version"):
                            param["schema"]["enum"] = model_names if param["name"] == "model" else versions
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
