"""The process supervisor behind `distillery up`, driven with small real Python processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from distillery_launcher.stack import ServiceDef, start_order
from distillery_launcher.supervisor import Supervisor

PY = sys.executable


class Lines:
    """A thread-safe text sink the supervisor writes its prefixed lines to."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return "".join(self._parts).splitlines()

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line containing {needle!r} in:\n" + "\n".join(self.lines))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def py(code: str) -> tuple[str, ...]:
    return ("-c", textwrap.dedent(code))


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Supervisor], threading.Thread]]:
    started: list[tuple[Supervisor, threading.Thread]] = []

    def start(sup: Supervisor) -> threading.Thread:
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.setdefault("code", sup.run()), daemon=True)
        thread.result = result  # type: ignore[attr-defined]
        thread.start()
        started.append((sup, thread))
        return thread

    yield start
    for sup, thread in started:
        sup.stop()
        sup.stop()
        thread.join(timeout=30)


def test_services_start_after_their_dependencies_with_prefixed_logs(run_in_thread) -> None:
    port = free_port()
    services = [
        ServiceDef(
            "tail", py("import time; print('tail up', flush=True); time.sleep(600)"), depends_on=("web",)
        ),
        ServiceDef(
            "web",
            ("-m", "http.server", str(port), "--bind", "127.0.0.1"),
            depends_on=("setup",),
            ready_url=f"http://127.0.0.1:{port}/",
        ),
        ServiceDef("setup", py("import time; time.sleep(0.3); print('schema ready')"), oneshot=True),
    ]
    out, ready = Lines(), threading.Event()
    seen: list[str] = []
    sup = Supervisor(services, [PY], out=out, on_ready=seen.append, on_all_ready=ready.set)
    thread = run_in_thread(sup)

    assert ready.wait(60), "\n".join(out.lines)
    out.wait_for("[tail]")
    lines = out.lines
    first = {
        name: next(i for i, line in enumerate(lines) if f"started {name}" in line)
        for name in ("setup", "web", "tail")
    }
    assert lines.index(next(line for line in lines if line.startswith("[setup]"))) < first["web"]
    assert first["setup"] < first["web"] < first["tail"]
    assert any(line.startswith("[setup] ") and line.endswith("schema ready") for line in lines)
    assert any(line.startswith("[tail]  ") and line.endswith("tail up") for line in lines)
    assert seen == ["setup", "web", "tail"]

    pids = [c.proc.pid for c in sup.children if c.proc is not None]
    sup.stop()
    thread.join(30)
    assert thread.result == {"code": 0}  # type: ignore[attr-defined]
    assert not [pid for pid in pids if alive(pid)]


def test_a_killed_service_is_restarted_and_reported(run_in_thread) -> None:
    services = [ServiceDef("worker", py("import time; print('working', flush=True); time.sleep(600)"))]
    out = Lines()
    sup = Supervisor(services, [PY], out=out, backoff_s=0.1)
    run_in_thread(sup)
    out.wait_for("[worker] working")
    first = sup.children[0].proc.pid
    psutil.Process(first).kill()

    report = out.wait_for("worker exited")
    assert "signal SIGKILL" in report and "restart 1/5" in report
    wait_until(lambda: len(sup.children[0].pids) == 2 and alive(sup.children[0].pids[-1]))
    wait_until(lambda: sum(line.endswith("working") for line in out.lines) == 2)
    assert not alive(first)


def test_a_service_that_keeps_crashing_ends_the_run_after_the_restart_limit() -> None:
    services = [
        ServiceDef("flaky", py("import sys; print('boom'); sys.exit(3)")),
        ServiceDef("steady", py("import time; time.sleep(600)")),
    ]
    out = Lines()
    sup = Supervisor(services, [PY], out=out, max_restarts=2, backoff_s=0.05)
    assert sup.run() == 1
    text = "\n".join(out.lines)
    assert "flaky exited (exit code 3); restarting in 0s (restart 1/2)" in text
    assert "(restart 2/2)" in text
    assert "stopped because flaky exited (exit code 3) after 2 restarts" in text
    assert len(sup.children[0].pids) == 3
    assert not alive(sup.children[1].pids[0])


def test_a_failed_oneshot_stops_the_run_before_its_dependants_start() -> None:
    services = [
        ServiceDef("migrate", py("import sys; sys.exit('no database')"), oneshot=True),
        ServiceDef("gateway", py("import time; time.sleep(600)"), depends_on=("migrate",)),
    ]
    out = Lines()
    sup = Supervisor(services, [PY], out=out)
    assert sup.run() == 1
    text = "\n".join(out.lines)
    assert "[migrate] no database" in text
    assert "stopped because migrate failed (exit code 1)" in text
    assert "started gateway" not in text


def test_stop_kills_children_that_ignore_sigterm_and_their_grandchildren(run_in_thread) -> None:
    stubborn = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("grandchild", child.pid, flush=True)
        time.sleep(600)
    """
    out = Lines()
    sup = Supervisor([ServiceDef("stubborn", py(stubborn))], [PY], out=out, stop_timeout_s=0.5)
    thread = run_in_thread(sup)
    grandchild = int(out.wait_for("grandchild").split()[-1])
    child = sup.children[0].proc.pid
    assert alive(child) and alive(grandchild)

    sup.stop()
    thread.join(30)
    assert "stubborn still running after 0s; killing it" in "\n".join(out.lines)
    wait_until(lambda: not alive(child) and not alive(grandchild), timeout=10)


def test_sigint_stops_a_supervisor_process_and_leaves_no_descendant(tmp_path) -> None:
    script = tmp_path / "sup.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            from distillery_launcher.stack import ServiceDef
            from distillery_launcher.supervisor import Supervisor

            code = (
                "import subprocess, sys, time; "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                "print('up', flush=True); time.sleep(600)"
            )
            services = [ServiceDef(name, ("-c", code)) for name in ("alpha", "beta")]
            sup = Supervisor(services, [{PY!r}], on_all_ready=lambda: sup.say("all ready"))
            sys.exit(sup.run())
            """
        )
    )
    proc = subprocess.Popen([PY, str(script)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "all ready" in line:
            break
    wait_until(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 4)
    descendants = psutil.Process(proc.pid).children(recursive=True)

    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "SIGINT received, stopping" in rest
    assert "alpha stopped" in rest and "beta stopped" in rest
    gone, still = psutil.wait_procs(descendants, timeout=10)
    assert not still


def test_start_order_puts_dependencies_first_and_rejects_cycles() -> None:
    a, b, c = (
        ServiceDef("a", ()),
        ServiceDef("b", (), depends_on=("a",)),
        ServiceDef("c", (), depends_on=("b",)),
    )
    assert [s.name for s in start_order([c, b, a])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="cycle"):
        start_order([ServiceDef("x", (), depends_on=("y",)), ServiceDef("y", (), depends_on=("x",))])
    with pytest.raises(ValueError, match="unknown"):
        start_order([ServiceDef("x", (), depends_on=("nope",))])
