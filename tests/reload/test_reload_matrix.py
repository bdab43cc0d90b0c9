"""Every multi-worker server reloaded twice by its own reload signal under load, with
graceful_web and without it (GRACEFUL=0), checked from outside.

Each run: the server with 2 workers on 127.0.0.1 (tests/apps/reload_app.py), steady load of
every kind of tests/reload/_load.py, then twice: a burst of new connections, the reload signal
to the parent, and a wait until the old workers are gone and the new ones answer. Then SIGTERM
to the parent, its exit, the end of the load, and a wait until every accepted job is done or no
process is left to finish it. A request counts for the reloads if it started before that
SIGTERM, for the stop otherwise. With GRACEFUL_RELOAD_FIGURES=path each run appends its figures
to that file as one JSON line (``python -m tests._reload_table`` makes docs/reloads.md's table).

What a run must show is in :func:`check_run`, in one place, so it can be tightened as the
library's drain of connections changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.polling import wait_until
from tests.support.servers import Server, StartServer

from ._load import BURST, FRESH, KEEPALIVE_GET, KEEPALIVE_POST, KINDS, Load, Outcome, Traffic
from ._workers import Workers

PY = sys.executable
ASGI = "tests.apps.reload_app:app"
AIOHTTP = "tests.apps.reload_app:aiohttp_app()"
WORKERS = 2
DRAIN_TIMEOUT = 10  # graceful_web's deadline; every server's own graceful timeout is longer
SERVER_GRACE = "30"
RELOADS = 2
BURST_CLIENTS = 48
BURST_SECONDS = 1.2
# Accepted by each generation of workers before it is told to go: about 1.5 s of steady load.
ORDERS_PER_GENERATION = 30
RELOAD_TIMEOUT = 45.0  # per reload: new workers up, old ones drained, for two workers
EXIT_TIMEOUT = 30.0
JOBS_TIMEOUT = 20.0
TRAFFIC = Traffic()  # _load's steady defaults: about 120 requests/s, 20 of them POSTs
MAX_FAILURES_KEPT = 40
MAX_IDS_KEPT = 20


@dataclass(frozen=True)
class Row:
    """A server as the tests start it; ``{port}`` is replaced by the port."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    reload_signal: signal.Signals = signal.SIGHUP


def _gunicorn(worker: str, app: str) -> tuple[str, ...]:
    return (PY, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:{port}",
            "--workers", str(WORKERS), "--graceful-timeout", SERVER_GRACE, app)  # fmt: skip


# Each server with its loop named, never left to its "auto": uvicorn's and UvicornWorker's
# auto is uvloop with httptools here, granian's would be rloop.
ROWS: dict[str, Row] = {
    "uvicorn --workers 2": Row(
        (PY, "-m", "uvicorn", ASGI, "--host", "127.0.0.1", "--port", "{port}",
         "--workers", str(WORKERS), "--loop", "uvloop", "--http", "httptools", "--no-access-log")
    ),
    "gunicorn UvicornWorker": Row(_gunicorn("uvicorn_worker.UvicornWorker", ASGI)),
    "gunicorn GunicornWebWorker": Row(
        _gunicorn("aiohttp.GunicornWebWorker", AIOHTTP), {"APP": "aiohttp"}
    ),
    "gunicorn GunicornUVLoopWebWorker": Row(
        _gunicorn("aiohttp.GunicornUVLoopWebWorker", AIOHTTP), {"APP": "aiohttp"}
    ),
    "granian --workers 2": Row(
        (PY, "-m", "granian", "--interface", "asgi", "--workers", str(WORKERS), "--loop",
         "uvloop", "--host", "127.0.0.1", "--port", "{port}", ASGI)
    ),
    "hypercorn -w 2": Row(
        (PY, "-m", "hypercorn", "-w", str(WORKERS), "--graceful-timeout", SERVER_GRACE,
         "--bind", "127.0.0.1:{port}", ASGI)
    ),
}  # fmt: skip

