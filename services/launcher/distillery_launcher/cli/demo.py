"""`distillery demo`: the whole job end to end on this machine, as a user would run it.

It starts `distillery up` (embedded PostgreSQL + Redis unless URLs are set, the CPU teachers, a worker,
the trainer and the gateway) as a child process and then only talks to it as a client: REST for the
rationale job, the training run and the promotion; the `openai` SDK for the questions.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import typer
from tqdm import tqdm

from distillery.config import get_settings
from distillery.datasets import load_jsonl, sample_file
from distillery.rationales.prompts import ANSWER_PREFIX, option_letter, parse_answer, student_input
from distillery.records import Example

TEACHERS = ("smollm2-135m", "gemma3-270m")
PAPER_TEACHERS = ("flan-t5-xl", "llama-2-7b-chat")
KEY_LINE = re.compile(r"admin key\s+(\S+)")
ASK_CONCURRENCY = 8
INTRO = (
    "distillery demo: CPU-size teachers (SmolLM2-135M-Instruct, Gemma-3-270M via llama.cpp) stand in "
    "for the GPU teachers (vLLM serving 7B+ models) of a real deployment, and the paper's own FLAN-T5-XL "
    "and LLaMA-2 rationales are added for the same questions. Training a 135M student on a few dozen "
    "questions for a few minutes shows the pipeline working end to end; it is not expected to move "
    "accuracy beyond noise (`distillery experiments run` measures the methods properly)."
)
JOB_FINISHED = {"completed", "completed_with_errors", "failed", "cancelled"}
RUN_FINISHED = {"completed", "failed", "cancelled"}
HYPERPARAMETERS = {
    "learning_rate": 1e-4,
    "batch_size": 4,
    "epochs": 1,
    "max_input_tokens": 128,
    "max_target_tokens": 48,
    "save_steps": 4,
    "logging_steps": 1,
}


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def _say(message: str) -> None:
    typer.secho(f"==> {message}", fg=typer.colors.CYAN)


class Stack:
    """`distillery up` in a child process; its prefixed log goes to a file."""

    def __init__(self, home: Path, port: int, teacher_port: int):
        self.log_path = home / "demo" / "up.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.port, self.teacher_port = port, teacher_port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 900.0) -> str:
        """Start the stack and return the admin key it prints once everything answers."""
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distillery_launcher.cli.main",
                "up",
                "--port",
                str(self.port),
                "--teacher-port",
                str(self.teacher_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout_s
        with tqdm(desc="starting services", bar_format="{desc} {elapsed}", leave=False) as bar:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"`distillery up` exited ({self.proc.returncode}); see {self.log_path}"
                    )
                match = KEY_LINE.search(self.log_path.read_text(errors="replace"))
                if match:
                    return match.group(1)
                bar.update(0)
                time.sleep(1)
        raise RuntimeError(f"the stack did not come up in {timeout_s:.0f} s; see {self.log_path}")

    def wait(self) -> None:
        """Until the stack exits (Ctrl-C stops it)."""
        if self.proc:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Gateway:
    """The running stack as a client sees it: its URL, the admin key, a REST client."""

    url: str
    key: str
    api: httpx.Client


def _wait(
    client: httpx.Client,
    path: str,
    desc: str,
    unit: str,
    total_of: Callable[[dict], int | None],
    done_of: Callable[[dict], int],
    finished: set[str],
    timeout_s: float = 1800.0,
) -> dict:
    """Poll a resource until its status is final, showing its progress."""
    deadline = time.monotonic() + timeout_s
    with tqdm(desc=desc, unit=unit) as bar:
        while True:
            body = client.get(path).raise_for_status().json()
            bar.total = total_of(body) or None
            bar.n = done_of(body)
            bar.set_postfix_str(body["status"])
            bar.refresh()
            if body["status"] in finished:
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} still {body['status']} after {timeout_s:.0f} s")
            time.sleep(2)


def _ask(gw: Gateway, model: str, questions: list[Example], desc: str) -> tuple[list[bool], Counter[str]]:
    """Whether `model` answers each of `questions` right, asked through the official openai SDK, and
    its letter counts.

    Eight questions are in flight at a time, as concurrent users would send them: the gateway's
    micro-batcher answers them in shared batches (greedy answers are the same as one at a time)."""
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=5, timeout=300)

    def pick(ex: Example) -> int | None:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": student_input(ex, ANSWER_PREFIX)}],
            max_tokens=16,
            temperature=0,
        )
        return parse_answer(reply.choices[0].message.content or "", list(ex.options))

    right, letters = [], Counter[str]()
    with ThreadPoolExecutor(ASK_CONCURRENCY) as pool:
        picks = tqdm(pool.map(pick, questions), total=len(questions), desc=desc, unit="q")
        for ex, picked in zip(questions, picks, strict=True):
            letters[option_letter(picked) if picked is not None else "?"] += 1
            right.append(picked == ex.answer)
    return right, letters


def demo(
    questions: int = typer.Option(
        24, "--questions", min=4, max=200, help="ARC train questions for teachers."
    ),
    dev: int = typer.Option(40, "--dev", min=4, max=100, help="ARC dev questions asked before and after."),
    port: int = typer.Option(8000, "--port", help="Gateway port (another free one if taken)."),
    keep: bool = typer.Option(False, "--keep", help="Leave the stack running at the end (Ctrl-C stops it)."),
) -> None:
    """Run the whole job: rationales from two live CPU teachers, TinyLLM training, promotion, questions."""
    settings = get_settings()
    started = time.monotonic()
    typer.echo(INTRO)
    gateway_port = _free_port(port)
    stack = Stack(settings.home, gateway_port, _free_port(8100))
    _say(f"starting the stack (log: {stack.log_path})")
    try:
        gw = _start(stack, gateway_port, started)
        train = load_jsonl(sample_file("arc", "train"))[:questions]
        dev_set = load_jsonl(sample_file("arc", "dev"))[:dev]
        _say("importing the vendored ARC sample and the paper's rationales for it")
        import_job = _import_sample()
        job_id = _rationale_job(gw, train)
        untrained = gw.api.get("/v1/models").raise_for_status().json()["data"][0]["id"]
        before, before_letters = _ask(gw, untrained, dev_set, f"before: {untrained}, untrained")
        model_id = _train_student(gw, len(train), [job_id, import_job])
        model_path, served = _promote(gw, model_id)
        after, after_letters = _ask(gw, served, dev_set, "after: distilled student")
        _table(before, before_letters, after, after_letters, served)
        typer.echo(
            f"\nartifacts: model {model_path}, runs under {settings.artifacts}, "
            f"data under {settings.home}, stack log {stack.log_path}"
        )
        typer.echo(f"demo finished in {(time.monotonic() - started) / 60:.1f} min")
        if keep:
            typer.echo(f"stack still running at {gw.url} (admin key {gw.key}); Ctrl-C stops it")
            stack.wait()
    except (httpx.HTTPError, openai.APIError, RuntimeError) as exc:
        detail = exc.response.text if isinstance(exc, httpx.HTTPStatusError) else str(exc)
        typer.secho(f"demo failed: {detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        stack.stop()


def _start(stack: Stack, gateway_port: int, started: float) -> Gateway:
    """Start the stack; the gateway once it answers, with the admin key the stack printed."""
    url = f"http://127.0.0.1:{gateway_port}"
    key = stack.start()
    _say(f"stack up in {time.monotonic() - started:.0f} s: gateway {url}")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    return Gateway(url, key, api)


def _rationale_job(gw: Gateway, train: list[Example]) -> str:
    """Rationales for `train` from the live teachers, over REST; the job's id once it ends."""
    _say(f"rationale job: {len(train)} questions x {len(TEACHERS)} live teachers, over REST")
    body = {
        "dataset": "arc",
        "split": "train",
        "ids": [ex.id for ex in train],
        "teachers": list(TEACHERS),
        "in_context": {"strategy": "random", "k": 2},
        "generation": {"max_tokens": 64},
    }
    headers = {"Idempotency-Key": f"demo-{len(train)}"}
    job = gw.api.post("/v1/rationale-jobs", headers=headers, json=body).raise_for_status().json()
    job = _wait(
        gw.api,
        f"/v1/rationale-jobs/{job['id']}",
        "teacher rationales",
        "rationale",
        lambda b: b["total"],
        lambda b: b["done"] + b["failed"],
        JOB_FINISHED,
    )
    for p in job["progress"]:
        typer.echo(
            f"    {p['teacher']:<16} {p['done']}/{p['total']} done, {p['failed']} failed, "
            f"{p['completion_tokens']} tokens"
        )
    return str(job["id"])


