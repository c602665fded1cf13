"""Real components for the rationale-job tests: gateway (uvicorn thread), worker processes, a fault proxy.

Nothing here is a fake of our own code: the gateway is the app factory served by uvicorn, workers are
`python -m distillery_worker` processes, and the proxy forwards to a real teacher server, only adding
the faults a test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from distillery import apikeys
from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import session_scope

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    check: Callable[[], object], timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> object:
    """Poll `check` until it returns something truthy; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(interval)


def import_arc(database_url: str, n: int = 24, split: str = "train", name: str = "arc") -> list[str]:
    """Store the first `n` vendored ARC examples of `split`; their ids."""
    examples = load_jsonl(sample_file("arc", split))[:n]
    with session_scope(database_url) as session:
        ex_store.import_examples(session, name, split, examples, source="test")
    return [e.id for e in examples]


def make_key(database_url: str, scopes: tuple[str, ...] = ("jobs:write",), name: str = "test") -> str:
    with session_scope(database_url) as session:
        return apikeys.create_key(session, name, scopes).key


def count_rows(database_url: str, model: type) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def rationale_keys(database_url: str, job_id: str) -> list[tuple[int, int, int]]:
    r = m.Rationale
    with session_scope(database_url) as session:
        rows = session.execute(select(r.example_id, r.teacher_id, r.sample_index).where(r.job_id == job_id))
        return [tuple(row) for row in rows]


# ------------------------------------------------------------------------------------------ gateway


class ServerThread:
    """A uvicorn server for an ASGI app in a daemon thread, on a free port."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30, interval=0.05, what="uvicorn start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def gateway(settings: Settings) -> Iterator[str]:
    """The real gateway app served over HTTP; yields its base URL."""
    from distillery_gateway.app import create_app

    app = create_app(settings=settings, database_url=settings.database_url, redis_url=settings.redis_url)
    with ServerThread(app) as server:
        yield server.url


def client(base_url: str, key: str, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


# ------------------------------------------------------------------------------------------ worker


class Worker:
    """A `python -m distillery_worker` process with the test's database and Redis."""

    def __init__(self, settings: Settings, log_path: Path, concurrency: int = 4, **worker_env: object):
        self.log_path = log_path
        env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url}
        env.update({f"DISTILLERY_WORKER_{k.upper()}": str(v) for k, v in worker_env.items()})
        env["PYTHONUNBUFFERED"] = "1"
        self._env = env
        self._args = [PY, "-m", "distillery_worker", "--concurrency", str(concurrency), "--loglevel", "INFO"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._args, env=self._env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO
        )
        wait_until(
            lambda: b"ready." in self.log_path.read_bytes() or self.proc.poll() is not None, 90, 0.2, "worker"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------ fault proxy


@dataclass
class Faults:
    """What the proxy does to the calls it forwards (counted per model name)."""

    errors_first: int = 0  # the first N calls get a 500
    hang_first: int = 0  # then the next N calls get no answer for `hang_s`
    hang_s: float = 30.0
    always_fail: bool = False
    delay_s: float = 0.0  # every forwarded call waits this long first (a slow teacher)
    calls: int = 0
    forwarded: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultProxy:
    """An HTTP proxy in front of a real OpenAI-compatible teacher that injects 500s and hangs."""

    def __init__(self, upstream: str, faults: Faults | None = None):
        self.upstream = upstream.rstrip("/")
        self.faults = faults or Faults()
        self._client: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server = ServerThread(app)

    @property
    def url(self) -> str:
        """Base URL in the teacher's form (ends in /v1 like the upstream's)."""
        return self._server.url + "/v1"

    @property
    def calls(self) -> int:
        with self.faults.lock:
            return self.faults.calls

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        payload: dict = {}
        with contextlib.suppress(ValueError):
            payload = json.loads(body or b"{}")
        model = str(payload.get("model", "")) if isinstance(payload, dict) else ""
        f = self.faults
        with f.lock:
            f.bodies.append(payload)
            f.calls += 1
            f.per_model[model] = f.per_model.get(model, 0) + 1
            n = f.calls
        if f.always_fail or n <= f.errors_first:
            return JSONResponse({"error": {"message": "injected fault", "type": "server_error"}}, 500)
        if n <= f.errors_first + f.hang_first:
            await asyncio.sleep(f.hang_s)
            return JSONResponse({"error": {"message": "injected hang"}}, 504)
        if f.delay_s:
            await asyncio.sleep(f.delay_s)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=600)
        path = request.url.path
        upstream_root = self.upstream[: -len("/v1")] if self.upstream.endswith("/v1") else self.upstream
        response = await self._client.request(
            request.method,
            upstream_root + path,
            content=body or None,
            headers={"content-type": "application/json"},
        )
        with f.lock:
            f.forwarded += 1
        return Response(response.content, response.status_code, media_type="application/json")

    def __enter__(self) -> FaultProxy:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


# ------------------------------------------------------------------------------------------ the whole stack


TERMINAL = ("completed", "completed_with_errors", "cancelled", "failed")


class Stack:
    """Gateway over HTTP plus an admin key; workers are started per test with `worker()`."""

    def __init__(self, settings: Settings, tmp: Path):
        self.settings = settings
        self.tmp = tmp
        self.key = make_key(settings.database_url, ("admin",), name="stack")
        self._gateway = gateway(settings)
        self.url = ""
        self.http: httpx.Client | None = None
        self._workers: list[Worker] = []
        self.ids: list[str] = []  # the example ids a test imported, if it tells

    def __enter__(self) -> Stack:
        self.url = self._gateway.__enter__()
        self.http = client(self.url, self.key, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self._workers:
            w.stop()
        assert self.http is not None
        self.http.close()
        self._gateway.__exit__(*exc)

    def worker(self, concurrency: int = 4, **env: object) -> Worker:
        w = Worker(self.settings, self.tmp / f"worker-{len(self._workers)}.log", concurrency, **env)
        self._workers.append(w)
        return w.start()

    def register(
        self, name: str, base_url: str, model: str, api_style: str = "chat", **extra: object
    ) -> dict:
        body = {"name": name, "base_url": base_url, "model": model, "api_style": api_style, **extra}
        response = self.http.post("/v1/teachers", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def submit(self, headers: dict | None = None, **body: object) -> dict:
        response = self.http.post("/v1/rationale-jobs", json=body, headers=headers or {})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/rationale-jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 600.0, until: Callable[[dict], bool] | None = None) -> dict:
        """The job once `until(view)` holds (default: the job is over)."""
        until = until or (lambda view: view["status"] in TERMINAL)

        def check() -> dict | None:
            view = self.job(job_id)
            return view if until(view) else None

        try:
            return wait_until(check, timeout, 0.5, f"job {job_id}")  # type: ignore[return-value]
        except AssertionError as exc:
            logs = "\n".join(w.log_text()[-3000:] for w in self._workers)
            raise AssertionError(f"{exc}; last view {self.job(job_id)}\nworker logs:\n{logs}") from None
