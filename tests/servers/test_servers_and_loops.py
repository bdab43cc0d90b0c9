"""Every server on every event loop it runs on drains as on asyncio.

Each row: a slow request and protected jobs are in flight when SIGTERM arrives; the client
gets its full response, every job its record, new connections are refused while the work is
still running, and the process exits 0. With GRACEFUL_MATRIX_FIGURES=path, each row appends
its figures (signal → refused, signal → exit) to that file as a JSON line: the table in
docs/servers/index.md is written from one such run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.ports import connect_refused
from tests.support.servers import Server, StartServer

from .test_asgi_drain import Call, drained_totals, events_contain

PY = sys.executable
ASGI = "tests.apps.asgi_app:app"
AIOHTTP = "tests.apps.aiohttp_app"


def _hypercorn(*options: str) -> list[str]:
    return [PY, "-m", "hypercorn", *options, ASGI, "--bind", "127.0.0.1:{port}",
            "--graceful-timeout", "10"]  # fmt: skip


def _granian(loop: str) -> list[str]:
    return [PY, "-m", "granian", "--interface", "asgi", "--loop", loop, "--host", "127.0.0.1",
            "--port", "{port}", ASGI]  # fmt: skip


def _gunicorn(worker: str, app: str) -> list[str]:
    return [PY, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:{port}", "--workers", "1",
            "--graceful-timeout", "30", app]  # fmt: skip


# (server, loop) → command. The loop is named in every row, never left to a server's "auto".
ASGI_ROWS: dict[tuple[str, str], list[str]] = {
    ("uvicorn", "asyncio"): [PY, "-m", "uvicorn", ASGI, "--port", "{port}", "--loop", "asyncio"],
    ("uvicorn", "uvloop"): [PY, "-m", "uvicorn", ASGI, "--port", "{port}", "--loop", "uvloop",
                            "--http", "httptools"],
    ("uvicorn --workers 2", "uvloop"): [PY, "-m", "uvicorn", ASGI, "--port", "{port}",
                                        "--loop", "uvloop", "--workers", "2"],
    ("uvicorn.run()", "uvloop"): [PY, "-m", "tests.apps.asgi_app"],
    ("hypercorn -w 0", "asyncio"): _hypercorn("-w", "0"),
    ("hypercorn -w 0", "uvloop"): _hypercorn("-w", "0", "-k", "uvloop"),
    ("hypercorn -w 0", "trio"): _hypercorn("-w", "0", "-k", "trio"),
    ("hypercorn", "asyncio"): _hypercorn(),
    ("hypercorn", "uvloop"): _hypercorn("-k", "uvloop"),
    ("hypercorn", "trio"): _hypercorn("-k", "trio"),
    ("gunicorn UvicornWorker", "uvloop"): _gunicorn("uvicorn_worker.UvicornWorker", ASGI),
    ("gunicorn UvicornH11Worker", "asyncio"): _gunicorn("uvicorn_worker.UvicornH11Worker", ASGI),
    ("granian", "asyncio"): _granian("asyncio"),
    ("granian", "uvloop"): _granian("uvloop"),
    ("granian", "rloop"): _granian("rloop"),
}  # fmt: skip

AIOHTTP_ROWS: dict[tuple[str, str], tuple[list[str] | str, dict[str, str]]] = {
    ("aiohttp run_app", "asyncio"): (AIOHTTP, {"LOOP": "asyncio"}),
    ("aiohttp run_app", "uvloop"): (AIOHTTP, {"LOOP": "uvloop"}),
    ("aiohttp AppRunner", "uvloop"): (AIOHTTP, {"LOOP": "uvloop", "MODE": "runner"}),
    ("gunicorn GunicornWebWorker", "asyncio"): (
        _gunicorn("aiohttp.GunicornWebWorker", "tests.apps.aiohttp_app:build()"), {}),
    ("gunicorn GunicornUVLoopWebWorker", "uvloop"): (
        _gunicorn("aiohttp.GunicornUVLoopWebWorker", "tests.apps.aiohttp_app:build()"), {}),
}  # fmt: skip

# Multi-process servers whose parent holds the listening socket until its workers are gone.
PARENT_KEEPS_LISTENER = {"uvicorn --workers 2", "hypercorn"}


def _row_id(row: tuple[str, str]) -> str:
    return f"{row[0]}-{row[1]}".replace(" ", "_").replace("()", "")


def _signal_and_measure(server: Server) -> tuple[float, float, int]:
    """SIGTERM; seconds to the listener refusing connections, seconds to exit, exit status."""
    server.send(signal.SIGTERM)
    assert server.signalled_at is not None
    wait_until(lambda: connect_refused(server.port), 8, "the listener to close")
    refused = time.monotonic() - server.signalled_at
    status = server.wait_exit(timeout=20)
    return refused, time.monotonic() - server.signalled_at, status


def _record(row: tuple[str, str], refused: float, exited: float) -> None:
    path = os.environ.get("GRACEFUL_MATRIX_FIGURES")
    if not path:
        return
    figures = {"server": row[0], "loop": row[1], "python": sys.version.split()[0],
               "refused_ms": round(refused * 1000, 1), "exit_s": round(exited, 2)}  # fmt: skip
    with open(path, "a") as out:
        out.write(json.dumps(figures) + "\n")


@pytest.mark.parametrize("row", list(ASGI_ROWS), ids=_row_id)
def test_asgi_server_drains_on_its_loop(start_server: StartServer, row: tuple[str, str]) -> None:
    server = start_server(ASGI_ROWS[row], env={"GRACEFUL_DRAIN_TIMEOUT": "8"})
    slow = Call("GET", f"{server.url}/slow-recorded?ms=2000&id=s1")
    for job in ("j1", "j2"):
        assert httpx.post(f"{server.url}/jobs-recorded?ms=2500&id={job}").status_code == 202
    assert httpx.post(f"{server.url}/background-recorded?ms=2000&id=b1").status_code == 202
    wait_until(lambda: events_contain(server, "start:s1", "background-start:b1"), 10, "work")

    refused, exited, status = _signal_and_measure(server)

    response = slow.result()
    assert response.status_code == 200 and response.text == "slept 2000 ms\n"
    assert sorted(server.jobs()) == ["b1", "j1", "j2"]
    assert status == 0, server.log()
    assert drained_totals(server.log()) == {"requests": 2, "jobs": 2, "failed": 0, "abandoned": 0}
    assert "does not offer add_reader()" not in server.log()  # no fallback warning
    if row[0] not in PARENT_KEEPS_LISTENER:
        assert slow.finished_at is not None
        assert server.signalled_at is not None and refused < slow.finished_at - server.signalled_at
    _record(row, refused, exited)


@pytest.mark.parametrize("row", list(AIOHTTP_ROWS), ids=_row_id)
def test_aiohttp_server_drains_on_its_loop(
    start_server: StartServer, row: tuple[str, str]
) -> None:
    argv, env = AIOHTTP_ROWS[row]
    server = start_server(argv, env={"GRACEFUL_DRAIN_TIMEOUT": "8", **env})
    slow = Call("GET", f"{server.url}/slow?ms=2000")
    for job in ("j1", "j2"):
        assert httpx.post(f"{server.url}/jobs?ms=2500&id={job}").status_code == 202
    server.wait_in_flight(requests=1, jobs=2)

    refused, exited, status = _signal_and_measure(server)

    response = slow.result()
    assert response.status_code == 200 and response.text == "slept 2000 ms\n"
    assert response.headers["connection"] == "close"
    assert sorted(server.jobs()) == ["j1", "j2"]
    assert status == 0, server.log()
    # (The test app's outsider task tries to spawn during the drain: refused jobs vary.)
    assert drained_totals(server.log()) == {"requests": 1, "jobs": 2, "failed": 0, "abandoned": 0}
    assert slow.finished_at is not None and server.signalled_at is not None
    assert refused < slow.finished_at - server.signalled_at
    _record(row, refused, exited)


def test_granian_auto_loop_drains(start_server: StartServer) -> None:
    # granian's default picks rloop, then uvloop, whichever is installed.
    server = start_server(_granian("auto"), env={"GRACEFUL_DRAIN_TIMEOUT": "8"})
    assert httpx.post(f"{server.url}/jobs-recorded?ms=1500&id=auto").status_code == 202
    wait_until(lambda: server.jobs() == [] and server.stats()["jobs"] == 1, 10, "the job")
    refused, _, status = _signal_and_measure(server)
    assert status == 0, server.log()
    assert server.jobs() == ["auto"]
    assert refused < 1.5


# -- a loop graceful_web does not know -----------------------------------------------------


def test_unknown_loop_warns_once_and_leaves_the_servers_stop_alone(
    start_server: StartServer,
) -> None:
    server = start_server(AIOHTTP, env={"GRACEFUL_DRAIN_TIMEOUT": "8", "LOOP": "plain"})
    log = server.log()
    assert log.count("does not offer add_reader()") == 1, log
    assert "under aiohttp 3." in log and "LoopWithoutReaders does not offer add_reader()" in log
    assert "no pre_stop_delay" in log
    slow = Call("GET", f"{server.url}/slow?ms=1500")
    assert httpx.post(f"{server.url}/jobs?ms=2000&id=kept").status_code == 202
    server.wait_in_flight(requests=1, jobs=1)

    refused, _, status = _signal_and_measure(server)

    # aiohttp's own handler stopped the server at once, as without the library; the drain
    # then ran inside aiohttp's shutdown and still lost nothing.
    assert slow.result().status_code == 200
    assert server.jobs() == ["kept"]
    assert status == 0, server.log()
    assert slow.finished_at is not None and server.signalled_at is not None
    assert refused < slow.finished_at - server.signalled_at


# A server that never sends lifespan: tests/servers/test_without_lifespan.py.
