"""The one shape of the OpenAI generation routes (completions, chat completions): POST a request, get
the response, or with `stream: true` its server-sent chunks; scope `infer`."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from distillery_gateway.deps import PrincipalDep, require_scope, serving
from distillery_gateway.disconnect import unless_disconnected
from distillery_gateway.openai.responses import serving_responses
from distillery_gateway.serving_base import json_response


class GenerationServing(Protocol):
    async def create(self, req: Any, caller: str | None = None) -> BaseModel | Response: ...


def generation_router(
    path: str,
    name: str,
    serving_cls: type[GenerationServing],
    request: type[BaseModel],
    response: type[BaseModel],
    chunk: type[BaseModel],
    description: str,
) -> APIRouter:
    """A router with the one route `POST path`, named `name`, served by the app's `serving_cls`."""

    async def endpoint(body: Any, service: Any, raw: Request, principal: PrincipalDep) -> Response:
        return json_response(await unless_disconnected(raw, service.create(body, principal.key_id)))

    # FastAPI reads the body's model and the dependency from the annotations, set per route.
    endpoint.__annotations__.update(
        body=request,
        service=Annotated[serving_cls, serving(serving_cls)],
        raw=Request,
        principal=PrincipalDep,
    )
    router = APIRouter(tags=["openai"])
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        name=name,
        description=description,
        response_model=response,
        responses=serving_responses(chunk.__name__),
        dependencies=[require_scope("infer")],
    )
    return router
