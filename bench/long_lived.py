"""Figure 8: one server process with 10 000 websockets and 10 000 event streams open at SIGTERM.

Client processes (bench/long_lived_client.py) open the connections, each of its share; once all
are open the server gets SIGTERM. Read from the clients: how each websocket was closed (a close
frame with 1012 or 1001, or 1006 when the connection just went) and whether each feed ended
cleanly or was cut; signal -> the last connection told (the latest close frame or clean end),
last one told -> process exit (woken by its pidfd), and the server's peak RSS (its rusage,
reaped here). CLOCK_MONOTONIC is one clock for the machine, so the readings subtract.

The bare servers get the same deadline as graceful_web's: aiohttp's ``run_app`` its
``shutdown_timeout``, uvicorn ``--timeout-graceful-shutdown`` (without it, uvicorn waits for an
endless feed forever). ``python -m bench.long_lived [N]`` runs it alone with N of each.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import time
from dataclasses import asdict, dataclass

from ._harness import PY, ROOT, Server, raise_open_files, running

CONNECTIONS = 10_000  # of each kind
CLIENTS = 4  # client processes, each with its share of both kinds
DRAIN_TIMEOUT = 10.0  # graceful_web's deadline, and the bare servers' own
LONG_LIVED_GRACE = 1.0  # graceful_web's default
OPEN_TIMEOUT = 90.0
CLIENT_SECONDS = OPEN_TIMEOUT + DRAIN_TIMEOUT + 20  # each client stops by itself after this
SERVERS = ("aiohttp", "uvicorn-uvloop")
SPARE_FILES = 100  # the server's own: listener, event loop, logs, pipes
POLITE_WEBSOCKET_CODES = ("1012", "1001")


@dataclass
class Run:
    server: str
    graceful: bool
    opened: int
    websockets: dict[str, int]
    streams: dict[str, int]
    exit_status: int
    signal_to_last_told_s: float | None
    last_told_to_exit_s: float | None
    signal_to_exit_s: float
    peak_rss_mib: float
    signal_to_last_end_s: float | None = None  # told or not

    @property
    def polite_closes(self) -> int:
        return sum(self.websockets.get(code, 0) for code in POLITE_WEBSOCKET_CODES)

    @property
    def abnormal_closes(self) -> int:
        return sum(self.websockets.values()) - self.polite_closes

    @property
    def label(self) -> str:
        return f"{self.server} {'+ graceful_web' if self.graceful else 'bare'}"


def connections_possible(wanted: int = CONNECTIONS) -> int:
    """Of each kind, as many as the open-files limit lets one server process hold (the hard
    limit may be below 2 x 10 000 and only a privileged process raises it)."""
    limit = raise_open_files(2 * wanted + SPARE_FILES)
    return min(wanted, (limit - SPARE_FILES) // 2)


def _exit_with_rusage(server: Server, timeout: float) -> tuple[int, float]:
    """Waits for the exit (woken by its pidfd), reaps it here for its rusage; (exit status, peak
    RSS in MiB)."""
    pidfd = os.pidfd_open(server.proc.pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise RuntimeError(f"{server.label} still running {timeout} s after SIGTERM")
        server.exited_at = time.monotonic()
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(server.proc.pid, 0)
    server.proc.returncode = os.waitstatus_to_exitcode(status)
    return server.proc.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def _read_ready(client: subprocess.Popen[str], limit: float) -> int:
    assert client.stdout is not None
    while time.monotonic() < limit:
        if select.select([client.stdout], [], [], max(0.0, limit - time.monotonic()))[0]:
            line = client.stdout.readline()
            if not line:
                raise RuntimeError("a client process ended before it was ready")
            if line.startswith("ready "):
                return int(line.split()[1])
    raise RuntimeError(f"a client process was not ready within {OPEN_TIMEOUT} s")


def run_once(server_name: str, graceful: bool, n: int, clients: int = CLIENTS) -> Run:
    env = {
        "GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "GRACEFUL_LONG_LIVED_GRACE": str(LONG_LIVED_GRACE),
        "SHUTDOWN_TIMEOUT": str(DRAIN_TIMEOUT),  # aiohttp's run_app
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": str(int(DRAIN_TIMEOUT)),
    }
    shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    with running(server_name, graceful, env) as server:
        procs: list[subprocess.Popen[str]] = []
        try:
            for share in shares:
                argv = [PY, "-m", "bench.long_lived_client", str(server.port), str(share),
                        str(share), str(CLIENT_SECONDS)]  # fmt: skip
                procs.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
                    )
                )
            limit = time.monotonic() + OPEN_TIMEOUT
            opened = sum(_read_ready(proc, limit) for proc in procs)
            signalled = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)
            status, peak_mib = _exit_with_rusage(server, DRAIN_TIMEOUT + 20)
            outcomes = [json.loads(proc.communicate(timeout=CLIENT_SECONDS)[0].splitlines()[-1])
                        for proc in procs]  # fmt: skip
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
    exited = server.exited_at
    assert exited is not None
    websockets: dict[str, int] = {}
    streams: dict[str, int] = {}
    for outcome in outcomes:
        for code, count in outcome["websockets"].items():
            websockets[code] = websockets.get(code, 0) + count
        for how, count in outcome["streams"].items():
            streams[how] = streams.get(how, 0) + count
    told = [outcome["last_polite"] for outcome in outcomes if outcome["last_polite"] is not None]
    last_told = max(told) if told else None
    ends = [outcome["last_end"] for outcome in outcomes if outcome["last_end"] is not None]
    return Run(
        server=server_name,
        graceful=graceful,
        opened=opened,
        websockets=websockets,
        streams=streams,
        exit_status=status,
        signal_to_last_told_s=last_told - signalled if last_told is not None else None,
        last_told_to_exit_s=exited - last_told if last_told is not None else None,
        signal_to_exit_s=exited - signalled,
        peak_rss_mib=peak_mib,
        signal_to_last_end_s=max(ends) - signalled if ends else None,
    )


@dataclass
class LongLivedFigures:
    connections: int  # of each kind
    wanted: int
    files_limit: int
    clients: int
    runs: list[Run]
    measured_alone: str = ""


def measure(servers: tuple[str, ...] = SERVERS, wanted: int = CONNECTIONS) -> LongLivedFigures:
    n = connections_possible(wanted)
    runs = [run_once(server, graceful, n) for server in servers for graceful in (False, True)]
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return LongLivedFigures(n, wanted, limit, CLIENTS, runs)


def show(figures: LongLivedFigures) -> str:
    lines = [f"{figures.connections} websockets and {figures.connections} event streams"]
    for run in figures.runs:
        lines.append(f"{run.label}: {json.dumps(asdict(run))}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from ._harness import pin_cpus

    pin_cpus()
    print(show(measure(wanted=int(sys.argv[1]) if len(sys.argv) > 1 else CONNECTIONS)))
