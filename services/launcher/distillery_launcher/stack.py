"""The process list of a distillery deployment, as data.

`distillery up` runs exactly these services as child processes, and docker-compose.yml runs the same
commands in containers (tests/test_deploy_stack.py keeps the two in step). PostgreSQL and Redis: `up`
runs them as supervised children too when they are embedded (`embedded_servers`); compose runs its own.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from distillery.teachers.base import TeacherSpec

GATEWAY_PORT = 8000
TEACHER_PORT = 8100
# The gateway's student backend where none is configured: llama.cpp on the GGUF (docs/SERVING.md);
# .env.example (compose) and k8s/base's config map set the same.
CPU_STUDENT_BACKEND = "llamacpp"
# Served names of the local CPU teachers (distillery.modelhub names; GGUF files come from PyPI wheels).
LOCAL_TEACHER_MODELS = ("smollm2-135m", "gemma3-270m")
# SmolLM2-Instruct has a chat template; Gemma 3 270M is a base model, so it gets plain completions.
LOCAL_TEACHER_API_STYLES = {"smollm2-135m": "chat", "gemma3-270m": "completion"}


@dataclass(frozen=True)
class ServiceDef:
    """One supervised process: `distillery <argv...>`."""

    name: str
    argv: tuple[str, ...]
    ready_url: str | None = None  # answers 2xx once the service is ready; None: ready once started
    depends_on: tuple[str, ...] = ()
    oneshot: bool = False  # runs to completion; dependants start after it exited 0
    env: Mapping[str, str] = field(default_factory=dict)
    stop_signal: signal.Signals = signal.SIGTERM  # sent to the service's process group on stop


def embedded_servers(database_url: str | None, redis_url: str | None) -> list[ServiceDef]:
    """Supervised embedded PostgreSQL / Redis for the URLs given (None: that one is not embedded here).

    They run in the foreground (`distillery services run NAME`) and are ready once `url` answers;
    PostgreSQL stops on SIGINT (fast shutdown), to its whole process group as on a terminal's Ctrl-C.
    """
    services = []
    if database_url is not None:
        services.append(
            ServiceDef("postgres", ("services", "run", "postgres"), database_url, stop_signal=signal.SIGINT)
        )
    if redis_url is not None:
        services.append(ServiceDef("redis", ("services", "run", "redis"), redis_url))
    return services


def stack(
    host: str = "127.0.0.1",
    gateway_port: int = GATEWAY_PORT,
    teacher_port: int = TEACHER_PORT,
    teacher: bool = True,
    embedded: Iterable[ServiceDef] = (),
) -> list[ServiceDef]:
    """The services in start order. `host` is where the servers listen (compose: 0.0.0.0).

    `embedded`: supervised database / Redis servers (see `embedded_servers`); migrations wait for them.
    """
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    servers = list(embedded)
    services = [
        *servers,
        ServiceDef("migrate", ("db", "upgrade"), oneshot=True, depends_on=tuple(s.name for s in servers)),
    ]
    if teacher:
        services.append(
            ServiceDef(
                "teacher-cpu",
                (
                    "teachers",
                    "serve",
                    "--models",
                    ",".join(LOCAL_TEACHER_MODELS),
                    "--host",
                    host,
                    "--port",
                    str(teacher_port),
                ),
                ready_url=f"http://{probe_host}:{teacher_port}/v1/models",
            )
        )
    services += [
        ServiceDef("worker", ("worker", "--concurrency", "4"), depends_on=("migrate",)),
        ServiceDef("trainer", ("trainer",), depends_on=("migrate",)),
        ServiceDef(
            "gateway",
            ("gateway", "--host", host, "--port", str(gateway_port)),
            ready_url=f"http://{probe_host}:{gateway_port}/healthz",
            depends_on=("migrate",),
        ),
    ]
    return services


def local_teachers(base_url: str = f"http://127.0.0.1:{TEACHER_PORT}/v1") -> list[TeacherSpec]:
    """Teacher rows for the models the `teacher-cpu` service serves at `base_url`."""
    return [
        TeacherSpec(
            name=name,
            backend="openai",
            base_url=base_url,
            model=name,
            api_style=LOCAL_TEACHER_API_STYLES[name],  # type: ignore[arg-type]
        )
        for name in LOCAL_TEACHER_MODELS
    ]


def start_order(services: Iterable[ServiceDef]) -> list[ServiceDef]:
    """`services` sorted so that every service comes after its dependencies (ValueError on a cycle)."""
    pending = {s.name: s for s in services}
    names = set(pending)
    for s in pending.values():
        unknown = set(s.depends_on) - names
        if unknown:
            raise ValueError(f"service {s.name!r} depends on unknown {sorted(unknown)}")
    ordered: list[ServiceDef] = []
    placed: set[str] = set()
    while pending:
        ready = [s for s in pending.values() if set(s.depends_on) <= placed]
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(pending)}")
        for s in ready:
            ordered.append(s)
            placed.add(s.name)
            del pending[s.name]
    return ordered
