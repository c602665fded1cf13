"""OpenAI-shaped error bodies for every error: {"error": {"message", "type", "param", "code"}}.

Validation errors are 422 on the project's own API and 400 on the OpenAI-compatible routes (what
OpenAI and vLLM answer, and what the `openai` SDK turns into BadRequestError); the app lists those
routes in `app.state.openai_paths`.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong, where, and what is accepted.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, ...")
    param: str | None = Field(None, description="The request field at fault, if any.")
    code: str | None = Field(None, description="A machine-readable code, e.g. `invalid_api_key`.")
    details: list[dict] | None = Field(None, description="Every validation problem, for 400/422 answers.")


class ErrorResponse(BaseModel):
    """The body of every error answer (OpenAI's shape)."""

    error: ErrorDetail


class APIError(Exception):
    """Raise from routes for a clean 4xx/5xx with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


SOURCES = ("body", "query", "path", "header", "cookie")
# Pydantic names the member of a union in the location (`prompt.list[int].0`): not a field.
_UNION_TAG = re.compile(r"^(str|int|float|bool|dict|list|none|.*\[.*\]|[a-z]+-[a-z\-]+)$")


def _field(loc: tuple) -> str:
    parts = list(loc)
    source = parts.pop(0) if parts and parts[0] in SOURCES else None
    if source == "body":
        parts = [p for p in parts if not (isinstance(p, str) and _UNION_TAG.match(p))]
    return ".".join(str(p) for p in parts) or "body"


def _message(error: dict) -> str:
    msg = error.get("msg", "invalid")
    if error.get("type") == "extra_forbidden":
        msg = "unrecognized request argument"
    return f"{_field(tuple(error.get('loc', ())))}: {msg}"


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        route = request.scope.get("route")
        openai_paths: set[str] = getattr(request.app.state, "openai_paths", set())
        status = 400 if getattr(route, "path", None) in openai_paths else 422
        first = _field(tuple(errors[0].get("loc", ()))) if errors else None
        body = error_body(
            status,
            "; ".join(dict.fromkeys(_message(e) for e in errors)) or "invalid request",
            first,
            "validation_error",
        )
        body["error"]["details"] = [
            {"field": _field(tuple(e.get("loc", ()))), "message": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse(body, status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log; the client gets no internals.
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error", code="internal_error")
