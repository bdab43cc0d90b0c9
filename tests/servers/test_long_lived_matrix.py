"""Every server with connections that never end by themselves, stopped by SIGTERM, with
graceful_web and bare.

One server process a row holds at once 20 echo websockets, 20 server-sent-event feeds (an event
every 100 ms), 3 finishing streams (an LLM answer over SSE: 20 tokens over 2 s), 3 long polls,
and 8 jobs of 2 s just started (tests/support/long_lived.py; the apps are
tests/apps/longlived_asgi.py and tests/apps/longlived_aiohttp.py). With graceful_web every row
must: close every websocket with 1012, end every feed cleanly, complete every finishing stream,
answer every long poll, finish 8/8 jobs, exit 0, within 2 s of the last job. Bare, each
server's own shutdown timeout is 5 s (uvicorn has none and would wait forever for a feed); the
bare rows assert only what every run shows.

With GRACEFUL_LONG_LIVED_FIGURES=path each run appends its outcome to that file as a JSON line:
``make long-lived-table`` writes docs/long-lived.md's table from one such run.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.support.long_lived import Load, Outcome, hold_and_stop
from tests.support.servers import StartServer

PY = sys.executable
ASGI = "tests.apps.longlived_asgi:app"
AIOHTTP = "tests.apps.longlived_aiohttp"
DRAIN_TIMEOUT = 10
BARE_TIMEOUT = 5  # each server's own shutdown timeout in the bare runs
LAST_JOB_TO_EXIT = 2.0


def _uvicorn(loop: str, ws: str) -> list[str]:
    return [PY, "-m", "uvicorn", ASGI, "--port", "{port}", "--loop", loop, "--ws", ws,
            "--timeout-graceful-shutdown", "{timeout}"]  # fmt: skip


def _hypercorn(worker: str) -> list[str]:
    return [PY, "-m", "hypercorn", "-w", "0", "-k", worker, ASGI, "--bind", "127.0.0.1:{port}",
            "--graceful-timeout", "{timeout}"]  # fmt: skip


def _granian(loop: str) -> list[str]:
    return [PY, "-m", "granian", "--interface", "asgi", "--loop", loop, "--host", "127.0.0.1",
            "--port", "{port}", "--workers-kill-timeout", "{timeout}", ASGI]  # fmt: skip


def _gunicorn(worker: str, app: str) -> list[str]:
    return [PY, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:{port}", "--workers", "1",
            "--graceful-timeout", "{timeout}", app]  # fmt: skip


# (server, loop) → command and environment. "{timeout}" is the server's own shutdown timeout:
# past the drain deadline with graceful_web, BARE_TIMEOUT bare.
ROWS: dict[tuple[str, str], tuple[list[str] | str, dict[str, str]]] = {
    ("uvicorn --ws websockets", "asyncio"): (_uvicorn("asyncio", "websockets"), {}),
    ("uvicorn --ws websockets", "uvloop"): (_uvicorn("uvloop", "websockets"), {}),
    ("uvicorn --ws wsproto", "asyncio"): (_uvicorn("asyncio", "wsproto"), {}),
    ("hypercorn -w 0", "asyncio"): (_hypercorn("asyncio"), {}),
    ("hypercorn -w 0", "uvloop"): (_hypercorn("uvloop"), {}),
    ("hypercorn -w 0", "trio"): (_hypercorn("trio"), {}),
    ("granian", "asyncio"): (_granian("asyncio"), {}),
    ("granian", "uvloop"): (_granian("uvloop"), {}),
    ("gunicorn UvicornH11Worker", "asyncio"): (
        _gunicorn("uvicorn_worker.UvicornH11Worker", ASGI), {}),
    ("gunicorn UvicornWorker", "uvloop"): (_gunicorn("uvicorn_worker.UvicornWorker", ASGI), {}),
    ("aiohttp run_app", "asyncio"): (AIOHTTP, {"LOOP": "asyncio"}),
    ("aiohttp run_app", "uvloop"): (AIOHTTP, {"LOOP": "uvloop"}),
    ("gunicorn GunicornWebWorker", "asyncio"): (
        _gunicorn("aiohttp.GunicornWebWorker", f"{AIOHTTP}:build()"), {}),
    ("daphne", "asyncio"): ([PY, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}",
                             "--application-close-timeout", "{timeout}", ASGI], {}),
}  # fmt: skip
BARE_ROWS = [row for row in ROWS if row[1] == "asyncio"]

# Where a server's outcome differs from the spec, measured: (server, loop) → reason.
KNOWN: dict[tuple[str, str], pytest.MarkDecorator] = {
    ("granian", "uvloop"): pytest.mark.xfail(strict=False, reason=(
        "granian on uvloop: its Rust side races graceful_web's close at the signal: in 8 runs "
        "of 13, 1 to 20 of the 20 websockets ended in 1006 (the rest 1012), all within 0.02 s "
        "of the signal; feeds, finishing streams, long polls, jobs and exit as specified")),
}  # fmt: skip


def _row_id(row: tuple[str, str]) -> str:
    return f"{row[0]}-{row[1]}".replace(" ", "_").replace("--", "")


def _run(
    start_server: StartServer, row: tuple[str, str], graceful: bool
) -> tuple[Outcome, str]:
    argv, env = ROWS[row]
    timeout = str(DRAIN_TIMEOUT * 3 if graceful else BARE_TIMEOUT)
    if isinstance(argv, list):
        argv = [part.replace("{timeout}", timeout) for part in argv]
    env = {**env, "GRACEFUL": "1" if graceful else "0", "SHUTDOWN_TIMEOUT": timeout,
           "GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}  # fmt: skip
    server = start_server(argv, env=env)
    outcome = hold_and_stop(server, Load())
    path = os.environ.get("GRACEFUL_LONG_LIVED_FIGURES")
    if path:
        figures = {"server": row[0], "loop": row[1], "graceful": graceful, **outcome.figures()}
        with open(path, "a") as out:
            out.write(json.dumps(figures) + "\n")
    if not graceful:
        print(f"\n{row} bare: {json.dumps(outcome.figures())}")
    return outcome, server.log()


def _rows_with_known_outcomes() -> list[object]:
    """Every row; one whose measured outcome differs from the spec is expected to fail
    (strictly when it always does: a fix makes it pass and the mark must go), and still runs,
    so its figures are recorded."""
    return [pytest.param(row, marks=KNOWN[row]) if row in KNOWN else row for row in ROWS]


@pytest.mark.parametrize("row", _rows_with_known_outcomes(), ids=_row_id)
def test_with_graceful_web_every_connection_ends_politely(
    start_server: StartServer, row: tuple[str, str]
) -> None:
    outcome, log = _run(start_server, row, graceful=True)
    load = Load()
    seen = f"{json.dumps(outcome.figures())}\n{_tail(log)}"
    assert outcome.tally("websockets") == {"1012": load.websockets}, seen
    assert outcome.tally("feeds") == {"clean": load.feeds}, seen
    assert outcome.tally("finishing") == {"complete": load.finishing}, seen
    assert outcome.tally("polls") == {"200": load.polls}, seen
    assert outcome.jobs_done == load.jobs, seen
    assert outcome.exit_status == 0, seen
    assert outcome.exit_after_last_job is not None
    assert outcome.exit_after_last_job < LAST_JOB_TO_EXIT, seen
    assert "Traceback" not in log, seen


def _tail(log: str, lines: int = 40) -> str:
    """The end of a server's log, its access lines left out."""
    kept = [line for line in log.splitlines() if '" 200' not in line and '" 202' not in line]
    return "\n".join(kept[-lines:])


@pytest.mark.parametrize("row", BARE_ROWS, ids=_row_id)
def test_bare_what_each_server_does(start_server: StartServer, row: tuple[str, str]) -> None:
    outcome, _ = _run(start_server, row, graceful=False)
    # What every bare run shows: no server makes the feeds end cleanly, and nothing is
    # answered faster than its own shutdown timeout lets it.
    assert outcome.tally("feeds").get("clean", 0) < Load().feeds
