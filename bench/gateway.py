"""Gateway serving: micro-batching throughput and the HTTP gateway's own latency overhead.

    python bench/gateway.py --quick

Starts what it needs: a scratch database on DATABASE_URL (or the embedded PostgreSQL), Redis from
REDIS_URL (or the embedded one), and the gateway as `distillery gateway` child processes (so the
clients here do not share the server's interpreter). Two figures, both measured in this run:

* `gateway_overhead_ms_p50`: median latency of a one-token completion over HTTP (auth, rate limit,
  validation, JSON, uvicorn) minus the median of the same work called in-process on the engine
  (tokenise + the batcher + generate) with the same settings, one request at a time.
* `batched_vs_sequential`: completion tokens/s with `--clients` concurrent clients against the gateway
  with micro-batching, over the same load against the gateway serving one request at a time
  (batch size 1). Last line; target >= 4.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from tqdm import tqdm

from distillery import apikeys
from distillery.config import Settings
from distillery.embedded import running_services
from distillery.modelhub import resolve_model
from distillery.store.db import get_engine, normalise_url, session_scope
from distillery.store.migrate import upgrade

PROMPT = "Question: Which gas do plants take in from the air to make food?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh, migrated database on the server behind `server_url`, dropped on exit."""
    name = f"distillery_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def gateway(database_url: str, redis_url: str, model: Path, batch_max_size: int, log: Path) -> Iterator[str]:
    """`distillery gateway` as a child process; yields its URL once the model is loaded."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DISTILLERY_DEFAULT_MODEL": str(model),
        "DISTILLERY_BATCH_MAX_SIZE": str(batch_max_size),
        "DISTILLERY_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    argv = [
        sys.executable,
        "-m",
        "distillery.cli.main",
        "gateway",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready after 300 s; see {log}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def load(url: str, key: str, model: str, clients: int, requests: int, max_tokens: int) -> float:
    """Completion tokens/s of `clients` concurrent clients sending `requests` greedy completions in all."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    headers = {"Authorization": f"Bearer {key}"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    tokens = 0
    with tqdm(total=requests, desc=f"load x{clients}", unit="req", leave=False) as bar:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:

            async def worker() -> None:
                nonlocal tokens
                while not queue.empty():
                    queue.get_nowait()
                    response = await client.post("/v1/completions", json=body)
                    response.raise_for_status()
                    tokens += response.json()["usage"]["completion_tokens"]
                    bar.update()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            elapsed = time.perf_counter() - started
    return tokens / elapsed


def http_latencies(url: str, key: str, model: str, n: int) -> list[float]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        client.post("/v1/completions", json=body).raise_for_status()  # warm-up
        for _ in tqdm(range(n), desc="http", unit="req", leave=False):
            started = time.perf_counter()
            client.post("/v1/completions", json=body).raise_for_status()
            out.append((time.perf_counter() - started) * 1000)
    return out


def inprocess_latencies(model: Path, n: int) -> list[float]:
    """The same one-token completion through the engine alone (same batcher settings as the gateway)."""
    from distillery_gateway.engine.transformers_backend import TransformersBackend
    from distillery_gateway.engine.types import SamplingParams

    settings = Settings()
    backend = TransformersBackend(
        model, batch_max_size=settings.batch_max_size, batch_wait_ms=settings.batch_wait_ms
    )
    params = SamplingParams(max_tokens=1, temperature=0.0)

    async def run() -> list[float]:
        await backend.generate(backend.codec.encode(PROMPT), params)  # warm-up
        out = []
        for _ in tqdm(range(n), desc="in-process", unit="call", leave=False):
            started = time.perf_counter()
            await backend.generate(backend.codec.encode(PROMPT), params)
            out.append((time.perf_counter() - started) * 1000)
        await backend.aclose()
        return out

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small load (a minute or two)")
    parser.add_argument(
        "--model", help="modelhub name or HF dir (default: tiny-causal with --quick, else smollm2-135m)"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, help="requests per load run (default 64 quick, 128 full)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--latency-samples", type=int, help="sequential requests for the p50s (default 40/100)"
    )
    args = parser.parse_args()
    model_name = args.model or ("tiny-causal" if args.quick else "smollm2-135m")
    requests = args.requests or (64 if args.quick else 128)
    samples = args.latency_samples or (40 if args.quick else 100)
    model = resolve_model(model_name, progress=lambda line: print(line, file=sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-gateway-"))
    log = workdir / "gateway.log"
    settings = Settings(home=workdir / "home")
    with running_services(settings) as urls, scratch_database(urls.database_url) as db:
        with session_scope(db) as session:
            key = apikeys.create_key(session, "bench", ("infer",)).key
        inproc = inprocess_latencies(model, samples)
        with gateway(db, urls.redis_url, model, settings.batch_max_size, log) as url:
            served = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"][
                0
            ]["id"]
            http = http_latencies(url, key, served, samples)
            batched = asyncio.run(load(url, key, served, args.clients, requests, args.max_tokens))
        with gateway(db, urls.redis_url, model, 1, log) as url:
            sequential = asyncio.run(load(url, key, served, args.clients, requests, args.max_tokens))
    overhead = statistics.median(http) - statistics.median(inproc)
    print(f"model={model_name} clients={args.clients} requests={requests} max_tokens={args.max_tokens}")
    print(f"inprocess_ms_p50={statistics.median(inproc):.2f} http_ms_p50={statistics.median(http):.2f}")
    print(f"batched_tokens_per_s={batched:.1f} sequential_tokens_per_s={sequential:.1f}")
    print(f"gateway_overhead_ms_p50={overhead:.2f}")
    print(f"batched_vs_sequential={batched / sequential:.2f}")


if __name__ == "__main__":
    main()
