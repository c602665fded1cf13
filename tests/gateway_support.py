"""Real pieces for the gateway tests: the app factory served by uvicorn in a thread, keys, tiny models.

Models come from `distillery.modelhub` under the default model directory (built once, then reused
across test sessions); the tiny random Llama keeps generation cheap where behaviour allows.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path

import httpx
import uvicorn
from jobs_support import free_port
from jobs_support import wait_until as poll_until
from sqlalchemy import text

from distillery import apikeys
from distillery.config import Settings
from distillery.modelhub import resolve_model
from distillery.store.db import session_scope
from distillery.store.models import Base


@cache
def tiny_model() -> Path:
    """The tiny random Llama (SmolLM2 tokenizer and chat template)."""
    return resolve_model("tiny-causal")


def copy_model(target: Path) -> Path:
    """A second copy of the tiny model in `target`, to register as another version."""
    shutil.copytree(tiny_model(), target)
    return target


def gateway_settings(settings: Settings, **overrides: object) -> Settings:
    """The test's settings serving the tiny model, with short timers."""
    update: dict[str, object] = {
        "default_model": str(tiny_model()),
        "batch_wait_ms": 2.0,
        "registry_poll_s": 1.0,
    }
    update.update(overrides)
    return settings.model_copy(update=update)


def make_key(database_url: str, scopes: tuple[str, ...], name: str = "test") -> str:
    with session_scope(database_url) as session:
        return apikeys.create_key(session, name, scopes).key


def revoke(database_url: str, key: str) -> None:
    key_id, _ = apikeys.split_key(key) or ("", "")
    with session_scope(database_url) as session:
        assert apikeys.revoke_key(session, key_id)


def truncate_all(database_url: str) -> None:
    """Empty every table (for module-scoped gateways, which cannot use the per-test `clean_db`)."""
    with session_scope(database_url) as session:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def wait_until(
    check: Callable[[], object], timeout: float = 120.0, what: str = "", interval: float = 0.1
) -> object:
    """`jobs_support.wait_until`, with `what` before `interval` (as the gateway tests pass them)."""
    return poll_until(check, timeout, interval, what)


class LiveGateway:
    """`create_app(settings)` behind a real uvicorn on a free port, in a thread; ready when /readyz is."""

    def __init__(self, settings: Settings, wait_ready: bool = True):
        from distillery_gateway.app import create_app

        self.app = create_app(settings=settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{self.port}", daemon=True)
        self.wait_ready = wait_ready

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        wait_until(lambda: self.server.started, 60, "uvicorn to start")
        if self.wait_ready:
            wait_until(self.ready, 180, "the gateway to be ready (model loaded)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)


def key_client(gateway: LiveGateway, database_url: str, scopes: tuple[str, ...], name: str) -> httpx.Client:
    """An HTTP client for `gateway` that sends a fresh key with `scopes`."""
    key = make_key(database_url, scopes, name)
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def completion(http: httpx.Client, model: str, **body: object) -> dict:
    """POST /v1/completions for `model` and return the 200 answer's JSON."""
    response = http.post("/v1/completions", json={"model": model, **body})
    assert response.status_code == 200, response.text
    return response.json()
