"""The student's time is bounded and shared: a client that leaves mid-generation (streamed or not) is
counted and its generation stopped, a request still queued at its deadline gets 503, and one key
cannot hold more than its share of the queue.

The real SmolLM2 student behind a real gateway counts to a thousand (far longer than the test waits);
a raw socket sends the request and is closed once the student is generating. `/metrics` then shows the
request counted as cancelled and nothing left running, long before the generation could have ended.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from gateway_support import LiveGateway, gateway_settings, make_key, wait_until

from distillery.config import Settings
from distillery.modelhub import resolve_model

COUNTING = "Count from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8,"
LONG = 2000  # tokens: well over a minute of SmolLM2 on a CPU


@pytest.fixture(scope="module")
def gw(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    base = Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url)
    model = str(resolve_model("smollm2-135m"))
    with LiveGateway(gateway_settings(base, default_model=model, metrics_public=True)) as gateway:
        yield gateway


def metric(gw: LiveGateway, pattern: str) -> float:
    found = re.search(pattern + r" ([0-9.e+-]+)$", httpx.get(f"{gw.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def running(gw: LiveGateway) -> float:
    return metric(gw, r"^distillery_student_running")


def cancelled(gw: LiveGateway, route: str) -> float:
    return metric(gw, rf'^distillery_gateway_requests_cancelled_total\{{route="{re.escape(route)}"\}}')


def send(gw: LiveGateway, key: str, path: str, body: dict) -> socket.socket:
    """The request written on a raw connection (closing it is the client leaving)."""
    url = urlsplit(gw.url)
    conn = socket.create_connection((url.hostname, url.port))
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    conn.sendall(head.encode() + data)
    return conn


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": COUNTING}),
        ("/v1/completions", {"prompt": COUNTING, "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": COUNTING}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": COUNTING}], "stream": True}),
    ],
    ids=["completion", "completion-stream", "chat", "chat-stream"],
)
def test_a_client_leaving_stops_its_generation(
    gw: LiveGateway, database_url: str, path: str, body: dict
) -> None:
    key = make_key(database_url, ("infer",))
    before = cancelled(gw, path)
    wait_until(lambda: running(gw) == 0, 120, "an idle student")
    conn = send(gw, key, path, {"model": "smollm2-135m", "max_tokens": LONG, "temperature": 0, **body})
    try:
        wait_until(lambda: running(gw) >= 1, 60, "the student generating")
        if body.get("stream"):
            assert conn.recv(256).startswith(b"HTTP/1.1 200")  # the stream has started
    finally:
        conn.close()
        left = time.monotonic()
    wait_until(lambda: cancelled(gw, path) == before + 1, 30, "the request counted as cancelled")
    wait_until(lambda: running(gw) == 0, 30, "the generation stopped")
    stopped = time.monotonic() - left
    print(f"{path} stream={bool(body.get('stream'))}: stopped {stopped:.2f} s after the client left")


@pytest.mark.slow
def test_a_request_still_queued_at_its_deadline_gets_503(gw: LiveGateway, database_url: str) -> None:
    settings = gw.app.state.settings.model_copy(update={"queue_timeout_s": 1.0})
    key = make_key(database_url, ("infer",))
    with LiveGateway(settings) as other:
        long = {"model": "smollm2-135m", "prompt": COUNTING, "max_tokens": LONG, "temperature": 0}
        conn = send(other, key, "/v1/completions", long)
        try:
            wait_until(lambda: running(other) >= 1, 60, "the student generating")
            # Sampled, so it cannot join the greedy batch that is running: it waits in the queue.
            sampled = {**long, "max_tokens": 4, "temperature": 0.7}
            headers = {"Authorization": f"Bearer {key}"}
            response = httpx.post(f"{other.url}/v1/completions", json=sampled, headers=headers, timeout=60)
        finally:
            conn.close()
        assert response.status_code == 503, response.text
        assert "waited 1 s in the queue" in response.json()["error"]["message"]
        assert response.headers["Retry-After"] == "1"


@pytest.mark.slow
def test_a_key_holds_at_most_its_share_of_the_queue(gw: LiveGateway, database_url: str) -> None:
    settings = gw.app.state.settings.model_copy(update={"max_sequences_per_key": 4})
    key, other = make_key(database_url, ("infer",)), make_key(database_url, ("infer",))
    short = {"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 2, "temperature": 0}

    def post(as_key: str, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {as_key}"}
        return httpx.post(f"{limited.url}/v1/completions", json=body, headers=headers, timeout=60)

    with LiveGateway(settings) as limited, ThreadPoolExecutor(1) as pool:
        too_big = post(key, {**short, "n": 5})
        assert too_big.status_code == 400 and too_big.json()["error"]["param"] == "prompt"
        conn = send(
            limited, key, "/v1/completions", {**short, "prompt": COUNTING, "max_tokens": LONG, "n": 4}
        )
        try:
            wait_until(lambda: running(limited) >= 4, 60, "the student generating four sequences")
            # Another key is admitted (it queues behind the running batch); this key is refused at once.
            queued = pool.submit(post, other, short)
            mine = post(key, short)
        finally:
            conn.close()
        assert mine.status_code == 429 and mine.json()["error"]["code"] == "queue_share_exceeded", mine.text
        assert mine.headers["Retry-After"] == "1"
        theirs = queued.result()
        assert theirs.status_code == 200, theirs.text
        wait_until(lambda: running(limited) == 0, 30, "the generation stopped")
        again = post(key, short)
        assert again.status_code == 200, again.text  # the share is given back when the client leaves