def _train_student(gw: Gateway, limit: int, rationale_jobs: list[str]) -> str:
    """Train the student with TinyLLM on the jobs' rationales; the trained model's registry id."""
    _say("training SmolLM2-135M with TinyLLM (answer task + one task per teacher)")
    body = {
        "student": "smollm2-135m",
        "method": "tinyllm",
        "dataset": "arc",
        "split": "train",
        "limit": limit,
        "rationale_jobs": rationale_jobs,
        "alpha": 0.5,
        "model_name": "arc-demo",
        "hyperparameters": HYPERPARAMETERS,
        "eval": {"split": None},
    }
    run = gw.api.post("/v1/training-runs", json=body).raise_for_status().json()
    run = _wait(
        gw.api,
        f"/v1/training-runs/{run['id']}",
        "training",
        "step",
        lambda b: b["total_steps"],
        lambda b: b["step"],
        RUN_FINISHED,
    )
    if run["status"] != "completed" or not run.get("model_id"):
        raise RuntimeError(f"training run {run['id']} ended {run['status']}: {run.get('error')}")
    return str(run["model_id"])


def _promote(gw: Gateway, model_id: str) -> tuple[str | None, str]:
    """Promote the trained model and wait until the gateway serves it; (its path, its served name)."""
    _say("promoting the trained student; the gateway hot-swaps to it")
    promoted = gw.api.post(f"/v1/registry/models/{model_id}/promote").raise_for_status().json()
    return promoted.get("path"), _wait_served(gw.api, promoted["model"])


