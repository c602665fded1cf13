"""Property-based run of the whole OpenAPI document against a real gateway (tiny model, valid admin key).

Schemathesis generates valid and invalid requests for every operation; the server must never answer
5xx, and every answer must be documented (status code, content type, body schema). Generation sizes
are capped in the requests (max_tokens, n, list lengths) so the tiny model answers quickly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from gateway_support import LiveGateway, gateway_settings, make_key, truncate_all
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from distillery.config import Settings

CAPS = {"max_tokens": 8, "max_completion_tokens": 8, "n": 2, "max_rationale_tokens": 8, "top_logprobs": 2}
LIST_CAPS = {"items": 3, "prompt": 3, "messages": 4}


@pytest.fixture(scope="module")
def gateway(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    truncate_all(database_url)
    base = Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url)
    # A generous rate limit: this test is the only client.
    with LiveGateway(gateway_settings(base, rate_limit_per_minute=100_000)) as gw:
        yield gw


@pytest.fixture(scope="module")
def admin_key(gateway: LiveGateway, database_url: str) -> str:
    return make_key(database_url, ("admin",), "schemathesis")


def openapi_document() -> dict:
    """The app's OpenAPI document (building the app connects to nothing; the calls go to the live one)."""
    from distillery_gateway.app import create_app

    unused = Settings(
        database_url="postgresql://unused/none",
        redis_url="redis://unused:1/0",
        api_key_pepper="schema-only-pepper-not-used-for-any-key",
    )
    return create_app(unused).openapi()


schema = schemathesis.openapi.from_dict(openapi_document())


def cap(body: object) -> None:
    """Keep generated work small: big numbers and long lists only cost time, not coverage."""
    if not isinstance(body, dict):
        return
    for name, limit in CAPS.items():
        if isinstance(body.get(name), int) and not isinstance(body.get(name), bool) and body[name] > limit:
            body[name] = limit
    for name, limit in LIST_CAPS.items():
        if isinstance(body.get(name), list) and len(body[name]) > limit:
            body[name] = body[name][:limit]
    for item in body.get("items", []) if isinstance(body.get("items"), list) else []:
        cap(item)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case, gateway: LiveGateway, admin_key: str) -> None:
    if case.meta is not None and case.meta.generation.mode.is_positive:
        cap(case.body)  # never on negative cases: trimming could drop the very part that is invalid
    case.call_and_validate(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {admin_key}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
        timeout=120,
    )
