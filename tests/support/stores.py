"""Real PostgreSQL and Redis servers for the tests, from Debian's packages.

``make test`` installs them (``.ci/ensure_stores.sh``); a missing binary fails the test with a
message saying so, never a skip. Each server listens on 127.0.0.1 only, keeps its files in a
temporary folder and is stopped by the PID we started (or the one PostgreSQL wrote for itself).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
MISSING = "{what} is not installed: run `make test`, which installs postgresql and redis-server"


@dataclass(frozen=True)
class PostgresServer:
    port: int
    pid: int  # the postmaster's, from postmaster.pid (runuser, our child, is its parent)
    bin_dir: Path
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> str:
        """Run one statement with psql as the postgres role; its output, or the test fails."""
        psql = str(self.bin_dir / "psql")
        command = [psql, "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", self.url, "-c", statement]
        # PG* variables of the machine must not redirect psql elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"psql {statement!r} failed: {done.stderr.strip()}", pytrace=False)
        return done.stdout.strip()


def postgres_bin_dir() -> Path:
    """The newest of /usr/lib/postgresql/<version>/bin that holds a server."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "postgres").is_file()]
    if not found:
        pytest.fail(
            MISSING.format(what="PostgreSQL (/usr/lib/postgresql/*/bin/postgres)"), pytrace=False
        )
    return max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)] or [0])


def _wait_started(
    name: str, proc: subprocess.Popen[bytes], port: int, log_path: Path, ready: Callable[[], bool]
) -> None:
    """Poll ``ready`` until it holds; fail with the server's log if it exits or is too slow."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{_tail(log_path)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name} did not answer on 127.0.0.1:{port} within "
                f"{START_TIMEOUT:.0f} s:\n{_tail(log_path)}",
                pytrace=False,
            )
        time.sleep(0.05)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop_pid(pid: int, sig: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Send ``sig`` to ``pid`` and wait for ``proc``, our child (``pid`` itself or its parent).

    Past the wait, SIGKILL to ``pid`` and to the process group ``proc`` leads (its own session):
    that takes PostgreSQL's backends too.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)
        raise AssertionError(
            f"{what} (pid {pid}) outlived signal {sig} by {STOP_TIMEOUT} s"
        ) from None


@contextlib.contextmanager
def run_postgres(port: int) -> Iterator[PostgresServer]:
    """initdb and postgres as the postgres user (PostgreSQL refuses root) in a fresh folder.

    The server settings are the defaults (fsync on: the durable jobs are tested for durability)
    but for where it listens: 127.0.0.1:``port``, and no unix socket.
    """
    bin_dir = postgres_bin_dir()
    if shutil.which("runuser") is None:
        pytest.fail(MISSING.format(what="runuser (util-linux)"), pytrace=False)
    try:
        account = pwd.getpwnam("postgres")  # made by Debian's postgresql-common
    except KeyError:
        pytest.fail(MISSING.format(what="the postgres user"), pytrace=False)
    # Under /tmp, not pytest's tmp_path: pytest-of-root is 0700, closed to the postgres user.
    workdir = Path(tempfile.mkdtemp(prefix="graceful-postgres-"))
    os.chown(workdir, account.pw_uid, account.pw_gid)
    data_dir = workdir / "data"
    log_path = workdir / "postgres.log"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    try:
        with log_path.open("wb") as log:
            initdb = subprocess.run(
                [
                    *as_postgres,
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            )
            if initdb.returncode != 0:
                pytest.fail(
                    f"initdb failed ({initdb.returncode}):\n{_tail(log_path)}", pytrace=False
                )
            proc = subprocess.Popen(
                [
                    *as_postgres,
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data_dir),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={port}",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "max_connections=100",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            nonlocal pid
            pid = pid or _postmaster_pid(data_dir)
            return pid is not None and _pg_isready(bin_dir, port)

        _wait_started("postgres", proc, port, log_path, ready)
        assert pid is not None
        yield PostgresServer(port, pid, bin_dir, data_dir, log_path)
    finally:
        if proc is not None:
            # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, nothing is waited for.
            # runuser would pass on only SIGTERM (smart shutdown) and SIGKILL 2 s later: the
            # signal goes to the postmaster itself, found by its file or as runuser's child.
            pid = pid or _postmaster_pid(data_dir) or _only_child(proc.pid)
            _stop_pid(pid or proc.pid, signal.SIGINT, proc, "postgres")
        shutil.rmtree(workdir, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    # postmaster.pid is written by the server as the postgres user; its first line is the PID.
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


def _only_child(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if len(children) == 1 else None
    return None


def _pg_isready(bin_dir: Path, port: int) -> bool:
    command = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"]
    return subprocess.run(command, timeout=10).returncode == 0


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new database for one test, dropped after it (forcibly: a test may leave clients)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    server.sql(f"CREATE DATABASE {name}")
    try:
        yield server.database_url(name)
    finally:
        server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def run_redis(port: int) -> Iterator[str]:
    """redis-server on 127.0.0.1:``port``, persisting nothing; yields its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        pytest.fail(MISSING.format(what="redis-server"), pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="graceful-redis-"))
    log_path = workdir / "redis.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_started("redis-server", proc, port, log_path, lambda: _redis_pong(port))
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        if proc is not None:
            # SIGTERM: redis shuts down at once (it has nothing to save).
            _stop_pid(proc.pid, signal.SIGTERM, proc, "redis-server")
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