# The row whose bare run must lose jobs: proof that the run can see a loss at all. uvicorn's
# workers die of the SIGTERM they re-raise, with every task still running.
MUST_LOSE_BARE = "uvicorn --workers 2"


# -- the one place that says what a run must show ----------------------------------------------

# Jobs graceful_web still loses at the final SIGTERM, by server, with the cause; an entry goes
# once the library covers it. The reloads themselves must lose nothing on every server.
KNOWN_LOSSES_AT_STOP: dict[str, str] = {}


def check_run(figures: dict[str, Any]) -> None:
    for phase in ("reloads", "stop"):
        for kind, tally in figures[phase].items():
            failed = sum(tally["failed"].values())
            assert tally["sent"] == tally["ok"] + failed, f"{phase} {kind}: unaccounted requests"
    for kind in (FRESH, KEEPALIVE_GET, KEEPALIVE_POST, BURST):
        assert figures["reloads"][kind]["sent"] > 0, f"no {kind} request during the reloads"
    jobs = figures["jobs"]
    if figures["graceful"]:
        assert jobs["lost_at_reloads"] == 0, f"{jobs['lost_at_reloads']} jobs lost at reloads"
        if figures["server"] not in KNOWN_LOSSES_AT_STOP:
            assert jobs["lost"] == 0, f"{jobs['lost']} accepted jobs lost at the stop"
        assert figures["exit_status"] == 0
    elif figures["server"] == MUST_LOSE_BARE:
        assert jobs["lost"] > 0, "the bare server lost no job: the run cannot see a loss"


# -- figures -----------------------------------------------------------------------------------


def done_jobs(server: Server) -> dict[str, str]:
    """Order id → pid of the worker that finished its job."""
    done = {}
    for line in server.jobs():
        word, order_id, pid = line.split()
        assert word == "done", line
        done[order_id] = pid
    return done


def failures(outcomes: list[Outcome], signals: list[float]) -> list[list[object]]:
    """The first failed requests: kind, reason, when they started, in seconds from the last
    signal sent before them (negative: before the first), and the order's id for a POST."""
    kept: list[list[object]] = []
    for outcome in sorted(outcomes, key=lambda outcome: outcome.started):
        if outcome.reason is None:
            continue
        earlier = [at for at in signals if at <= outcome.started] or signals[:1]
        since = round(outcome.started - earlier[-1], 3)
        kept.append([outcome.kind, outcome.reason, since, *filter(None, [outcome.order_id])])
        if len(kept) == MAX_FAILURES_KEPT:
            break
    return kept


def by_number(order_id: str) -> tuple[int, str]:
    """o9 before o10."""
    return len(order_id), order_id


def record(figures: dict[str, Any]) -> None:
    path = os.environ.get("GRACEFUL_RELOAD_FIGURES")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(figures) + "\n")


# -- the run -----------------------------------------------------------------------------------


def wait_reloaded(server: Server, workers: Workers, load: Load, retiring: set[int]) -> None:
    """Until every retiring worker is gone and as many new ones are alive and answering."""

    def replaced() -> bool:
        alive = workers.alive()
        return not alive & retiring and len(alive) == WORKERS

    wait_until(replaced, RELOAD_TIMEOUT, f"the old workers {retiring} replaced;\n{server.log()}")
    fresh = workers.alive()

    def serving() -> bool:
        answered = {int(pid) for pid in load.answered_by() if pid.isdigit()}
        return fresh <= answered

    wait_until(serving, 10, f"the new workers {fresh} to answer;\n{server.log()}")


