"""Pipeline overhead: rationales/s via REST -> Celery -> teacher -> PostgreSQL vs. straight to the teacher.

    python bench/pipeline.py --quick

Starts everything it needs: a llama.cpp teacher server (SmolLM2-135M, unless --teacher-url), a scratch
database on DATABASE_URL (or the embedded PostgreSQL), Redis from REDIS_URL (or the embedded one), a
worker process and the gateway (uvicorn, in-process). The baseline sends the very same prompts (same
demonstrations, same parameters, temperature 0) straight to the same server with the same concurrency.
Runs go in ABBA order (direct, pipeline, pipeline, direct; repeated with --rounds), so a load that
drifts on a shared machine weighs on both sides alike. The pipeline's time runs from the job's creation
to its completion as stored in the job row. Last line: `pipeline_vs_direct=<ratio>` (1.0 = no overhead):
rationales/s through the pipeline over rationales/s direct, over all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
import uvicorn
from tqdm import tqdm

from distillery import apikeys
from distillery.config import Settings, get_settings
from distillery.datasets import load_jsonl, sample_file
from distillery.rationales.incontext import InContextSelector
from distillery.records import Demonstration
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery.teachers.base import GenerationParams, TeacherSpec
from distillery.teachers.registry import make_client, upsert_teacher
from distillery_launcher.embedded import running_services

MODEL = "smollm2-135m"
K, SEED = 2, 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def process(argv: list[str], log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def teacher_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "distillery_teacher",
        "--models",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}/v1"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    with process(argv, workdir / "teacher.log") as proc:
        wait_for(lambda: ready() or proc.poll() is not None, 300, "the teacher server")
        if proc.poll() is not None:
            raise SystemExit(
                f"bench: teacher server exited:\n{(workdir / 'teacher.log').read_text()[-2000:]}"
            )
        yield url


@contextmanager
def gateway(settings: Settings) -> Iterator[str]:
    from distillery_gateway.app import create_app

    app = create_app(settings=settings, database_url=settings.database_url, redis_url=settings.redis_url)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 60, "the gateway")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def spec_for(url: str, concurrency: int, max_tokens: int) -> TeacherSpec:
    return TeacherSpec(
        name="smol",
        base_url=url,
        model=MODEL,
        api_style="chat",
        params=GenerationParams(max_tokens=max_tokens, temperature=0.0),
        max_concurrency=concurrency,
        timeout_s=900,
    )


async def direct(spec: TeacherSpec, items: list, concurrency: int) -> tuple[float, int]:
    """Send every prompt straight to the server, `concurrency` at a time: (seconds, completion tokens)."""
    client = make_client(spec)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc="direct", unit="rationale", leave=False)

    async def one(example, demos) -> int:
        async with gate:
            gen = await client.generate(example, demos, spec.params)
        bar.update()
        return gen.completion_tokens or 0

    started = time.perf_counter()
    try:
        tokens = await asyncio.gather(*(one(example, demos) for example, demos in items))
    finally:
        await client.aclose()
        bar.close()
    return time.perf_counter() - started, sum(tokens)


def pipeline(api: httpx.Client, database_url: str, n: int) -> tuple[float, int]:
    """One job through the gateway and the worker: (creation-to-completion seconds, completion tokens)."""
    body = {
        "dataset": "arc",
        "limit": n,
        "teachers": ["smol"],
        "in_context": {"strategy": "random", "k": K, "seed": SEED},
    }
    response = api.post("/v1/rationale-jobs", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    with tqdm(total=n, desc="pipeline", unit="rationale", leave=False) as bar:
        while True:
            view = api.get(f"/v1/rationale-jobs/{job_id}").json()
            bar.update(view["done"] + view["failed"] - bar.n)
            if view["status"] not in ("queued", "running"):
                break
            time.sleep(0.2)
    if view["status"] != "completed":
        raise SystemExit(f"bench: the pipeline job ended {view['status']}: {view['errors'][:3]}")
    with session_scope(database_url) as session:
        job = session.get(m.RationaleJob, job_id)
        seconds = (job.finished_at - job.created_at).total_seconds()
    return seconds, view["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 examples per run, one ABBA round (default: 24, 2)."
    )
    parser.add_argument("--rounds", type=int, default=None, help="ABBA rounds (4 runs each).")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=2, help="Calls in flight, both paths.")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--teacher-url", default=None, help="Use this OpenAI-compatible server (serving smollm2-135m)."
    )
    args = parser.parse_args()
    n = args.examples or (8 if args.quick else 24)
    rounds = args.rounds or (1 if args.quick else 2)

    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    base = get_settings()
    settings = Settings(home=workdir / "home", database_url=base.database_url, redis_url=base.redis_url)
    teacher = nullcontext(args.teacher_url) if args.teacher_url else teacher_server(workdir)
    with (
        running_services(settings) as urls,
        scratch_database(urls.database_url) as db,
        teacher as teacher_url,
    ):
        settings = Settings(home=workdir / "home", database_url=db, redis_url=urls.redis_url)
        spec = spec_for(teacher_url, args.concurrency, args.max_tokens)
        examples = load_jsonl(sample_file("arc", "train"))
        with session_scope(db) as session:
            ex_store.import_examples(session, "arc", "train", examples, source="bench")
            upsert_teacher(session, spec)
            key = apikeys.create_key(session, "bench", ("admin",)).key
        # The same prompts the worker builds: same pool, strategy, k and seed; no seed rationales stored.
        selector = InContextSelector(examples, "random", K, SEED)
        items = [(ex, [Demonstration(d) for d in selector.select(ex)]) for ex in examples[:n]]

        env = {**os.environ, "DATABASE_URL": db, "REDIS_URL": urls.redis_url}
        env["DISTILLERY_WORKER_CHUNK_SIZE"] = str(max(1, n // 6))
        worker = [sys.executable, "-m", "distillery_worker", "--concurrency", "4", "--loglevel", "WARNING"]
        with process(worker, workdir / "worker.log", env) as proc, gateway(settings) as url:
            time.sleep(3)  # the worker connects to the broker
            if proc.poll() is not None:
                raise SystemExit(f"bench: worker exited:\n{(workdir / 'worker.log').read_text()[-2000:]}")
            # Warm-up: loads the model weights into the page cache and the server's first-request state.
            asyncio.run(direct(spec, items[:2], args.concurrency))
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
                times: dict[str, list[float]] = {"direct": [], "pipeline": []}
                tokens: dict[str, set[int]] = {"direct": set(), "pipeline": set()}
                for _ in range(rounds):
                    for side in ("direct", "pipeline", "pipeline", "direct"):
                        if side == "direct":
                            seconds, used = asyncio.run(direct(spec, items, args.concurrency))
                        else:
                            seconds, used = pipeline(api, db, n)
                        times[side].append(seconds)
                        tokens[side].add(used)
                        print(f"{side}: {n} rationales in {seconds:.1f} s", flush=True)

    direct_rate = n * len(times["direct"]) / sum(times["direct"])
    pipeline_rate = n * len(times["pipeline"]) / sum(times["pipeline"])
    print(f"examples={n} rounds={rounds} concurrency={args.concurrency} max_tokens={args.max_tokens}")
    print(f"completion_tokens direct={sorted(tokens['direct'])} pipeline={sorted(tokens['pipeline'])}")
    print(f"direct_rationales_per_s={direct_rate:.3f}")
    print(f"pipeline_rationales_per_s={pipeline_rate:.3f}")
    print(f"pipeline_vs_direct={pipeline_rate / direct_rate:.3f}")


if __name__ == "__main__":
    main()
