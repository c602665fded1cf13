"""Serving the student on a CPU: the gateway's llamacpp backend against llama.cpp called directly,
and against the gateway's transformers backend.

    python bench/serving.py --quick

Starts what it needs: a scratch database on DATABASE_URL (or the embedded PostgreSQL), Redis from
REDIS_URL (or the embedded one), the student's GGUF (exported once, `distillery.export`), and three
child processes serving it: llama-cpp-python's OpenAI server on the GGUF, and `distillery gateway`
with the llamacpp and with the transformers backend. The same load (`--clients` concurrent clients,
greedy completions of `--max-tokens`) runs against each, in alternating rounds so drift on a shared
host hits all alike. Figures (completion tokens/s):

* `llamacpp_vs_transformers`: the gateway with the llamacpp backend over the gateway with the
  transformers backend.
* `gateway_vs_llamacpp` (last line): the gateway with the llamacpp backend over the llama.cpp server
  called directly. Target >= 0.90.
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
from distillery.export import cached_export
from distillery.modelhub import resolve_model
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery_launcher.embedded import running_services


@contextmanager
def llamacpp_server(gguf: Path, threads: int, log: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on `gguf` as a child process; yields its URL once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port)]
    argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048"]
    with child_server(argv, f"http://127.0.0.1:{port}", "/v1/models", log) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small load (a few minutes)")
    parser.add_argument("--model", default="smollm2-135m", help="modelhub name or HF dir of a causal student")
    parser.add_argument("--outtype", default="f16", help="GGUF weight type (f16, q8_0, q4_k_m)")
    parser.add_argument("--slots", type=int, default=16, help="llama.cpp slots of the llamacpp backend")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, help="requests per server (default 32 quick, 128 full)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of each server")
    args = parser.parse_args()
    requests = args.requests or (32 if args.quick else 128)
    model = resolve_model(args.model, progress=lambda line: print(line, file=sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-serving-"))
    settings = Settings(home=workdir / "home")
    export = cached_export(model, settings.gguf_exports, args.outtype)
    threads = str(args.threads)
    backends = {
        "llamacpp": {
            "DISTILLERY_STUDENT_BACKEND": "llamacpp",
            "DISTILLERY_GGUF_DIR": str(settings.gguf_exports),
            "DISTILLERY_LLAMACPP_OUTTYPE": args.outtype,
            "DISTILLERY_LLAMACPP_SLOTS": str(args.slots),
            "DISTILLERY_STUDENT_THREADS": threads,
        },
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
            "direct": stack.enter_context(llamacpp_server(export.gguf, args.threads, workdir / "llama.log"))
        }
        for name, env in backends.items():
            log = workdir / f"gateway-{name}.log"
            servers[name] = stack.enter_context(
                gateway(db, urls.redis_url, model, settings.batch_max_size, log, **env)
            )
        served = httpx.get(f"{servers['llamacpp']}/v1/models", headers={"Authorization": f"Bearer {key}"})
        model_id = served.json()["data"][0]["id"]
        for _ in range(rounds):
            for name, url in servers.items():
                tokens, seconds = asyncio.run(
                    load(url, key, model_id, args.clients, requests // rounds, args.max_tokens)
                )
                totals[name][0] += tokens
                totals[name][1] += seconds
    rate = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    print(
        f"model={args.model} gguf={export.gguf.name} slots={args.slots} clients={args.clients} "
        f"requests={requests} max_tokens={args.max_tokens} threads={args.threads}"
    )
    print(" ".join(f"{name}_tokens_per_s={value:.1f}" for name, value in rate.items()))
    print(f"llamacpp_vs_transformers={rate['llamacpp'] / rate['transformers']:.2f}")
    print(f"gateway_vs_llamacpp={rate['llamacpp'] / rate['direct']:.2f}")


if __name__ == "__main__":
    main()
