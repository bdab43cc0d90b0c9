"""The stores the durable-jobs figure writes to: a PostgreSQL server and a Redis server, each
started by the bench on a free port of 127.0.0.1 and stopped by its PID (the process group it
leads) whatever happens.

PostgreSQL runs from Debian's binaries (``/usr/lib/postgresql/*/bin``) as the ``postgres``
user (``runuser -u postgres --``) on a data directory made by ``initdb`` in a fresh temporary
directory, trust authentication on 127.0.0.1 and its defaults otherwise: every commit is
flushed to disk (``fsync``, ``synchronous_commit``), as a store of durable jobs runs.
Redis runs as ``redis-server --port P --bind 127.0.0.1 --save ''``: no snapshot, and no
append-only file (Redis's default), so what it holds is in memory only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ._harness import HOST, free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PG_USER = "postgres"


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if not found:
        raise RuntimeError(
            f"no PostgreSQL server ({name}) under /usr/lib/postgresql/*/bin: apt-get install "
            "postgresql"
        )
    return found[-1]


def _version_key(path: str) -> tuple[int, ...]:
    version = path.split("/")[4]
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *argv]
    return argv  # not root: the servers run as whoever runs the bench


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((HOST, port))
        except OSError:
            return False
        return True


@dataclass
class Started:
    """One server process (the leader of a process group of its own)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    log_path: Path
    stop_signal: int = signal.SIGTERM
    databases: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Its own signal to the group (a fast shutdown), SIGKILL if it has not gone within
        STOP_TIMEOUT; then its directory is removed."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, self.stop_signal)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=STOP_TIMEOUT)
            # What is left of the group (a backend the postmaster did not wait for).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _wait_ready(started: Started, ready: object) -> None:
    assert callable(ready)
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if started.proc.poll() is not None:
            raise RuntimeError(
                f"{started.name} exited with {started.proc.returncode}:\n{started.log()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{started.name} did not start in {START_TIMEOUT:.0f} s")
        time.sleep(0.02)


def start_postgres(cpu_prefix: list[str] | None = None) -> Started:
    """initdb in a new temporary directory, then ``postgres`` on a free port of 127.0.0.1."""
    directory = Path(tempfile.mkdtemp(prefix="graceful-bench-pg-"))
    data = directory / "data"
    log_path = directory / "postgres.log"
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, PG_USER, PG_USER)
        initdb = [
            _pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
            "--no-instructions",
        ]  # fmt: skip
        subprocess.run(
            _as_postgres(initdb),
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        argv = [
            _pg_bin("postgres"), "-D", str(data), "-p", str(port),
            "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={directory}",
            "-c", "max_connections=200",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*(cpu_prefix or []), *_as_postgres(argv)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client to go).
    started = Started("postgres", proc, port, directory, log_path, stop_signal=signal.SIGINT)
    try:
        _wait_ready(started, lambda: _accepts(port) and _psql(started, "SELECT 1") == "1")
    except BaseException:
        started.stop()
        raise
    return started


def _run_psql(server: Started, sql: str) -> subprocess.CompletedProcess[str]:
    argv = [
        _pg_bin("psql"), "-h", HOST, "-p", str(server.port), "-U", PG_USER, "-d", "postgres",
        "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql,
    ]  # fmt: skip
    return subprocess.run(
        _as_postgres(argv), capture_output=True, text=True, timeout=60, check=False
    )


def _psql(server: Started, sql: str) -> str:
    done = _run_psql(server, sql)
    return done.stdout.strip() if done.returncode == 0 else ""


def fresh_database(server: Started, name: str) -> str:
    """Drops ``name`` if it is there and creates it empty; returns its URL."""
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        done = _run_psql(server, sql)
        if done.returncode != 0:
            raise RuntimeError(f"{sql} failed:\n{done.stderr}")
    return postgres_url(server, name)


def postgres_url(server: Started, database: str) -> str:
    return f"postgresql://{PG_USER}@{HOST}:{server.port}/{database}"


def postgres_version() -> str:
    done = subprocess.run([_pg_bin("postgres"), "--version"], capture_output=True, text=True)
    return done.stdout.strip() or "postgres (unknown version)"


def start_redis(cpu_prefix: list[str] | None = None) -> Started:
    """``redis-server`` on a free port of 127.0.0.1, nothing saved to disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no redis-server: apt-get install redis-server")
    directory = Path(tempfile.mkdtemp(prefix="graceful-bench-redis-"))
    log_path = directory / "redis.log"
    port = free_port()
    argv = [
        binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--daemonize", "no",
    ]  # fmt: skip
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*(cpu_prefix or []), *argv],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    started = Started("redis", proc, port, directory, log_path)
    try:
        _wait_ready(started, lambda: _redis_ping(port))
    except BaseException:
        started.stop()
        raise
    return started


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_url(server: Started) -> str:
    return f"redis://{HOST}:{server.port}/0"


def redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not installed"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.split(" sha=")[0].strip() or "redis-server (unknown version)"


@contextlib.contextmanager
def running_stores(cpu_prefix: list[str] | None = None) -> Iterator[tuple[Started, Started]]:
    """PostgreSQL and Redis for the length of the block, stopped by PID in any case."""
    postgres = start_postgres(cpu_prefix)
    try:
        redis = start_redis(cpu_prefix)
        try:
            yield postgres, redis
        finally:
            redis.stop()
    finally:
        postgres.stop()
