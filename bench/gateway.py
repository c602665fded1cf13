"""Gateway serving: micro-batching throughput and the HTTP gateway's own latency overhead.

    python bench/gateway.py --quick

Starts what it needs: a scratch database on DATABASE_URL (or the embedded PostgreSQL), Redis from
REDIS_URL (or the embedded one), and the gateway as `distillery gateway` child processes (so the
clients here do not share the server's interpreter). Two figures, both measured in this run:

* `gateway_overhead_ms_p50`: median latency of a one-token completion over HTTP (auth, rate limit,
  validation, JSON, uvicorn) minus the median of the same work called in-process on the engine
  (tokenise + the batcher + generate) with the same settings, one request at a time, the two
  kinds of samples alternating.
* `batched_vs_sequential`: completion tokens/s with `--clients` concurrent clients against the gateway
  with micro-batching, over the same load against the gateway serving one request at a time
  (batch size 1). The two gateways run side by side and their load runs alternate, so drift on a
  shared host hits both alike. Last line; target >= 4.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from tqdm import tqdm

from distillery import apikeys
from distillery.config import Settings
from distillery.modelhub import resolve_model
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery_launcher.embedded import running_services

PROMPT = "Question: Which gas do plants take in from the air to make food?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(
    database_url: str, redis_url: str, model: Path, batch_max_size: int, log: Path, **env_extra: str
) -> Iterator[str]:
    """`distillery gateway` as a child process (`env_extra`: more environment); yields its URL once ready."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DISTILLERY_DEFAULT_MODEL": str(model),
        "DISTILLERY_BATCH_MAX_SIZE": str(batch_max_size),
        "DISTILLERY_RATE_LIMIT_PER_MINUTE": "1000000",
        **env_extra,
    }
    argv = [
        sys.executable,
        "-m",
        "distillery_launcher.cli.main",
        "gateway",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with child_server(argv, f"http://127.0.0.1:{port}", "/readyz", log, env) as url:
        yield url


@contextmanager
def child_server(
    argv: list[str], url: str, probe: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`argv` as a child process logging to `log`; yields `url` once GET `probe` answers 200."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} not ready after 300 s; see {log}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def load(
    url: str, key: str, model: str, clients: int, requests: int, max_tokens: int
) -> tuple[int, float]:
    """(completion tokens, seconds) of `clients` concurrent clients sending `requests` greedy completions."""
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
            return tokens, time.perf_counter() - started


async def latencies(
    url: str, key: str, model: str, model_dir: Path, n: int
) -> tuple[list[float], list[float]]:
    """Alternating samples (so load drift hits both alike) of the same one-token completion:
    in-process on the engine (same batcher settings as the gateway), and over HTTP."""
    from distillery_gateway.engine.transformers_backend import TransformersBackend
    from distillery_gateway.engine.types import SamplingParams

    settings = Settings()
    backend = TransformersBackend(
        model_dir,
        batch_max_size=settings.batch_max_size,
        batch_wait_ms=settings.batch_wait_ms,
        threads=settings.student_threads,
    )
    params = SamplingParams(max_tokens=1, temperature=0.0)
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    inproc, http = [], []
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        await backend.generate(backend.codec.encode(PROMPT), params)  # warm-up, both sides
        (await client.post("/v1/completions", json=body)).raise_for_status()
        for _ in tqdm(range(n), desc="latency", unit="pair", leave=False):
            started = time.perf_counter()
            await backend.generate(backend.codec.encode(PROMPT), params)
            inproc.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            (await client.post("/v1/completions", json=body)).raise_for_status()
            http.append((time.perf_counter() - started) * 1000)
    await backend.aclose()
    return inproc, http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small load (a minute or two)")
    parser.add_argument(
        "--model", help="modelhub name or HF dir (default: tiny-causal with --quick, else smollm2-135m)"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, help="requests per configuration (default 64 quick, 128 full)"
    )
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
    rounds = 2  # batched and sequential runs alternate, so drift on a shared host hits both alike
    totals = {"batched": [0, 0.0], "sequential": [0, 0.0]}
    with (
        running_services(settings) as urls,
        scratch_database(urls.database_url, "distillery_bench") as db,
        ExitStack() as stack,
    ):
        with session_scope(db) as session:
            key = apikeys.create_key(session, "bench", ("infer",)).key
        batched_url = stack.enter_context(gateway(db, urls.redis_url, model, settings.batch_max_size, log))
        sequential_url = stack.enter_context(gateway(db, urls.redis_url, model, 1, log))
        headers = {"Authorization": f"Bearer {key}"}
        served = httpx.get(f"{batched_url}/v1/models", headers=headers).json()["data"][0]["id"]
        inproc, http = asyncio.run(latencies(batched_url, key, served, model, samples))
        for _ in range(rounds):
            for name, url in (("batched", batched_url), ("sequential", sequential_url)):
                tokens, seconds = asyncio.run(
                    load(url, key, served, args.clients, requests // rounds, args.max_tokens)
                )
                totals[name][0] += tokens
                totals[name][1] += seconds
    batched, sequential = (totals[n][0] / totals[n][1] for n in ("batched", "sequential"))
    overhead = statistics.median(http) - statistics.median(inproc)
    print(f"model={model_name} clients={args.clients} requests={requests} max_tokens={args.max_tokens}")
    print(f"inprocess_ms_p50={statistics.median(inproc):.2f} http_ms_p50={statistics.median(http):.2f}")
    print(f"batched_tokens_per_s={batched:.1f} sequential_tokens_per_s={sequential:.1f}")
    print(f"gateway_overhead_ms_p50={overhead:.2f}")
    print(f"batched_vs_sequential={batched / sequential:.2f}")


if __name__ == "__main__":
    main()
