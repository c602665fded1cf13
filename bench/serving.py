"""Serving the student on a CPU: the gateway's llamacpp backend (both runtimes) against llama.cpp's own
server called directly, and against the gateway's transformers backend.

    python bench/serving.py --quick

Starts what it needs: a scratch database on DATABASE_URL (or the embedded PostgreSQL), Redis from
REDIS_URL (or the embedded one), the student's GGUF (exported once, `distillery.export`), and four
child processes serving it: llama.cpp's `llama-server` on the GGUF with the same slot count
(`scripts/build-llama-server.sh` builds it), and `distillery gateway` with the llamacpp backend
in-process (llama-cpp-python), with the llamacpp backend on a llama-server child, and with the
transformers backend. The same load (`--clients` concurrent clients, greedy completions of
`--max-tokens`) runs against each, in alternating rounds so drift on a shared host hits all alike.
Figures (completion tokens/s):

* `server_vs_inprocess`: the llamacpp backend's two runtimes, both through the gateway.
* `llamacpp_vs_transformers`: the gateway with the llamacpp backend (its default runtime) over the
  gateway with the transformers backend.
* `greedy_agreement`: identical greedy chat answers (ARC dev questions, `--agree` of them, 16 tokens)
  of the gateway with the llamacpp backend (default runtime, the GGUF) and with the transformers
  backend (the HF weights in fp32).
* `gateway_vs_llamacpp` (last line): the gateway with the llamacpp backend (default runtime) over
  llama-server called directly. Target >= 0.90.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from gateway import child_server, free_port, gateway, load

from distillery import apikeys
from distillery.config import Settings
from distillery.datasets import load_jsonl, sample_file
from distillery.export import cached_export
from distillery.modelhub import resolve_model
from distillery.records import Example
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery_gateway.engine.llamaserver_backend import LlamaServerProcess, find_binary
from distillery_launcher.embedded import running_services


@contextmanager
def llamacpp_server(gguf: Path, slots: int, threads: int, log: Path) -> Iterator[str]:
    """llama.cpp's llama-server on `gguf` with `slots` slots as a child process; yields its URL."""
    port = free_port()
    process = LlamaServerProcess(find_binary(), gguf, slots, 2048, threads, log)
    argv = process.argv(port)
    with child_server(argv, f"http://127.0.0.1:{port}", "/health", log) as url:
        yield url


async def agreement(first: str, second: str, key: str, model: str, n: int) -> tuple[int, int]:
    """(identical, asked): greedy chat answers of two servers to the first `n` ARC dev questions."""
    questions = load_jsonl(sample_file("arc", "dev"))[:n]
    headers = {"Authorization": f"Bearer {key}"}

    async def answers(url: str) -> list[str]:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
            limit = asyncio.Semaphore(8)

            async def ask(q: Example) -> str:
                options = " ".join(f"({chr(97 + i)}) {o}" for i, o in enumerate(q.options))
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"{q.question}\nOptions: {options}\nAnswer:"}],
                    "max_tokens": 16,
                    "temperature": 0,
                }
                async with limit:
                    response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                return str(response.json()["choices"][0]["message"]["content"])

            return list(await asyncio.gather(*(ask(q) for q in questions)))

    mine, theirs = await answers(first), await answers(second)
    return sum(a == b for a, b in zip(mine, theirs, strict=True)), len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small load (a few minutes)")
    parser.add_argument("--model", default="smollm2-135m", help="modelhub name or HF dir of a causal student")
    parser.add_argument("--outtype", default="f16", help="GGUF weight type (f16, q8_0, q4_k_m)")
    parser.add_argument("--slots", type=int, default=16, help="llama.cpp slots of the llamacpp backend")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, help="requests per server (default 64 quick, 256 full)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--agree", type=int, default=100, help="ARC dev questions for greedy agreement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of each server")
    args = parser.parse_args()
    requests = args.requests or (64 if args.quick else 256)
    model = resolve_model(args.model, progress=lambda line: print(line, file=sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-serving-"))
    settings = Settings(home=workdir / "home")
    export = cached_export(model, settings.gguf_exports, args.outtype)
    threads = str(args.threads)
    llamacpp = {
        "DISTILLERY_STUDENT_BACKEND": "llamacpp",
        "DISTILLERY_GGUF_DIR": str(settings.gguf_exports),
        "DISTILLERY_LLAMACPP_OUTTYPE": args.outtype,
        "DISTILLERY_LLAMACPP_SLOTS": str(args.slots),
        "DISTILLERY_STUDENT_THREADS": threads,
    }
    default_runtime = settings.llamacpp_runtime
    backends = {
        "inprocess": {**llamacpp, "DISTILLERY_LLAMACPP_RUNTIME": "inprocess"},
        "server": {**llamacpp, "DISTILLERY_LLAMACPP_RUNTIME": "server"},
        "transformers": {"DISTILLERY_STUDENT_BACKEND": "transformers", "DISTILLERY_STUDENT_THREADS": threads},
    }
    rounds = 2
    totals = {name: [0, 0.0] for name in ("direct", *backends)}
    with (
        running_services(settings) as urls,
        scratch_database(urls.database_url, "distillery_bench") as db,
        ExitStack() as stack,
    ):
        with session_scope(db) as session:
            key = apikeys.create_key(session, "bench", ("infer",)).key
        servers = {
            "direct": stack.enter_context(
                llamacpp_server(export.gguf, args.slots, args.threads, workdir / "llama.log")
            )
        }
        for name, env in backends.items():
            log = workdir / f"gateway-{name}.log"
            servers[name] = stack.enter_context(
                gateway(db, urls.redis_url, model, settings.batch_max_size, log, **env)
            )
        served = httpx.get(f"{servers['inprocess']}/v1/models", headers={"Authorization": f"Bearer {key}"})
        model_id = served.json()["data"][0]["id"]
        for _ in range(rounds):
            for name, url in servers.items():
                tokens, seconds = asyncio.run(
                    load(url, key, model_id, args.clients, requests // rounds, args.max_tokens)
                )
                totals[name][0] += tokens
                totals[name][1] += seconds
        same, asked = asyncio.run(
            agreement(servers[default_runtime], servers["transformers"], key, model_id, args.agree)
        )
    rate = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    print(
        f"model={args.model} gguf={export.gguf.name} slots={args.slots} clients={args.clients} "
        f"requests={requests} max_tokens={args.max_tokens} threads={args.threads}"
    )
    print(" ".join(f"{name}_tokens_per_s={value:.1f}" for name, value in rate.items()))
    print(
        f"server_vs_inprocess={rate['server'] / rate['inprocess']:.2f} (default runtime: {default_runtime})"
    )
    print(f"llamacpp_vs_transformers={rate[default_runtime] / rate['transformers']:.2f}")
    print(f"greedy_agreement={same}/{asked} ({default_runtime} {export.gguf.name} vs transformers fp32)")
    print(f"gateway_vs_llamacpp={rate[default_runtime] / rate['direct']:.2f}")


if __name__ == "__main__":
    main()
