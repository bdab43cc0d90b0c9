"""GracefulLifespan under real ASGI servers, stopped by real signals.

The behaviours run on uvicorn with its default loop (uvloop where installed); every other
server and loop runs the same drain scenario in tests/servers/test_servers_and_loops.py.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websocket_connect

from graceful_web import EXIT_ABANDONED
from tests.support.polling import wait_until
from tests.support.ports import connect_refused
from tests.support.servers import Server, StartServer

PY = sys.executable
APP = "tests.apps.asgi_app:app"

# Every other server and loop: tests/servers/test_servers_and_loops.py.
UVICORN = [PY, "-m", "uvicorn", APP, "--port", "{port}"]
HYPERCORN = [PY, "-m", "hypercorn", APP, "--bind", "127.0.0.1:{port}", "--graceful-timeout", "10"]


@dataclass
class Call:
    """An HTTP request made in a thread, so the test can signal the server meanwhile."""

    method: str
    url: str
    response: httpx.Response | None = None
    error: BaseException | None = None
    finished_at: float | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.response = httpx.request(self.method, self.url, timeout=30)
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def result(self, timeout: float = 30.0) -> httpx.Response:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.method} {self.url} still waiting"
        assert self.response is not None, f"{self.method} {self.url} failed: {self.error!r}"
        return self.response


def events_contain(server: Server, *lines: str) -> bool:
    events = server.events()
    return all(line in events for line in lines)


DRAIN_FINISHED = re.compile(
    r"drained (?P<requests>\d+) requests and (?P<jobs>\d+) jobs \((?P<failed>\d+) failed\), "
    r"refused \d+ jobs, abandoned (?P<abandoned>\d+)"
)


def drained_totals(log: str) -> dict[str, int]:
    totals = {"requests": 0, "jobs": 0, "failed": 0, "abandoned": 0}
    for match in DRAIN_FINISHED.finditer(log):
        for key in totals:
            totals[key] += int(match[key])
    return totals


def start_asgi(
    start_server: StartServer, argv: list[str], timeout: float = 8, **env: str
) -> Server:
    return start_server(argv, env={"GRACEFUL_DRAIN_TIMEOUT": str(timeout), **env})


def test_inner_lifespan_and_its_state_keep_working(start_server: StartServer) -> None:
    server = start_asgi(start_server, UVICORN)
    assert httpx.get(f"{server.url}/state").json() == {"db": "connected"}
    assert server.events() == ["inner-startup"]
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.events() == ["inner-startup", "inner-shutdown"]


def test_an_app_without_lifespan_support_is_served_and_drained(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN, TEST_APP="bare")
    slow = Call("GET", f"{server.url}/slow")
    wait_until(lambda: events_contain(server, "start:bare"), 10, "the slow request in flight")
    server.send(signal.SIGTERM)
    assert slow.result().json() == {"path": "/slow"}
    assert server.wait_exit() == 0
    assert "drained 1 requests and 0 jobs" in server.log()


def test_inner_startup_failure_is_reported_not_swallowed(start_server: StartServer) -> None:
    server = start_server(UVICORN, env={"TEST_APP": "startup_fails"}, ready_path=None)
    exit_code = server.wait_exit(timeout=20)
    assert exit_code != 0
    assert "the database is unreachable" in server.log()
    assert "Application startup failed" in server.log()


def test_readiness_turns_503_and_responses_close_during_the_pre_stop_delay(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN, GRACEFUL_PRE_STOP_DELAY="1.5")
    ready = httpx.get(f"{server.url}/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    server.send(signal.SIGTERM)
    wait_until(
        lambda: httpx.get(f"{server.url}/readyz").status_code == 503, 1, "readiness to turn 503"
    )
    draining = httpx.get(f"{server.url}/readyz")
    assert draining.text == "draining\n" and draining.headers["cache-control"] == "no-store"
    # Still serving during the pre-stop delay, but no connection is kept for reuse.
    served = httpx.get(f"{server.url}/fast")
    assert served.status_code == 200 and served.headers["connection"] == "close"
    assert not connect_refused(server.port)
    wait_until(lambda: connect_refused(server.port), 5, "the listener to close after the delay")
    assert server.wait_exit() == 0


def test_server_sent_events_end_politely_when_the_drain_starts(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN)
    lines: list[str] = []
    with httpx.stream("GET", f"{server.url}/events", timeout=10) as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if line == "data: tick 1":
                server.send(signal.SIGTERM)
    assert "event: bye" in lines  # the stream ended by itself, after the goodbye
    assert server.wait_exit() == 0
    assert "abandoned 0" in server.log()


@pytest.mark.parametrize(
    ("server_name", "close_code"), [("uvicorn", None), ("hypercorn", None), ("uvicorn", "1001")]
)
def test_websockets_are_closed_with_1012_after_the_grace(
    start_server: StartServer, server_name: str, close_code: str | None
) -> None:
    settings = {"GRACEFUL_WEBSOCKET_CLOSE_CODE": close_code} if close_code else {}
    server = start_asgi(
        start_server,
        UVICORN if server_name == "uvicorn" else HYPERCORN,
        GRACEFUL_LONG_LIVED_GRACE="0.5",
        **settings,
    )
    with websocket_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as websocket:
        assert websocket.recv(timeout=5) == "tick"
        server.send(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                websocket.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == int(close_code or 1012)
    assert server.wait_exit() == 0
    assert events_contain(server, "ws-open", "ws-closed")
    assert "closed 1 websockets, ended 0 streams" in server.log()


def test_work_still_running_at_the_deadline_is_abandoned_reported_and_exits_75(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN, timeout=1.5)
    slow = Call("GET", f"{server.url}/slow-recorded?ms=60000&id=stuck")
    assert httpx.post(f"{server.url}/jobs-recorded?ms=60000&id=late").status_code == 202
    assert httpx.post(f"{server.url}/jobs-recorded?ms=200&id=quick").status_code == 202
    wait_until(lambda: events_contain(server, "start:stuck"), 10, "the slow request")
    server.send(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == EXIT_ABANDONED
    assert server.jobs() == ["quick"]
    log = server.log()
    assert "abandoned job 'job-late' after" in log
    assert "abandoned request 'GET /slow-recorded' after" in log
    assert events_contain(server, "abandoned:job:job-late", "abandoned:request:GET /slow-recorded")
    slow.thread.join(10)
    assert slow.response is None or slow.response.status_code >= 500


def test_a_second_signal_forces_exit_at_once(start_server: StartServer) -> None:
    server = start_asgi(start_server, UVICORN, timeout=30)
    assert httpx.post(f"{server.url}/jobs-recorded?ms=60000&id=long").status_code == 202
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 128 + signal.SIGTERM
    assert "second signal (SIGTERM)" in server.log()
    assert "abandoned job 'job-long'" in server.log()
    assert server.jobs() == []


def test_ctrl_c_drains_like_sigterm(start_server: StartServer) -> None:
    server = start_asgi(start_server, UVICORN)
    assert httpx.post(f"{server.url}/jobs-recorded?ms=1000&id=c1").status_code == 202
    server.send(signal.SIGINT)
    assert server.wait_exit() == 0
    assert server.jobs() == ["c1"]
    assert "drain started (SIGINT)" in server.log()


def test_follow_up_work_of_a_request_in_flight_is_accepted_during_the_drain(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN)
    call = Call("GET", f"{server.url}/spawn-after?ms=800&id=follow")
    wait_until(lambda: events_contain(server, "start:follow"), 10, "the request in flight")
    server.send(signal.SIGTERM)
    assert call.result().text == "spawned\n"
    assert server.wait_exit() == 0
    assert server.jobs() == ["follow"]


def test_a_spawn_from_outside_any_request_during_the_drain_is_refused_loudly(
    start_server: StartServer,
) -> None:
    server = start_asgi(start_server, UVICORN, OUTSIDER="1")
    # Something to drain, so the refusal happens while the drain still runs.
    assert httpx.post(f"{server.url}/jobs-recorded?ms=800&id=keep").status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    refusals = [line for line in server.events() if line.startswith("outsider-refused")]
    assert len(refusals) == 1 and "shutting down" in refusals[0]
    assert "outsider-accepted" not in server.jobs()
    assert "refused 1 jobs" in server.log()


def test_unprotected_tasks_are_still_cancelled(start_server: StartServer) -> None:
    server = start_asgi(start_server, UVICORN)
    assert httpx.post(f"{server.url}/unprotected?ms=30000&id=u1").status_code == 202
    assert httpx.post(f"{server.url}/jobs-recorded?ms=500&id=p1").status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["p1"]
    assert "cancelled:u1" in server.events()


def test_fastapi_background_tasks_are_drained(start_server: StartServer) -> None:
    server = start_server(
        [PY, "-m", "demo_services.asgi_service"],
        env={"APP": "fastapi", "GRACEFUL_DRAIN_TIMEOUT": "8"},
    )
    response = httpx.post(f"{server.url}/background?ms=1500&id=fa1")
    assert response.status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["fa1"]
