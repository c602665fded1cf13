"""Batched scoring: lm-eval's `local-completions` client against the gateway, over lm-eval's `hf` model
scoring the same task in-process.

    python bench/scoring.py --quick

Starts what it needs: a scratch database on DATABASE_URL (or the embedded PostgreSQL), Redis from
REDIS_URL (or the embedded one), and `distillery gateway` (transformers backend) as a child process.
Exports a dataset split as an lm-eval multiple-choice task (`distillery.lm_eval_export`, what
`distillery data export-lm-eval` writes) and scores it with lm-eval's `simple_evaluate` two ways:

* in-process: lm-eval's `hf` model (float32, CPU, `--batch-size` requests per forward pass);
* over HTTP: lm-eval's `local-completions` model against the gateway's /v1/completions (token-id
  prompts, `echo`, `logprobs`), `--concurrent` requests in flight of `--batch-size` prompts each.

Both score with the same number of torch threads (`--threads`; the gateway's
DISTILLERY_STUDENT_THREADS), and the two runs alternate for `--rounds` rounds so drift on a shared host
hits both alike; each model is built once and warmed up on two questions, so the timings cover scoring
only. Prints each side's seconds and log-likelihood requests/s, whether acc and acc_norm agree (and the
largest per-option log-likelihood difference); the last line, `scoring_vs_inprocess`, is the gateway's
requests/s over the in-process requests/s. Target >= 0.7.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from gateway import gateway

from distillery import apikeys
from distillery.config import Settings
from distillery.datasets import dataset_file, load_jsonl
from distillery.lm_eval_export import ExportedTask, export_task
from distillery.modelhub import resolve_model
from distillery.store.db import session_scope
from distillery.store.migrate import scratch_database
from distillery_launcher.embedded import running_services


def score(lm: Any, task: ExportedTask) -> tuple[float, dict[str, float], list[list[float]]]:
    """(seconds, {acc, acc_norm}, per question the options' log-likelihoods) of lm-eval scoring `task`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task.yaml_path.parent))
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=[task.name], task_manager=manager, log_samples=True)
    seconds = time.perf_counter() - started
    assert results is not None
    metrics = results["results"][task.name]
    samples = sorted(results["samples"][task.name], key=lambda s: s["doc_id"])
    lls = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
    return seconds, {m: float(metrics[f"{m},none"]) for m in ("acc", "acc_norm")}, lls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few questions (a few minutes)")
    parser.add_argument("--model", default="smollm2-135m", help="modelhub name or HF dir of a causal student")
    parser.add_argument("--dataset", default="arc", help="dataset whose dev split is scored (arc, obqa, ...)")
    parser.add_argument("--questions", type=int, help="questions scored (default 24 quick, 100 full)")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass / HTTP request")
    parser.add_argument(
        "--concurrent", type=int, default=2, help="HTTP requests local-completions keeps open"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two runs")
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="torch threads of each side"
    )
    args = parser.parse_args()
    questions = args.questions or (24 if args.quick else 100)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model = resolve_model(args.model, progress=lambda line: print(line, file=sys.stderr))
    workdir = Path(tempfile.mkdtemp(prefix="distillery-bench-scoring-"))
    settings = Settings(home=workdir / "home")
    examples = load_jsonl(dataset_file(args.dataset, "dev", settings.datasets_dir))[:questions]
    task = export_task(examples, args.dataset, "dev", workdir / "tasks")
    warmup = export_task(examples[:2], args.dataset, "dev", workdir / "warmup")
    requests = sum(len(json.loads(line)["choices"]) for line in task.docs_path.read_text().splitlines())

    from lm_eval.api.registry import get_model

    torch.set_num_threads(args.threads)
    inprocess = get_model("hf").create_from_arg_string(
        f"pretrained={model},dtype=float32,device=cpu,batch_size={args.batch_size}"
    )
    env = {
        "DISTILLERY_STUDENT_BACKEND": "transformers",
        "DISTILLERY_STUDENT_THREADS": str(args.threads),
    }
    batch_max = max(settings.batch_max_size, args.batch_size)  # one HTTP request's prompts: one batch
    seconds = {"inprocess": 0.0, "gateway": 0.0}
    scored: dict[str, tuple[dict[str, float], list[list[float]]]] = {}
    with (
        running_services(settings) as urls,
        scratch_database(urls.database_url, "distillery_bench") as db,
        gateway(db, urls.redis_url, model, batch_max, workdir / "gateway.log", **env) as url,
    ):
        with session_scope(db) as session:
            key = apikeys.create_key(session, "bench", ("infer",)).key
        os.environ["OPENAI_API_KEY"] = key  # local-completions' Bearer token
        served = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        model_args = (
            f"model={served.json()['data'][0]['id']},base_url={url}/v1/completions,"
            f"num_concurrent={args.concurrent},batch_size={args.batch_size},"
            f"tokenizer_backend=huggingface,tokenizer={model},max_retries=1"
        )
        client = get_model("local-completions").create_from_arg_string(model_args)
        lms = {"inprocess": inprocess, "gateway": client}
        for lm in lms.values():  # untimed: first-call costs (allocations, lazy imports, caches) on each side
            score(lm, warmup)
        for r in range(args.rounds):
            for name, lm in lms.items():
                took, metrics, lls = score(lm, task)
                print(f"round {r + 1} {name}: {took:.1f} s", file=sys.stderr)
                seconds[name] += took
                scored[name] = (metrics, lls)
    rate = {name: requests * args.rounds / took for name, took in seconds.items()}
    (ours, our_lls), (theirs, their_lls) = scored["gateway"], scored["inprocess"]
    diff = max(abs(a - b) for q, p in zip(our_lls, their_lls, strict=True) for a, b in zip(q, p, strict=True))
    print(
        f"model={args.model} task={task.name} questions={task.n} requests={requests} rounds={args.rounds} "
        f"batch_size={args.batch_size} concurrent={args.concurrent} threads={args.threads}"
    )
    print(" ".join(f"{name}_s={took:.1f}" for name, took in seconds.items()))
    print(" ".join(f"{name}_requests_per_s={value:.1f}" for name, value in rate.items()))
    agree = "yes" if ours == theirs else "NO"  # reported, not asserted: the timings stand either way
    print(
        f"metrics_agree={agree} "
        + " ".join(
            f"{side}_{m}={value:.4f}"
            for side, ms in (("inprocess", theirs), ("gateway", ours))
            for m, value in ms.items()
        )
        + f" max_ll_abs_diff={diff:.2e}"
    )
    print(f"scoring_vs_inprocess={rate['gateway'] / rate['inprocess']:.2f}")


if __name__ == "__main__":
    main()
