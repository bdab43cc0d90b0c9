"""Servers that never send lifespan: daphne (Django Channels' server, Twisted on asyncio's loop)
and uvicorn ``--lifespan off`` (granian ``--interface asginl`` too). GracefulLifespan starts
with the first request and holds the server's stop until the drain is over: what is in flight
at SIGTERM is answered and done, and the process exits 0, as on every other server.
"""

from __future__ import annotations

import contextlib
import signal
import sys

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

from tests.support.polling import wait_until
from tests.support.ports import connect_refused
from tests.support.servers import Server, StartServer

from .test_asgi_drain import Call, drained_totals

PY = sys.executable
DJANGO = "tests.apps.django_app:application"
ASGI = "tests.apps.asgi_app:app"
UVLOOP_DAPHNE = (
    "import asyncio, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from daphne.cli import CommandLineInterface; CommandLineInterface.entrypoint()"
)
DAPHNE_OPTIONS = ["-b", "127.0.0.1", "-p", "{port}", DJANGO]

# (server, loop) → command. daphne has no loop option: uvloop is made asyncio's default
# before daphne makes the loop its reactor runs on.
ROWS: dict[tuple[str, str], list[str]] = {
    ("daphne", "asyncio"): [PY, "-m", "daphne", *DAPHNE_OPTIONS],
    ("daphne", "uvloop"): [PY, "-c", UVLOOP_DAPHNE, *DAPHNE_OPTIONS],
    ("uvicorn --lifespan off", "asyncio"): [PY, "-m", "uvicorn", ASGI, "--port", "{port}",
                                            "--loop", "asyncio", "--lifespan", "off"],
    ("uvicorn --lifespan off", "uvloop"): [PY, "-m", "uvicorn", ASGI, "--port", "{port}",
                                           "--loop", "uvloop", "--lifespan", "off"],
    ("granian --interface asginl", "asyncio"): [PY, "-m", "granian", "--interface", "asginl",
                                                "--loop", "asyncio", "--host", "127.0.0.1",
                                                "--port", "{port}", ASGI],
}  # fmt: skip
#: granian's listener is its Rust side's: it accepts until the worker stops, after the drain.
LISTENS_UNTIL_DRAINED = {"granian --interface asginl"}

IN_FLIGHT = 8
WORK_MS = 2000


def _row_id(row: tuple[str, str]) -> str:
    return f"{row[0]}-{row[1]}".replace(" ", "_").replace("--", "")


def _work_in_flight(server: Server) -> list[Call]:
    """8 slow requests and 8 jobs, each of 2 s, all running."""
    slow = [
        Call("GET", f"{server.url}/slow-recorded?ms={WORK_MS}&id=s{n}") for n in range(IN_FLIGHT)
    ]
    for n in range(IN_FLIGHT):
        response = httpx.post(f"{server.url}/jobs-recorded?ms={WORK_MS}&id=j{n}", timeout=5)
        assert response.status_code == 202
    started = {f"start:s{n}" for n in range(IN_FLIGHT)}
    wait_until(lambda: started <= set(server.events()), 10, "every slow request to start")
    return slow


@pytest.mark.parametrize("row", list(ROWS), ids=_row_id)
def test_requests_and_jobs_in_flight_are_drained(
    start_server: StartServer, row: tuple[str, str]
) -> None:
    server = start_server(ROWS[row], env={"GRACEFUL_DRAIN_TIMEOUT": "8"})
    slow = _work_in_flight(server)

    server.send(signal.SIGTERM)
    if row[0] not in LISTENS_UNTIL_DRAINED:
        wait_until(lambda: connect_refused(server.port), 5, "the listener to close")
        assert not any(call.finished_at for call in slow)  # refused while the work still runs
    status = server.wait_exit(timeout=20)

    responses = [call.result() for call in slow]
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT
    assert all(r.text == f"slept {WORK_MS} ms\n" for r in responses)
    assert sorted(server.jobs()) == sorted(f"j{n}" for n in range(IN_FLIGHT))
    assert status == 0, server.log()
    totals = drained_totals(server.log())
    assert totals["requests"] >= IN_FLIGHT and totals["jobs"] == IN_FLIGHT, server.log()
    assert totals["abandoned"] == 0


def test_bare_daphne_loses_them(start_server: StartServer) -> None:
    # For comparison: daphne cancels every request at SIGTERM and the jobs with the loop.
    server = start_server(ROWS[("daphne", "asyncio")], env={"BARE": "1"})
    slow = _work_in_flight(server)
    server.send(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    for call in slow:
        call.thread.join(10)
    assert not any(call.response is not None for call in slow)
    assert server.jobs() == []


def test_daphne_with_its_signals_left_to_it_drains_jobs_in_its_shutdown(
    start_server: StartServer,
) -> None:
    env = {"GRACEFUL_DRAIN_TIMEOUT": "8", "HANDLE_SIGNALS": "0"}
    server = start_server(ROWS[("daphne", "asyncio")], env=env)
    for n in range(2):
        assert httpx.post(f"{server.url}/jobs-recorded?ms={WORK_MS}&id=j{n}").status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0, server.log()
    assert sorted(server.jobs()) == ["j0", "j1"]
    assert "drain started (shutdown)" in server.log()  # by the reactor's shutdown trigger
    assert "the server sent no lifespan startup" not in server.log()  # no warning


def _closed_with(websocket: ClientConnection) -> int | None:
    """The close code the server sent, waiting for it; None for a connection that was cut
    (the client then reports 1006)."""
    try:
        while True:
            websocket.recv(timeout=15)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def test_daphne_websockets_through_channels_are_closed_by_the_drain(
    start_server: StartServer,
) -> None:
    server = start_server(ROWS[("daphne", "asyncio")], env={"LONG_LIVED_GRACE": "0.5"})
    with contextlib.ExitStack() as stack:
        websockets = [
            stack.enter_context(websocket_connect(f"ws://127.0.0.1:{server.port}/ws"))
            for _ in range(3)
        ]
        for websocket in websockets:
            websocket.send("hello")
            assert websocket.recv(timeout=5) == "hello"

        server.send(signal.SIGTERM)

        codes = [_closed_with(websocket) for websocket in websockets]
    assert codes == [1012] * 3, server.log()  # not None: 1006, cut
    assert server.wait_exit(timeout=20) == 0, server.log()
    assert drained_totals(server.log())["abandoned"] == 0
    assert "closed 3 websockets" in server.log()


def test_a_stop_out_of_reach_is_said_once_at_the_first_request_with_the_fix(
    start_server: StartServer,
) -> None:
    argv = ROWS[("uvicorn --lifespan off", "asyncio")]
    server = start_server(argv, env={"GRACEFUL_DRAIN_TIMEOUT": "8", "HANDLE_SIGNALS": "0"})
    for job in ("j1", "j2"):
        assert httpx.post(f"{server.url}/jobs-recorded?ms=3000&id={job}").status_code == 202
    warning = "the server sent no lifespan startup before this request"
    server.send(signal.SIGTERM)
    server.wait_exit(timeout=20)
    log = server.log()
    assert log.count(warning) == 1, log
    assert "handle_signals=False" in log and "uvicorn --lifespan on" in log
    assert "drain started" not in log  # nothing pretended to drain
