"""Single-process servers sharing one port with SO_REUSEPORT (tests/reload/_serve.py), each
with a readiness socket of its own; used by the blue/green test and the reuse-port runs.

A process is ready once GET /readyz on its own abstract Unix socket answers 200: that is the
recipe's readiness poll, and it reaches that process whatever the kernel does with the port.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.polling import wait_until
from tests.support.servers import ROOT

START_TIMEOUT = 20.0


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    name: str
    log_path: Path
    ready_socket: str  # an abstract socket's name: no file, gone with the process

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        """GET /readyz through this process's own socket answers 200."""
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        transport = httpx.HTTPTransport(uds=f"\0{self.ready_socket}")
        try:
            with httpx.Client(transport=transport, timeout=1) as client:
                return client.get("http://localhost/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self) -> None:
        wait_until(self.ready, START_TIMEOUT, f"{self.name} to answer /readyz on its socket")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running;\n{self.log()}") from None


def start_process(
    kind: str, name: str, port: int, workdir: Path, jobs_file: Path, graceful: bool
) -> Process:
    """``python -m tests.reload._serve KIND`` on ``port``; its output in ``workdir``."""
    log_path = workdir / f"{name}.log"
    ready_socket = f"graceful-web-{name}-{port}-{os.getpid()}"
    env = {
        **os.environ,
        "PORT": str(port),
        "READY_SOCKET": ready_socket,
        "JOBS_FILE": str(jobs_file),
        "APP": "aiohttp" if kind == "aiohttp" else "asgi",
        "GRACEFUL": "1" if graceful else "0",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reload._serve", kind],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(proc, name, log_path, ready_socket)
