"""Servers whose processes each hold a listener of their own on one port (SO_REUSEPORT), taken
through a reload or a switch under load, inside a network namespace of their own.

    python -m tests.reload._reuseport_runs SCENARIO... --tcp-migrate-req N --workdir DIR

run by tests/reload/_netns.py's ``run_in_new_netns``, which made the namespace; this sets
net.ipv4.tcp_migrate_req there, runs each scenario with graceful_web and bare (GRACEFUL=0), and
prints one JSON line of figures per run. Scenarios:

``granian``     granian --workers 2 (each worker binds the port with SO_REUSEPORT) reloaded
                with SIGHUP while bursts of new connections run across the whole reload
                (``--respawn-interval 1``: each worker's replacement serves 1 s before it
                goes)
``pair``        two ``web.run_app(app, reuse_port=True)`` processes on the port; one gets
                SIGTERM during a burst
``blue_green``  the recipe of docs/reloads.md, for aiohttp and for uvicorn: green started
                under load beside blue, polled until ready, then SIGTERM to blue during a burst

Each run has the steady load of tests/reload/_load.py besides (fresh and kept-alive GETs,
kept-alive POSTs of jobs); after the reload or the switch the load stops, the jobs of the
processes still serving are waited for, and the accepted jobs without a ``done`` line are lost.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx

from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.servers import ROOT

from ._load import KINDS, PID_HEADER, Load, Traffic
from ._netns import TCP_MIGRATE_REQ, emit, prepare
from ._shared_port import Process, start_process
from ._workers import Workers

PY = sys.executable
WORKERS = 2
BURST_CLIENTS = 48
BURST_SECONDS = 1.2
ACROSS_RELOAD_BURST_SECONDS = 0.5  # bursts back to back until the reload is over
# granian starts a worker's replacement, sleeps this long, then stops the worker (3.5 s by
# default). The replacement is up within a second here; shorter keeps the run short.
RESPAWN_INTERVAL = 1.0
# A request that gets no answer counts as failed after this long (a bare aiohttp leaves a
# connection accepted at the stop unanswered until its client gives up).
REQUEST_TIMEOUT = 5.0
ORDERS = 10  # accepted before the reload or the switch, and by the processes after it
RELOAD_TIMEOUT = 45.0
JOBS_TIMEOUT = 10.0
MAX_FAILURES_KEPT = 40

Figures = dict[str, object]


def done_orders(jobs_file: Path) -> set[str]:
    lines = jobs_file.read_text().splitlines() if jobs_file.exists() else []
    return {line.split()[1] for line in lines if line.startswith("done ")}


def accepted_by(load: Load, pids: set[int], since: float = 0.0) -> set[str]:
    return {
        outcome.order_id
        for outcome in load.snapshot()
        if outcome.order_id
        and outcome.reason is None
        and outcome.started >= since
        and outcome.pid is not None
        and int(outcome.pid) in pids
    }


def wait_orders(load: Load, pids: set[int], since: float, what: str) -> None:
    wait_until(lambda: len(accepted_by(load, pids, since)) >= ORDERS, 15, f"{what}'s orders")


@contextmanager
def loaded(port: int) -> Iterator[Load]:
    load = Load("127.0.0.1", port, Traffic(timeout=REQUEST_TIMEOUT))
    load.start()
    try:
        yield load
    finally:
        load.stop()


def wait_serving(port: int, pids: set[int]) -> None:
    """Until each of ``pids`` has answered a GET on a new connection: the kernel spreads new
    connections over the listeners, so a few tries reach every process that listens."""
    answered: set[int] = set()

    def all_answered() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"http://127.0.0.1:{port}/fast", timeout=1)
            answered.add(int(response.headers.get(PID_HEADER, "0")))
        return pids <= answered

    wait_until(all_answered, 20, f"{pids} to answer on port {port}")


def failures(load: Load, signalled: float) -> list[list[object]]:
    """The first failed requests: kind, reason, and when they started, in seconds from the
    signal (negative: before it)."""
    failed = sorted(
        (outcome for outcome in load.snapshot() if outcome.reason is not None),
        key=lambda outcome: outcome.started,
    )
    return [[outcome.kind, outcome.reason, round(outcome.started - signalled, 3)]
            for outcome in failed[:MAX_FAILURES_KEPT]]  # fmt: skip


def figures_of(load: Load, jobs_file: Path, serving: set[int], signalled: float) -> Figures:
    """What the clients saw, and the jobs lost, once the processes still serving are done."""
    of_serving = accepted_by(load, serving)
    wait_until(lambda: of_serving <= done_orders(jobs_file), JOBS_TIMEOUT, "the jobs to end")
    accepted = load.accepted_orders()
    return {
        **{kind: load.tally(kind).as_dict() for kind in KINDS},
        "accepted": len(accepted),
        "lost": len(accepted - done_orders(jobs_file)),
        "failures": failures(load, signalled),
    }


# -- granian --workers 2, SIGHUP -----------------------------------------------------------------


def granian_reload(workdir: Path, graceful: bool) -> Figures:
    port, jobs_file = free_port(), workdir / "jobs.log"
    command = [PY, "-m", "granian", "--interface", "asgi", "--workers", str(WORKERS),
               "--respawn-interval", str(RESPAWN_INTERVAL), "--loop", "uvloop",
               "--host", "127.0.0.1", "--port", str(port), "tests.apps.reload_app:app"]  # fmt: skip
    env = {"GRACEFUL": "1" if graceful else "0", "JOBS_FILE": str(jobs_file),
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log_path = workdir / "granian.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    workers = Workers(server.pid)
    workers.start()
    try:
        wait_until(lambda: len(workers.alive()) == WORKERS, 20, "granian's workers")
        wait_serving(port, workers.alive())
        with loaded(port) as load:
            retiring = workers.alive()
            wait_orders(load, retiring, 0.0, "the first workers")
            server.send_signal(signal.SIGHUP)
            signalled = time.monotonic()

            def replaced() -> bool:
                alive = workers.alive()
                return not alive & retiring and len(alive) == WORKERS

            while not replaced():
                assert time.monotonic() - signalled < RELOAD_TIMEOUT, log_path.read_text()
                load.burst(BURST_CLIENTS, ACROSS_RELOAD_BURST_SECONDS).join()
            reload_seconds = time.monotonic() - signalled
            serving = workers.alive()
            wait_orders(load, serving, signalled, "the new workers")
        figures = figures_of(load, jobs_file, serving, signalled)
        server.send_signal(signal.SIGTERM)
        exit_status = server.wait(30)
    finally:
        workers.stop()
        stop(server)
    return {"server": "granian --workers 2", "signal": "SIGHUP", **figures,
            "exit_status": exit_status, "reload_s": round(reload_seconds, 2)}  # fmt: skip


# -- two single processes on one port --------------------------------------------------------


def switch(workdir: Path, graceful: bool, kind: str, green_under_load: bool) -> Figures:
    """blue serves; green serves beside it (started before the load, or under it and polled
    until ready: the recipe); blue gets SIGTERM during a burst of new connections."""
    port, jobs_file = free_port(), workdir / "jobs.log"
    processes: list[Process] = []

    def start(name: str) -> Process:
        processes.append(start_process(kind, name, port, workdir, jobs_file, graceful))
        return processes[-1]

    try:
        blue = start("blue")
        green = None if green_under_load else start("green")
        for process in processes:
            process.wait_ready()
        with loaded(port) as load:
            # Each kept-alive client stays with the process its connection reached: with two
            # from the start, blue may have none of the POSTs.
            wait_orders(load, {process.pid for process in processes}, 0.0, "the first")
            if green is None:
                green = start("green")
                green.wait_ready()
            burst = load.burst(BURST_CLIENTS, BURST_SECONDS)
            burst.wait_begun()
            blue.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            exit_status = blue.wait_exit()
            stop_seconds = time.monotonic() - signalled
            burst.join()
            wait_orders(load, {green.pid}, signalled, "green")
        figures = figures_of(load, jobs_file, {green.pid}, signalled)
        green.proc.send_signal(signal.SIGTERM)
        green.wait_exit()
    finally:
        for process in processes:
            stop(process.proc)
    return {"server": kind, "signal": "SIGTERM", **figures, "exit_status": exit_status,
            "stop_s": round(stop_seconds, 2)}  # fmt: skip


# The kernel's own counts of this namespace (/proc/net/netstat, TcpExt) that say where a
# connection was cut: a socket closed with a request unread in it (TCPAbortOnClose), requests
# of a closing listener moved to another one or not (TCPMigrateReq*), a full accept queue.
KERNEL_COUNTS = ("TCPAbortOnClose", "TCPAbortOnData", "TCPMigrateReqSuccess",
                 "TCPMigrateReqFailure", "ListenOverflows", "ListenDrops")  # fmt: skip


def kernel_counts() -> dict[str, int]:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    counts: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            counts.update(zip(names.split()[1:], map(int, values.split()[1:]), strict=True))
    return {name: counts.get(name, 0) for name in KERNEL_COUNTS}


Run = Callable[[Path, bool], Figures]
SCENARIOS: dict[str, list[Run]] = {
    "granian": [granian_reload],
    "pair": [partial(switch, kind="aiohttp", green_under_load=False)],
    "blue_green": [
        partial(switch, kind="aiohttp", green_under_load=True),
        partial(switch, kind="uvicorn", green_under_load=True),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="+", choices=SCENARIOS)
    parser.add_argument("--tcp-migrate-req", type=int, choices=(0, 1), required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    options = parser.parse_args()
    prepare(options.tcp_migrate_req)
    for scenario in options.scenarios:
        for number, run in enumerate(SCENARIOS[scenario]):
            for graceful in (True, False):
                began, counted = time.monotonic(), kernel_counts()
                workdir = options.workdir / f"{scenario}-{number}-{'on' if graceful else 'off'}"
                workdir.mkdir(parents=True)
                figures = run(workdir, graceful)
                kernel = {name: count - counted[name] for name, count in kernel_counts().items()}
                emit({"scenario": scenario, "graceful_web": graceful,
                      "tcp_migrate_req": int(TCP_MIGRATE_REQ.read_text()), **figures,
                      "kernel": kernel, "seconds": round(time.monotonic() - began, 1)})  # fmt: skip


if __name__ == "__main__":
    main()