def _import_sample() -> str:
    """Import the vendored ARC sample and the paper's rationales for it; return the import job id."""
    from distillery.datasets import SAMPLES_DIR
    from distillery.store import examples as ex_store
    from distillery.store.db import session_scope
    from distillery.store.rationales import import_rationale_file
    from distillery_launcher.embedded import running_services

    with running_services(get_settings()) as urls, session_scope(urls.database_url) as session:
        for split in ("train", "dev"):
            ex_store.import_examples(
                session, "arc", split, load_jsonl(sample_file("arc", split)), "vendored sample"
            )
        summary = import_rationale_file(
            session, SAMPLES_DIR / "rationales" / "arc" / "train.jsonl", "arc", "train"
        )
    typer.echo(
        f"    paper rationales: {summary.lines} lines under {', '.join(summary.teachers)} "
        f"(job {summary.job_id})"
    )
    return summary.job_id


def _wait_served(api: httpx.Client, model: str, timeout_s: float = 600.0) -> str:
    deadline = time.monotonic() + timeout_s
    with tqdm(desc=f"loading {model}", bar_format="{desc} {elapsed}", leave=False):
        while time.monotonic() < deadline:
            ids = [m["id"] for m in api.get("/v1/models").raise_for_status().json()["data"]]
            if model in ids and _serving(api, model):
                return model
            time.sleep(2)
    raise RuntimeError(f"{model} not served after {timeout_s:.0f} s")


def _serving(api: httpx.Client, model: str) -> bool:
    rows = api.get("/v1/registry/models").raise_for_status().json()["data"]
    return any(r["model"] == model and r["serving"] for r in rows)


def _table(before: list[bool], bl: Counter, after: list[bool], al: Counter, served: str) -> None:
    """The before/after table, and whether the difference is beyond noise (paired exact McNemar test)."""
    from distillery.distill.stats import compare

    def letters(c: Counter) -> str:
        return " ".join(f"{k}:{v}" for k, v in sorted(c.items()))

    paired = compare(after, before)
    low, high = paired["ci95"]
    typer.echo("")
    typer.echo(f"ARC dev, first {paired['n']} questions, asked through the openai SDK (greedy):")
    typer.echo("| student | accuracy | answers by letter |\n|---|---|---|")
    typer.echo(f"| SmolLM2-135M-Instruct, untrained | {paired['accuracy_b']:.1%} | {letters(bl)} |")
    typer.echo(f"| {served} (TinyLLM, 4 teachers) | {paired['accuracy_a']:.1%} | {letters(al)} |")
    verdict = "beyond noise" if paired["mcnemar_p"] < 0.05 else "noise: no evidence of a difference"
    typer.echo(
        f"difference {paired['difference']:+.1%} on the same questions: {paired['only_a']} right only after "
        f"training, {paired['only_b']} only before; exact McNemar p = {paired['mcnemar_p']:.3f}, 95 % CI "
        f"[{low:+.1%}, {high:+.1%}] -> {verdict}"
    )
