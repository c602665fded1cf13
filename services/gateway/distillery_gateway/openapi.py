"""The OpenAPI document, completed with what decorators cannot say: the bearer scheme on every
non-public operation and the error answers every operation can give (all with the OpenAI error body)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from distillery_gateway.errors import ErrorResponse

SCHEME = "bearerAuth"
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ERROR_REF}},
    }
    if headers:
        answer["headers"] = headers
    return answer


RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}
SECURED = {
    "401": _error("No API key, or an unknown, wrong or revoked one."),
    "403": _error("The API key lacks the scope this operation needs."),
    "429": _error("Rate limit of the API key exceeded.", RETRY_AFTER),
}
BODY = {
    "400": _error("A body that cannot be parsed (not JSON, or not UTF-8)."),
    "413": _error("Request body larger than the server's limit."),
}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
        )
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        error_schema.pop("$defs", None)
        schemas["ErrorResponse"] = error_schema
        components["securitySchemes"] = {
            SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `distillery keys create`.",
            }
        }
        public = app.state.public_paths
        openai_paths = app.state.openai_paths
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                validation = responses.pop("422", None)
                if validation is not None:
                    code = "400" if path in openai_paths else "422"
                    responses[code] = _error(
                        "Invalid request: `param` names the field, `message` what is accepted."
                    )
                for code, answer in responses.items():
                    if code[0] in "45" and "content" in answer and "application/json" in answer["content"]:
                        answer["content"]["application/json"]["schema"] = ERROR_REF
                if path not in public:
                    op["security"] = [{SCHEME: []}]
                    for code, answer in SECURED.items():
                        responses.setdefault(code, answer)
                if "{" in path:  # a resource named in the path may not exist
                    responses.setdefault("404", _error("No such resource (`param` names the path field)."))
                if "requestBody" in op:
                    for code, answer in BODY.items():
                        responses.setdefault(code, answer)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