def wait_accepted(load: Load, count: int) -> None:
    wait_until(lambda: len(load.accepted_orders()) >= count, 15, f"{count} orders accepted")


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful_web", "bare"])
@pytest.mark.parametrize("server_name", ROWS, ids=lambda name: name.replace(" ", "_"))
def test_two_reloads_under_load(
    start_server: StartServer, server_name: str, graceful: bool
) -> None:
    row = ROWS[server_name]
    env = {**row.env, "GRACEFUL": "1" if graceful else "0",
           "GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}  # fmt: skip
    began = time.monotonic()
    server = start_server(list(row.command), env=env, ready_path="/readyz", name="reload")
    workers = Workers(server.pid)
    workers.start()
    load = Load("127.0.0.1", server.port, TRAFFIC)
    signals: list[float] = []
    reload_seconds: list[float] = []
    retired: set[int] = set()
    try:
        try:
            wait_until(lambda: len(workers.alive()) == WORKERS, 15, f"two workers;\n{server.log()}")
            load.start()
            for reload in range(RELOADS):
                wait_accepted(load, ORDERS_PER_GENERATION * (reload + 1))
                retiring = workers.alive()
                burst = load.burst(BURST_CLIENTS, BURST_SECONDS)
                burst.wait_begun()
                server.send(row.reload_signal)
                signals.append(time.monotonic())
                wait_reloaded(server, workers, load, retiring)
                reload_seconds.append(time.monotonic() - signals[-1])
                retired |= retiring
                burst.join()
            wait_accepted(load, ORDERS_PER_GENERATION * (RELOADS + 1))
            server.send(signal.SIGTERM)
            stop_at = time.monotonic()
            signals.append(stop_at)
            exit_status = server.wait_exit(EXIT_TIMEOUT)
            stop_seconds = time.monotonic() - stop_at
        finally:
            load.stop()
        # Every accepted job done, or no process left that could still finish one.
        wait_until(
            lambda: load.accepted_orders() <= done_jobs(server).keys() or not workers.alive(),
            JOBS_TIMEOUT,
            "the accepted jobs to be done or their workers gone",
        )
    finally:
        workers.stop()

    outcomes = load.snapshot()
    accepted = load.accepted_orders()
    done = done_jobs(server)
    accepted_by = {o.order_id: o.pid for o in outcomes if o.order_id in accepted}
    lost = accepted - done.keys()
    figures: dict[str, Any] = {
        "test": "reload_matrix",
        "server": server_name,
        "signal": row.reload_signal.name,
        "graceful": graceful,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "reloads": {kind: load.tally(kind, until=stop_at).as_dict() for kind in KINDS},
        "stop": {kind: load.tally(kind, since=stop_at).as_dict() for kind in KINDS},
        "jobs": {
            "accepted": len(accepted),
            "done": len(accepted & done.keys()),
            "lost": len(lost),
            # Lost in a worker a reload retired, or in one the final SIGTERM stopped.
            "lost_at_reloads": sum(int(accepted_by[order] or 0) in retired for order in lost),
            "done_unanswered": len(done.keys() - accepted),  # ran, but the client saw no 202
            "lost_ids": sorted(lost, key=by_number)[:MAX_IDS_KEPT],
            "done_unanswered_ids": sorted(done.keys() - accepted, key=by_number)[:MAX_IDS_KEPT],
        },
        "traffic": {
            name: value.decode() if isinstance(value, bytes) else value
            for name, value in dataclasses.asdict(TRAFFIC).items()
        },
        "burst": {"clients": BURST_CLIENTS, "seconds": BURST_SECONDS},
        "workers": WORKERS,
        "drain_timeout": DRAIN_TIMEOUT,
        "server_grace": int(SERVER_GRACE),
        "reload_s": [round(seconds, 2) for seconds in reload_seconds],
        "stop_s": round(stop_seconds, 2),
        "exit_status": exit_status,
        "known_loss_at_stop": KNOWN_LOSSES_AT_STOP.get(server_name) if graceful else None,
        "run_s": round(time.monotonic() - began, 1),
        "new_connections": dict(load.connections),
        "closed_while_idle": dict(load.closed_while_idle),
        "failures": failures(outcomes, signals),
    }
    record(figures)
    print(f"\n{json.dumps(figures)}")
    check_run(figures)
    if graceful and server_name.startswith("hypercorn"):
        # Its reload stops every worker before starting any: each new worker says so.
        replaced = server.log().count("this hypercorn worker replaces one stopped by a reload")
        assert replaced == 2 * WORKERS, server.log()
