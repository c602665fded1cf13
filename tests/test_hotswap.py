"""Promotion hot-swaps the served model on every replica without failing a request.

Two copies of the tiny random Llama are registered as versions 1 and 2 of `arc-student`; real gateways
(uvicorn threads) serve them while clients keep sending requests.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from gateway_support import LiveGateway, copy_model, gateway_settings, make_key, wait_until

from distillery.config import Settings
from distillery.store import registry
from distillery.store.db import session_scope

NAME = "arc-student"


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Path, Path]:
    return copy_model(tmp_path / "v1"), copy_model(tmp_path / "v2")


def register(client: httpx.Client, path: Path) -> dict:
    response = client.post(
        "/v1/registry/models", json={"name": NAME, "path": str(path), "metrics": {"acc": 0.5}}
    )
    assert response.status_code == 201, response.text
    return response.json()


def served_model(client: httpx.Client) -> str:
    data = client.get("/v1/models").json()["data"]
    return data[0]["id"] if data else ""


class Clients:
    """`n` threads sending chat completions for the registry name (an alias) until stopped."""

    def __init__(self, url: str, key: str, n: int = 8):
        self.url, self.key, self.n = url, key, n
        self.stop = threading.Event()
        self.results: list[list[tuple[int, str]]] = [[] for _ in range(n)]
        self.pending: list[float | None] = [None] * n  # when each client's request in flight was sent
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        body = {"model": NAME, "messages": [{"role": "user", "content": f"client {i}"}], "max_tokens": 3}
        with httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        ) as c:
            while not self.stop.is_set():
                self.pending[i] = time.monotonic()
                try:
                    response = c.post("/v1/chat/completions", json=body)
                    model = response.json().get("model", "") if response.status_code == 200 else response.text
                    self.results[i].append((response.status_code, model))
                except Exception as exc:  # recorded (status 0), never a silently dead client
                    self.results[i].append((0, repr(exc)))
                self.pending[i] = None

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def all_answered_by(self, model: str, last: int = 2) -> bool:
        return all(len(r) >= last and all(m == model for _, m in r[-last:]) for r in self.results)

    def wait_served_by(self, model: str, timeout: float, last: int = 2) -> None:
        """Until every client's last `last` answers came from `model`; on timeout, an AssertionError that
        shows what each client got last and how long its request in flight has waited."""
        try:
            wait_until(lambda: self.all_answered_by(model, last), timeout, f"clients served by {model}")
        except AssertionError as exc:
            now = time.monotonic()
            state = [
                f"client {i}: {len(r)} answers, last {r[-3:]}, "
                + (f"a request in flight for {now - p:.1f}s" if p is not None else "none in flight")
                + ("" if t.is_alive() else ", thread ended")
                for i, (r, p, t) in enumerate(zip(self.results, self.pending, self.threads, strict=True))
            ]
            raise AssertionError(f"{exc}\n" + "\n".join(state)) from None


@pytest.fixture
def admin(settings: Settings) -> str:
    return make_key(settings.database_url, ("admin",), "admin")


def test_promotion_swaps_under_load_without_a_failed_request(
    settings: Settings, versions: tuple[Path, Path], admin: str
) -> None:
    # Eight looping clients on the tiny model pass the default 600 requests a minute per key.
    s = gateway_settings(settings, default_model="none", registry_poll_s=30.0, rate_limit_per_minute=100_000)
    with (
        LiveGateway(s) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {admin}"}) as api,
    ):
        v1, v2 = register(api, versions[0]), register(api, versions[1])
        assert (v1["version"], v2["version"]) == (1, 2) and v1["stage"] == "staging"
        # Registering the same directory again is a no-op that returns the same version.
        again = api.post("/v1/registry/models", json={"name": NAME, "path": str(versions[0])})
        assert again.status_code == 200 and again.json()["id"] == v1["id"]

        promoted = api.post(f"/v1/registry/models/{v1['id']}/promote", params={"wait": "true"}, timeout=120)
        assert promoted.status_code == 200 and promoted.json()["serving"] is True
        listed = [m["id"] for m in api.get("/v1/models").json()["data"]]
        assert listed == ["arc-student:v1", "arc-student", "student"]

        with Clients(gw.url, make_key(settings.database_url, ("infer",))) as clients:
            clients.wait_served_by("arc-student:v1", 120)
            response = api.post(f"/v1/registry/models/{v2['id']}/promote")
            assert response.status_code == 200 and response.json()["stage"] == "production"
            clients.wait_served_by("arc-student:v2", 120, last=3)

        outcomes = [r for per_client in clients.results for r in per_client]
        failures = [r for r in outcomes if r[0] != 200]
        assert not failures, failures[:5]
        assert {m for _, m in outcomes} == {"arc-student:v1", "arc-student:v2"}
        for per_client in clients.results:  # each client saw v1, then v2, never back
            models = [m for _, m in per_client]
            assert models == sorted(models)
        listed = api.get("/v1/models").json()["data"]
        assert [(m["id"], m["parent"]) for m in listed] == [
            ("arc-student:v2", None),
            ("arc-student", "arc-student:v2"),
            ("student", "arc-student:v2"),
        ]
        stages = {m["version"]: m["stage"] for m in api.get("/v1/registry/models").json()["data"]}
        assert stages == {1: "staging", 2: "production"}

        # Rollback = promote the previous version.
        api.post(f"/v1/registry/models/{v1['id']}/promote", params={"wait": "true"}, timeout=120)
        assert served_model(api) == "arc-student:v1"


def test_other_replicas_follow_by_pubsub_and_by_polling(
    settings: Settings, versions: tuple[Path, Path], admin: str
) -> None:
    headers = {"Authorization": f"Bearer {admin}"}
    pubsub_only = gateway_settings(settings, default_model="none", registry_poll_s=600.0)
    polling = gateway_settings(settings, default_model="none", registry_poll_s=0.5)
    with (
        LiveGateway(pubsub_only) as a,
        LiveGateway(pubsub_only) as b,
        httpx.Client(base_url=a.url, headers=headers, timeout=120) as api_a,
        httpx.Client(base_url=b.url, headers=headers, timeout=120) as api_b,
    ):
        wait_until(lambda: b.app.state.watcher.subscribed.is_set(), 30, "replica b subscribed")
        v1, v2 = register(api_a, versions[0]), register(api_a, versions[1])
        api_a.post(f"/v1/registry/models/{v1['id']}/promote")
        wait_until(lambda: served_model(api_b) == "arc-student:v1", 120, "replica b on v1 (pub/sub)")

        with LiveGateway(polling) as c, httpx.Client(base_url=c.url, headers=headers, timeout=120) as api_c:
            assert served_model(api_c) == "arc-student:v1"  # a new replica starts on the production version
            # A promotion written straight to the database (no message) is found by polling.
            with session_scope(settings.database_url) as session:
                registry.promote(session, v2["id"])
            wait_until(lambda: served_model(api_c) == "arc-student:v2", 60, "replica c on v2 (polling)")
        assert served_model(api_b) == "arc-student:v1"  # no message, and it polls only every 10 min


def test_a_version_that_fails_to_load_keeps_the_old_one_serving(
    settings: Settings, versions: tuple[Path, Path], admin: str, tmp_path: Path
) -> None:
    s = gateway_settings(settings, default_model="none", registry_poll_s=30.0)
    with (
        LiveGateway(s) as gw,
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {admin}"}) as api,
    ):
        good = register(api, versions[0])
        api.post(f"/v1/registry/models/{good['id']}/promote", params={"wait": "true"}, timeout=120)
        broken = versions[1] / "model.safetensors"
        bad = register(api, versions[1])
        broken.write_bytes(b"not weights")
        response = api.post(f"/v1/registry/models/{bad['id']}/promote", params={"wait": "true"}, timeout=120)
        assert response.status_code == 200 and response.json()["serving"] is False
        assert served_model(api) == "arc-student:v1"
        infer = {"Authorization": f"Bearer {make_key(settings.database_url, ('infer',))}"}
        answer = httpx.post(
            f"{gw.url}/v1/predict", json={"question": "q?", "options": ["a", "b"]}, headers=infer, timeout=120
        )
        assert answer.status_code == 200 and answer.json()["model"] == "arc-student:v1"


def test_registering_a_directory_that_is_not_a_model_is_a_422(
    settings: Settings, admin: str, tmp_path
) -> None:
    with LiveGateway(gateway_settings(settings, default_model="none")) as gw:
        headers = {"Authorization": f"Bearer {admin}"}
        for path, words in (
            (tmp_path / "missing", "not a directory"),
            (tmp_path, "no config.json"),
            ("relative/dir", "absolute"),
        ):
            response = httpx.post(
                f"{gw.url}/v1/registry/models", json={"name": NAME, "path": str(path)}, headers=headers
            )
            assert response.status_code == 422, response.text
            assert (
                response.json()["error"]["param"] == "path" and words in response.json()["error"]["message"]
            )
        assert httpx.get(f"{gw.url}/v1/registry/models", headers=headers).json()["data"] == []
        missing = httpx.post(f"{gw.url}/v1/registry/models/{'0' * 32}/promote", headers=headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
