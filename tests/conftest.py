"""Fixtures that start real server processes on 127.0.0.1 and stop them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ._stores import PostgresServer, fresh_database, run_postgres, run_redis

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0

# tests/docker needs a Docker engine and builds images: `make test-docker` runs it.
collect_ignore = [] if os.environ.get("GRACEFUL_DOCKER_TESTS") == "1" else ["docker"]
collect_ignore += [] if os.environ.get("GRACEFUL_SWARM_TESTS") == "1" else ["swarm"]
# tests/reload runs every server through its own reload signal under load: `make test-reload`.
collect_ignore += [] if os.environ.get("GRACEFUL_RELOAD_TESTS") == "1" else ["reload"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.01)


def connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    jobs_file: Path
    workdir: Path
    signalled_at: float | None = field(default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, sig: int) -> None:
        self.signalled_at = time.monotonic()
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server pid {self.pid} still running {timeout} s after the signal;\n{self.log()}"
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout, f"{text!r} in the server log")

    def jobs(self) -> list[str]:
        if not self.jobs_file.exists():
            return []
        return self.jobs_file.read_text().splitlines()

    def events(self) -> list[str]:
        """Lines a test app records besides finished jobs (JOBS_FILE.events)."""
        path = self.jobs_file.with_name(self.jobs_file.name + ".events")
        return path.read_text().splitlines() if path.exists() else []

    def stats(self) -> dict[str, int]:
        response = httpx.get(f"{self.url}/_stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def wait_in_flight(self, requests: int = 0, jobs: int = 0, timeout: float = 10.0) -> None:
        """Readiness poll: the server reports at least this much protected work in flight."""

        def enough() -> bool:
            stats = self.stats()
            return stats["requests"] >= requests and stats["jobs"] >= jobs

        wait_until(enough, timeout, f"{requests} requests and {jobs} jobs in flight")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started, by its PID (and the process group it leads)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``argv`` (a module run with this interpreter, or a full command) on a free port.

    The process gets PORT, JOBS_FILE and any ``env`` given; its stdout and stderr go to a log
    file the test can read. Readiness is polled on ``ready_path``. Every process is killed by
    PID when the test ends, whatever happened.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(
        argv: Sequence[str] | str,
        env: dict[str, str] | None = None,
        ready_path: str | None = "/healthz",
        port: int | None = None,
        name: str = "server",
    ) -> Server:
        port = port or free_port()
        log_path = tmp_path / f"{name}-{port}.log"
        jobs_file = tmp_path / f"{name}-{port}-jobs.log"
        command = [sys.executable, "-m", argv] if isinstance(argv, str) else list(argv)
        command = [part.replace("{port}", str(port)) for part in command]
        full_env = {
            **os.environ,
            "PORT": str(port),
            "JOBS_FILE": str(jobs_file),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=tmp_path,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        server = Server(proc, port, log_path, jobs_file, tmp_path)
        if ready_path is not None:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
                try:
                    return httpx.get(f"{server.url}{ready_path}", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, START_TIMEOUT, f"{command} to answer {ready_path}")
        return server

    try:
        yield start
    finally:
        for proc in started:
            stop(proc)


# Real stores (tests/_stores.py): one PostgreSQL and one Redis server per session, on free ports
# of 127.0.0.1, from the packages `make test` installs; missing ones fail the test, never skip.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server run by the postgres user; ``.url`` is its ``postgres`` database."""
    with run_postgres(free_port()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a database made for this test alone (test_<random>), dropped after it."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a redis-server that persists nothing."""
    with run_redis(free_port()) as url:
        yield url
