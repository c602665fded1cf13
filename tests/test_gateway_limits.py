"""Limits and failures of the serving side, each on its own gateway: back-pressure and a broken model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from gateway_support import LiveGateway, gateway_settings, make_key

from distillery.config import Settings

MODEL = "tiny-causal"


def test_a_full_queue_answers_503_with_retry_after(settings: Settings) -> None:
    tight = gateway_settings(settings, batch_queue_size=1, batch_max_size=1)
    with LiveGateway(tight) as gw, ThreadPoolExecutor(8) as pool:
        key = make_key(settings.database_url, ("infer",))
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "prompt": "go", "max_tokens": 300, "temperature": 0}
        responses = list(
            pool.map(
                lambda _: httpx.post(f"{gw.url}/v1/completions", json=body, headers=headers, timeout=300),
                range(8),
            )
        )
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["code"] == "queue_full"


def test_a_model_that_fails_to_load_leaves_the_gateway_not_ready(settings: Settings, tmp_path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with LiveGateway(gateway_settings(settings, default_model=str(broken)), wait_ready=False) as gw:
        key = make_key(settings.database_url, ("infer",))
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["model"] is False
        response = httpx.post(
            f"{gw.url}/v1/predict",
            json={"question": "q", "options": ["a", "b"]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 503 and "Retry-After" in response.headers
