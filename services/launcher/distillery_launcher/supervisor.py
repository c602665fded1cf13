"""A small process supervisor: start services in dependency order, prefix their logs, restart crashes,
stop everything on SIGINT/SIGTERM.

Each child runs in a session (and so a process group) of its own: Ctrl-C in the terminal reaches only
the supervisor, which then stops the children in reverse start order (SIGTERM to each child's process
group, SIGKILL to what is left of it after a timeout) so that nothing outlives it, grandchildren such as
the Celery worker a `distillery worker` wrapper runs included. A crashed child's leftovers are killed
before it is restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TextIO

from distillery_launcher.embedded import answers, mask_url
from distillery_launcher.stack import ServiceDef, start_order

_COLORS = ("36", "33", "35", "32", "34", "91", "96", "93")
# urllib would send even 127.0.0.1 probes through HTTP(S)_PROXY when one is set.
_PROBE = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def probe(url: str, timeout: float = 1.0) -> bool:
    """True when `url` answers: a 2xx status for HTTP, a connection for PostgreSQL, PING for Redis."""
    if not url.startswith("http"):
        return answers(url)
    try:
        with _PROBE.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def describe_exit(returncode: int) -> str:
    """'exit code 3' or 'signal SIGKILL'."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class _Child:
    service: ServiceDef
    state: str = "pending"  # pending | starting | ready | backoff | done | failed
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    last_probe: float = 0.0
    restarts: int = 0
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `services` as `[*command, *service.argv]` until stopped; see the module docstring."""

    def __init__(
        self,
        services: Sequence[ServiceDef],
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        out: TextIO | None = None,
        name: str = "up",
        max_restarts: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        ready_timeout_s: float = 600.0,
        stop_timeout_s: float = 30.0,
        on_ready: Callable[[str], None] | None = None,
        on_all_ready: Callable[[], None] | None = None,
    ) -> None:
        self.children = [_Child(s) for s in start_order(services)]
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.out = out or sys.stdout
        self.name = name
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.on_ready = on_ready
        self.on_all_ready = on_all_ready
        self._stop = threading.Event()
        self._force = False
        self._fatal: str | None = None
        self._announced = False
        self._write_lock = threading.Lock()
        self._signals: list[str] = []
        width = max([len(name), *(len(c.service.name) for c in self.children)])
        tty = hasattr(self.out, "isatty") and self.out.isatty()
        self._prefix = {}
        for i, label in enumerate([name, *(c.service.name for c in self.children)]):
            text = f"[{label}]".ljust(width + 2)
            self._prefix[label] = (
                f"\x1b[{_COLORS[(i - 1) % len(_COLORS)]}m{text}\x1b[0m" if tty and i else text
            )

    # -- output ----------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A report line of the supervisor itself."""
        self._emit(self.name, message)

    def _emit(self, label: str, line: str) -> None:
        with self._write_lock:
            self.out.write(f"{self._prefix[label]} {line}\n")
            self.out.flush()

    def _pump(self, label: str, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self._emit(label, raw.decode(errors="replace").rstrip("\r\n"))

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to stop everything (thread-safe); a second call skips the graceful wait."""
        if self._stop.is_set():
            self._force = True
        self._stop.set()

    def run(self) -> int:
        """Supervise until stopped or a service fails for good; 0 after a requested stop, else 1."""
        previous = self._install_signal_handlers()
        try:
            while not self._stop.is_set() and not self._failed():
                now = time.monotonic()
                for child in self.children:
                    self._step(child, now)
                    if self._failed():
                        break
                if not self._failed() and not self._announced and self._all_ready():
                    self._announced = True
                    self._callback(self.on_all_ready)
                self._stop.wait(0.1)
        finally:
            if self._signals:
                self.say(f"{self._signals[0]} received, stopping")
            self._shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self._fatal is not None:
            self.say(f"stopped because {self._fatal}")
            return 1
        return 0

    def _failed(self) -> bool:
        """Whether a service (or a start-up step) failed for good; `_step` and callbacks set it."""
        return self._fatal is not None

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        def handle(signum: int, _frame: Any) -> None:
            # No output here: the handler may interrupt this very thread inside _emit (and its lock).
            self._signals.append(signal.Signals(signum).name)
            self.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handle)
        return previous

    def _callback(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # a failed start-up step ends the run, with its reason
            self._fatal = f"{getattr(fn, '__name__', 'a start-up step')} failed: {exc}"

    def _all_ready(self) -> bool:
        return all(c.state == ("done" if c.service.oneshot else "ready") for c in self.children)

    def _state(self, name: str) -> str:
        return next(c.state for c in self.children if c.service.name == name)

    # -- one child -------------------------------------------------------------------------------

    def _step(self, child: _Child, now: float) -> None:
        svc = child.service
        if child.state == "pending":
            if all(self._state(d) in ("ready", "done") for d in svc.depends_on):
                self._spawn(child, now)
        elif child.state == "backoff":
            if now >= child.next_start:
                self._spawn(child, now)
        elif child.state in ("starting", "ready"):
            if self._exited(child):
                self._handle_exit(child, now)
            elif child.state == "starting":
                self._check_ready(child, now)

    def _spawn(self, child: _Child, now: float) -> None:
        svc = child.service
        child.proc = subprocess.Popen(
            [*self.command, *svc.argv],
            env={**self.env, **svc.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: terminal signals and our group kill stay apart
        )
        child.pids.append(child.proc.pid)
        assert child.proc.stdout is not None
        child.pump = threading.Thread(
            target=self._pump, args=(svc.name, child.proc.stdout), name=f"log-{svc.name}", daemon=True
        )
        child.pump.start()
        child.state = "starting"
        child.started_at = child.last_probe = now
        self.say(f"started {svc.name} (pid {child.proc.pid})")

    def _check_ready(self, child: _Child, now: float) -> None:
        svc = child.service
        if svc.oneshot:
            return
        if svc.ready_url is not None:
            if now - child.last_probe < 0.5:
                return
            child.last_probe = now
            if not probe(svc.ready_url):
                if now - child.started_at > self.ready_timeout_s:
                    self.say(f"{svc.name} not ready after {self.ready_timeout_s:.0f}s; restarting it")
                    self._kill(child)
                    self._handle_exit(child, time.monotonic())
                return
        child.state = "ready"
        if svc.ready_url is not None:
            self.say(f"{svc.name} ready ({mask_url(svc.ready_url)})")
        self._callback(self.on_ready, svc.name)

    def _exited(self, child: _Child) -> bool:
        """True once the child has exited; it stays unreaped, so its process group id stays reserved."""
        assert child.proc is not None
        if child.proc.returncode is not None:
            return True
        if not hasattr(os, "waitid"):  # macOS: poll() reaps, the group is swept all the same
            return child.proc.poll() is not None
        try:
            info = os.waitid(os.P_PID, child.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0

    def _reap(self, child: _Child) -> int:
        """Kill what is left of the child's process group, reap the child, return its exit status."""
        assert child.proc is not None
        if child.proc.returncode is None or not self._group_gone(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        returncode = child.proc.wait()
        if child.pump is not None:
            child.pump.join(timeout=5)
        return returncode

    def _handle_exit(self, child: _Child, now: float) -> None:
        svc = child.service
        returncode = self._reap(child)
        if svc.oneshot:
            if returncode == 0:
                child.state = "done"
                self.say(f"{svc.name} finished")
                self._callback(self.on_ready, svc.name)
            else:
                child.state = "failed"
                self._fatal = f"{svc.name} failed ({describe_exit(returncode)})"
            return
        if now - child.started_at >= self.stable_after_s:
            child.restarts = 0  # a crash after a long healthy run starts a fresh budget
        if child.restarts >= self.max_restarts:
            child.state = "failed"
            self._fatal = f"{svc.name} exited ({describe_exit(returncode)}) after {child.restarts} restarts"
            return
        delay = min(self.backoff_max_s, self.backoff_s * 2**child.restarts)
        child.restarts += 1
        child.state = "backoff"
        child.next_start = now + delay
        self.say(
            f"{svc.name} exited ({describe_exit(returncode)}); restarting in {delay:.0f}s "
            f"(restart {child.restarts}/{self.max_restarts})"
        )

    def _kill(self, child: _Child) -> None:
        assert child.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)

    # -- shutdown --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        running = [c for c in reversed(self.children) if c.proc is not None and c.proc.returncode is None]
        for child in running:
            assert child.proc is not None
            self.say(f"stopping {child.service.name} (pid {child.proc.pid})")
            # The whole group: CLI wrappers run the real server (Celery, uvicorn) as their own child.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, child.service.stop_signal)
        deadline = time.monotonic() + self.stop_timeout_s
        waiting = list(running)
        while waiting and time.monotonic() < deadline and not self._force:
            waiting = [c for c in waiting if not self._group_gone(c)]
            time.sleep(0.1)
        if self._force and waiting:
            self.say(f"{self._signals[-1] if self._signals else 'stop'} again: killing what is left")
        for child in running:
            if child in waiting and not self._force:
                self.say(f"{child.service.name} still running after {self.stop_timeout_s:.0f}s; killing it")
            returncode = self._reap(child)
            child.state = "stopped"
            self.say(f"{child.service.name} stopped ({describe_exit(returncode)})")

    @staticmethod
    def _group_gone(child: _Child) -> bool:
        """True once the child and every process of its group have exited (the child is reaped)."""
        assert child.proc is not None
        if child.proc.poll() is None:
            return False
        try:
            os.killpg(child.proc.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
