"""Starting server processes, loading them with wrk, and summing up repeated figures.

Every server is a real process on 127.0.0.1, started in a session of its own and stopped by
its PID (and the process group it leads) whatever happens. On a machine with two cores or more
the servers run on one core and the load generator and this runner on another, so the figures
compare the servers, not the scheduler's moods.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import polling
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / ".out"
PY = sys.executable
HOST = "127.0.0.1"
START_TIMEOUT = 30.0

SERVER_CPU: int | None = None
CLIENT_CPU: int | None = None


def pin_cpus() -> str:
    """Put this runner (and the load generator it starts) on one core, servers on another."""
    global SERVER_CPU, CLIENT_CPU
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return f"not pinned ({len(cpus)} core(s) usable)"
    CLIENT_CPU, SERVER_CPU = cpus[0], cpus[1]
    os.sched_setaffinity(0, {CLIENT_CPU})
    return f"server on core {SERVER_CPU}; load generator and runner on core {CLIENT_CPU}"


def on_server_cpu(argv: Sequence[str]) -> list[str]:
    if SERVER_CPU is None:
        return list(argv)
    return ["taskset", "-c", str(SERVER_CPU), *argv]


def raise_open_files(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (children inherit it); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise it
            return wanted
        wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Polled every 5 ms: a figure must not wait on the poll."""
    polling.wait_until(predicate, timeout, what, interval=0.005)


# -- the servers --------------------------------------------------------------------------


#: How each server runs a bench app: aiohttp its own ``run_app``; the ASGI app under uvicorn
#: or hypercorn from their command lines, as users start them. The event loop and HTTP parser
#: are named, not left to ``auto``: what uvicorn picks depends on what else is installed.
#: ``-uvloop`` is the same server on uvloop (uvicorn also with httptools, as
#: ``uvicorn[standard]`` installs it).
SERVERS = ("aiohttp", "aiohttp-uvloop", "uvicorn", "uvicorn-uvloop", "hypercorn")


def server_command(server: str, port: int) -> list[str]:
    if server == "aiohttp":
        return [PY, "-m", "bench.aiohttp_app"]
    if server == "aiohttp-uvloop":
        return [PY, "-m", "bench.aiohttp_app", "uvloop"]
    if server in ("uvicorn", "uvicorn-uvloop"):
        loop, http = ("uvloop", "httptools") if server == "uvicorn-uvloop" else ("asyncio", "h11")
        return [
            PY, "-m", "uvicorn", "bench.asgi_app:app", "--host", HOST, "--port", str(port),
            "--loop", loop, "--http", http, "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    if server == "hypercorn":
        # One process (-w 0): with worker processes the arbiter holds its own copy of the
        # listening socket until every worker has gone, with or without the library.
        return [PY, "-m", "hypercorn", "-w", "0", "bench.asgi_app:app", "--bind", f"{HOST}:{port}"]
    raise ValueError(f"unknown server {server!r}")


@dataclass
class Server:
    """One bench app in a process of its own."""

    server: str
    graceful: bool
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    done_path: Path
    exited_at: float | None = field(default=None)
    variant: str = ""

    @property
    def label(self) -> str:
        return f"{self.server} {self.variant or ('+ graceful_web' if self.graceful else 'bare')}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def done_times(self) -> list[tuple[float, str]]:
        if not self.done_path.exists():
            return []
        rows = []
        for line in self.done_path.read_text().splitlines():
            stamp, what = line.split(" ", 1)
            rows.append((float(stamp), what))
        return rows

    def log_time(self, text: str) -> float | None:
        """The monotonic stamp of the first log line containing ``text``."""
        for line in self.log().splitlines():
            if text in line:
                match = re.match(r"(\d+\.\d+) ", line)
                if match:
                    return float(match.group(1))
        return None

    def wait_exit(self, timeout: float) -> int:
        """Waits for the exit and notes its moment to the tenth of a millisecond:
        ``Popen.wait(timeout=)`` polls, every 50 ms at the end, which would round each exit
        figure up to the next poll."""
        if self.proc.returncode is None and self.exited_at is None:
            exited = _wait_for_exit(self.proc.pid, timeout)
            if exited is None:
                raise subprocess.TimeoutExpired(self.proc.args, timeout)
            self.exited_at = exited
        code = self.proc.wait(timeout=timeout)
        if self.exited_at is None:
            self.exited_at = time.monotonic()
        return code

    def stop(self) -> None:
        """Kill it by PID (its process group) unless it has exited already."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


_counter = 0


def start_server(
    server: str, graceful: bool, env: dict[str, str] | None = None, variant: str = ""
) -> Server:
    global _counter
    _counter += 1
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    kind = variant.replace(" ", "-") or ("graceful" if graceful else "bare")
    name = f"{_counter:03d}-{server}-{kind}"
    log_path = OUT / f"{name}.log"
    done_path = OUT / f"{name}.done"
    done_path.unlink(missing_ok=True)
    full_env = {
        **os.environ,
        "HOST": HOST,
        "PORT": str(port),
        "GRACEFUL": "1" if graceful else "0",
        "DONE_FILE": str(done_path),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            on_server_cpu(server_command(server, port)),
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Server(server, graceful, proc, port, log_path, done_path, variant=variant)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{started.label} exited with {proc.returncode}:\n{started.log()}"
                )
            try:
                return http_get(port, "/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, START_TIMEOUT, f"{started.label} to answer /healthz")
    except BaseException:
        started.stop()
        raise
    return started


@contextlib.contextmanager
def running(
    server: str, graceful: bool, env: dict[str, str] | None = None, variant: str = ""
) -> Iterator[Server]:
    started = start_server(server, graceful, env, variant)
    try:
        yield started
    finally:
        started.stop()


# -- wrk ------------------------------------------------------------------------------------

WRK_SCRIPT = ROOT / "bench" / "wrk_report.lua"


@dataclass(frozen=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(port: int, path: str, seconds: float, connections: int) -> LoadResult:
    """One bounded wrk run (one thread, ``connections`` keep-alive connections)."""
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(WRK_SCRIPT), f"http://{HOST}:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    match = re.search(r"^RESULT (.*)$", done.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    fields = dict(part.split("=") for part in match.group(1).split())
    seconds_run = int(fields["duration_us"]) / 1e6
    errors = sum(int(fields[key]) for key in fields if key.startswith("errors_"))
    return LoadResult(
        requests_per_s=int(fields["requests"]) / seconds_run,
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
        errors=errors,
    )


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk (unknown version)"


# -- figures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, digits: int = 2, unit: str = "") -> str:
        fmt = f"{{:.{digits}f}}"
        return (
            f"{fmt.format(self.median)}{unit} "
            f"({fmt.format(self.low)}-{fmt.format(self.high)}, n={self.count})"
        )


def _wait_for_exit(pid: int, timeout: float) -> float | None:
    """The monotonic time at which child ``pid`` exited, woken by its pidfd the moment it does
    (it stays a zombie, still ours to reap); None after ``timeout``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return time.monotonic()  # already reaped
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return time.monotonic() if readable else None
    finally:
        os.close(pidfd)


def child_json(argv: Sequence[str], timeout: float) -> Any:
    """Runs a measuring child (``python -m bench.X ...``) and reads the JSON of its last line."""
    done = subprocess.run(
        list(argv), cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
