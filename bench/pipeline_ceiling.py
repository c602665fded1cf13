"""Pipeline ceiling: rationales/s of ONE worker process against an instant teacher, at growing job sizes.

    python bench/pipeline_ceiling.py --quick      # 1k and 10k items
    python bench/pipeline_ceiling.py              # 1k, 10k and 100k items

Everything here is real but the teacher: a scratch database on DATABASE_URL (or the embedded
PostgreSQL), Redis from REDIS_URL (or the embedded one), the gateway (uvicorn, in-process), one
`python -m distillery_worker` process (threads pool). The teacher stands outside the system: an
OpenAI-compatible stub served by uvicorn on loopback in a process of its own, answering every chat
completion at once with a fixed rationale, so what is measured is the pipeline's own cost.

Jobs are PIQA train (the vendored examples repeated under new ids up to the largest size), one sample,
k = 2 random demonstrations, one teacher. A job's time runs from its creation to its completion as stored
in the job row. Each size's line also gives the worker process's CPU time per rationale (load-independent,
unlike the rate on a shared machine) and the load average. Last line: `rationales_per_s_per_worker=<rate
at the largest size> growth=<rate at the largest size / rate at 1k>`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn
from pipeline import free_port, gateway, process, wait_for  # bench/ is the script's directory
from sqlalchemy import text as sql_text

from distillery import apikeys
from distillery.config import Settings, get_settings
from distillery.datasets import load_jsonl, sample_file
from distillery.store import examples as ex_store
from distillery.store import models as m
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery.teachers.base import GenerationParams, TeacherSpec
from distillery.teachers.registry import upsert_teacher
from distillery_launcher.embedded import running_services

MODEL = "stub"
RATIONALE = "Pouring hot butter into a jar keeps it contained, so the answer is the jar."


# ------------------------------------------------------------------------------------------ stub teacher


async def _stub_app(scope: dict, receive: Any, send: Any) -> None:
    """A bare ASGI app: /v1/models and /v1/chat/completions (instant, fixed answer); nothing else."""
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"].endswith("/models"):
        payload: dict = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
    else:
        payload = {
            "id": "cmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": RATIONALE},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 16, "total_tokens": 136},
        }
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve_stub(port: int) -> None:
    uvicorn.run(_stub_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextmanager
def stub_teacher() -> Iterator[str]:
    """The stub on a free loopback port, in a process of its own; yields its base URL (…/v1)."""
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(target=_serve_stub, args=(port,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}/v1"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/models", timeout=2).is_success
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, "the stub teacher")
        yield url
    finally:
        proc.terminate()
        proc.join(timeout=10)


# ------------------------------------------------------------------------------------------ the stack


def import_piqa(database_url: str, n: int) -> None:
    """`n` PIQA train examples: the vendored ones, repeated under new ids."""
    base = load_jsonl(sample_file("piqa", "train"))
    examples = [replace(base[i % len(base)], id=f"train-{i}") for i in range(n)]
    with session_scope(database_url) as session:
        ex_store.import_examples(session, "piqa", "train", examples, source="bench")


def run_job(api: httpx.Client, database_url: str, n: int) -> float:
    """One job of `n` items through the gateway and the worker: creation-to-completion seconds."""
    body = {
        "dataset": "piqa",
        "split": "train",
        "limit": n,
        "teachers": ["stub"],
        "in_context": {"strategy": "random", "k": 2, "seed": 0},
    }
    response = api.post("/v1/rationale-jobs", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        view = api.get(f"/v1/rationale-jobs/{job_id}").json()
        if view["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    if view["status"] != "completed" or view["done"] != n:
        raise SystemExit(f"bench: job ended {view['status']} with {view['done']}/{n}: {view['errors'][:3]}")
    with session_scope(database_url) as session:
        job = session.get(m.RationaleJob, job_id)
        return (job.finished_at - job.created_at).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1k and 10k items (default: 1k, 10k, 100k).")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Job sizes (first one: the base).")
    parser.add_argument("--concurrency", type=int, default=4, help="Worker pool threads (chunks at once).")
    parser.add_argument("--teacher-concurrency", type=int, default=64, help="Teacher calls in flight.")
    parser.add_argument("--chunk-size", type=int, default=128, help="Examples per chunk.")
    args = parser.parse_args()
    sizes = args.sizes or ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])

    workdir = Path(tempfile.mkdtemp(prefix="distillery-ceiling-"))
    base = get_settings()
    settings = Settings(home=workdir / "home", database_url=base.database_url, redis_url=base.redis_url)
    with running_services(settings) as urls, scratch_database(urls.database_url) as db, stub_teacher() as url:
        settings = Settings(home=workdir / "home", database_url=db, redis_url=urls.redis_url)
        import_piqa(db, max(sizes))
        spec = TeacherSpec(
            name="stub",
            base_url=url,
            model=MODEL,
            params=GenerationParams(max_tokens=64, temperature=0.0),
            max_concurrency=args.teacher_concurrency,
            timeout_s=60,
        )
        with session_scope(db) as session:
            upsert_teacher(session, spec)
            key = apikeys.create_key(session, "bench", ("admin",)).key
        env = {**os.environ, "DATABASE_URL": db, "REDIS_URL": urls.redis_url}
        env["DISTILLERY_WORKER_CHUNK_SIZE"] = str(args.chunk_size)
        log = workdir / "worker.log"
        argv = [sys.executable, "-m", "distillery_worker", "--concurrency", str(args.concurrency)]
        with process([*argv, "--loglevel", "WARNING"], log, env) as proc, gateway(settings) as gw:
            time.sleep(3)  # the worker connects to the broker
            if proc.poll() is not None:
                raise SystemExit(f"bench: worker exited:\n{log.read_text()[-2000:]}")
            rates = []
            worker = psutil.Process(proc.pid)
            with httpx.Client(base_url=gw, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
                run_job(api, db, min(200, sizes[0]))  # warm-up: the worker's imports, pools and caches
                for n in sizes:
                    cpu_before = sum(worker.cpu_times()[:2])
                    seconds = run_job(api, db, n)
                    cpu_ms = (sum(worker.cpu_times()[:2]) - cpu_before) * 1000 / n
                    rates.append(n / seconds)
                    print(
                        f"items={n} seconds={seconds:.1f} rationales_per_s={rates[-1]:.1f} "
                        f"worker_cpu_ms_per_rationale={cpu_ms:.2f} loadavg_1m={os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
            with session_scope(db) as session:
                size = session.scalar(sql_text("SELECT pg_total_relation_size('rationale')"))
                rows = session.scalar(sql_text("SELECT count(*) FROM rationale"))
            print(f"rationale_rows={rows} bytes_per_row_with_indexes={size / max(rows, 1):.0f}")
    print(
        f"worker_concurrency={args.concurrency} chunk_size={args.chunk_size} "
        f"teacher_concurrency={args.teacher_concurrency} cpus={os.cpu_count()}"
    )
    print(f"rationales_per_s_per_worker={rates[-1]:.1f} growth={rates[-1] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
