"""Real server processes on 127.0.0.1 for one test: started on a free port, polled until they
answer, signalled like an orchestrator would, and killed by PID when the test ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .polling import wait_until
from .ports import free_port
from .processes import spawn, stop, wait_answering

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


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
        return whole_lines(self.jobs_file)

    def events(self) -> list[str]:
        """Lines a test app records besides finished jobs (JOBS_FILE.events)."""
        return whole_lines(self.jobs_file.with_name(self.jobs_file.name + ".events"))

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


StartServer = Callable[..., Server]


class Servers:
    """Every server one test starts, in its folder; ``stop_all`` kills each by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str] | str,
        env: dict[str, str] | None = None,
        ready_path: str | None = "/healthz",
        port: int | None = None,
        name: str = "server",
    ) -> Server:
        """Start ``argv`` (a module run with this interpreter, or a full command) on a free port.

        The process gets PORT, JOBS_FILE and any ``env`` given; its stdout and stderr go to a
        log file the test can read. Readiness is polled on ``ready_path``.
        """
        port = port or free_port()
        log_path = self.workdir / f"{name}-{port}.log"
        jobs_file = self.workdir / f"{name}-{port}-jobs.log"
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
        proc = spawn(command, log_path, cwd=self.workdir, env=full_env)
        self.started.append(proc)
        server = Server(proc, port, log_path, jobs_file, self.workdir)
        if ready_path is not None:
            wait_answering(
                proc,
                f"{server.url}{ready_path}",
                START_TIMEOUT,
                f"{command} to answer {ready_path}",
                server.log,
            )
        return server

    def stop_all(self) -> None:
        for proc in self.started:
            stop(proc)


def whole_lines(path: Path) -> list[str]:
    """The lines a server has appended to ``path`` so far, each whole: a poll may read the file
    while a line is being appended."""
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()
