"""Child processes started in a session of their own, logged to a file and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from .polling import wait_until


def spawn(
    command: Sequence[str],
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` leading a process group of its own, stdout and stderr into ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def wait_answering(
    proc: subprocess.Popen[bytes],
    url: str,
    timeout: float,
    what: str,
    log: Callable[[], str],
    name: str = "server",
) -> None:
    """Poll ``url`` until it answers 200; fail at once, with the log, if ``proc`` exits first."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{log()}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, what)
