"""Faults, bad input and signals at odd moments: real server processes, real signals, what the
clients saw, what the jobs wrote, and how long the process took to exit.

Cases already proven in tests/servers/test_aiohttp_drain.py are not repeated here: a failing job
(test_failing_job_is_logged_with_traceback_and_others_still_drain), a second SIGTERM
(test_second_signal_cancels_everything_and_exits_now), a malformed deadline in the environment
(test_invalid_deadline_in_environment_fails_at_startup) and readiness while serving
(test_readiness_says_ready_and_nothing_else).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from dataclasses import dataclass

import httpx
import pytest

import graceful_web
import graceful_web.aiohttp
from tests.support.clients import post_job, slow_request
from tests.support.ports import connect_refused
from tests.support.servers import Server, StartServer

#: Whatever clients and jobs do, the process is gone by the deadline plus this (the hard exit
#: comes 0.75 s after the deadline).
EXIT_BOUND_AFTER_DEADLINE = 1.0


@dataclass(frozen=True)
class Service:
    name: str
    module: str  # ``python -m module``: the demo contract plus the test-only routes


AIOHTTP = Service("aiohttp", "tests.apps.aiohttp_app")  # web.run_app
UVICORN = Service("uvicorn", "tests.apps.asgi_app")  # GracefulLifespan(Starlette) on uvicorn.run
SERVICES = [AIOHTTP, UVICORN]


@pytest.fixture(params=SERVICES, ids=lambda service: service.name)
def service(request: pytest.FixtureRequest) -> Service:
    return request.param  # type: ignore[no-any-return]


def start(start_server: StartServer, service: Service, **env: str) -> Server:
    return start_server(service.module, env=env, name=service.name)


def exit_status_by_the_bound(server: Server, deadline: float) -> int:
    """The exit status, after checking the process was gone by deadline + 1 s."""
    status = server.wait_exit(timeout=deadline + 20)
    assert server.signalled_at is not None
    took = time.monotonic() - server.signalled_at
    assert took <= deadline + EXIT_BOUND_AFTER_DEADLINE, (
        f"exited {took:.2f} s after the signal, past the deadline ({deadline:g} s) + "
        f"{EXIT_BOUND_AFTER_DEADLINE:g} s\n{server.log()}"
    )
    return status


def connect(server: Server, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    while len(received) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def raw_exchange(server: Server, request: bytes) -> bytes:
    sock = connect(server)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may answer and close before it has read it all
        return read_until_closed(sock)
    finally:
        sock.close()


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    return response.split(b"\r\n\r\n", 1)[1]


# -- 1. slow clients ------------------------------------------------------------------------


def test_half_sent_request_is_closed_at_the_signal_and_holds_nothing(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="2")
    slowloris = connect(server)
    try:
        # Headers never finished: not a request yet, so nothing to drain for it.
        slowloris.sendall(b"GET /slow?ms=10 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Never-Ends: ")
        pending = slow_request(server, 800)
        server.wait_in_flight(requests=1)
        server.send(signal.SIGTERM)
        assert read_until_closed(slowloris) == b""
        assert pending.result().status_code == 200
    finally:
        slowloris.close()
    assert exit_status_by_the_bound(server, 2) == 0
    log = server.log()
    assert "drained 1 requests and 0 jobs (0 failed)" in log
    assert "abandoned 0" in log


def test_slow_upload_is_abandoned_at_the_deadline(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="1.5")
    uploader = connect(server)
    try:
        # The handler reads the body, which comes 10 of 1000 bytes and then never more.
        uploader.sendall(
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
        )
        server.wait_in_flight(requests=1)
        post_job(server, "beside-the-upload", 300)
        server.send(signal.SIGTERM)
        status = exit_status_by_the_bound(server, 1.5)
        assert not read_until_closed(uploader).startswith(b"HTTP/1.1 200")
    finally:
        uploader.close()
    assert status == graceful_web.EXIT_ABANDONED
    assert server.jobs() == ["beside-the-upload"]
    assert "abandoned:request:POST /upload" in server.events()
    assert "abandoned request 'POST /upload' after 1." in server.log()


def test_client_that_never_reads_its_response_is_abandoned_at_the_deadline(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="1.5")
    # A small receive buffer, never read: the 64 MiB response fills the socket buffers and
    # the handler waits on its writes.
    reader = connect(server, receive_buffer=4096)
    try:
        reader.sendall(b"GET /big?mb=64 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        server.wait_in_flight(requests=1)
        post_job(server, "beside-the-reader", 300)
        server.send(signal.SIGTERM)
        status = exit_status_by_the_bound(server, 1.5)
    finally:
        reader.close()
    # uvicorn would wait for that connection without end (its response can never be
    # flushed): the ASGI adapter shuts the app down itself and exits with the drain's status.
    assert status == graceful_web.EXIT_ABANDONED
    assert server.jobs() == ["beside-the-reader"]
    assert "abandoned:request:GET /big" in server.events()
    assert "abandoned request 'GET /big' after 1." in server.log()


def test_client_leaving_mid_request_during_the_drain_loses_no_job(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="3")
    client = connect(server)
    try:
        client.sendall(
            b"GET /spawn-then-slow?id=left&job_ms=1000&ms=1500 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        server.wait_in_flight(requests=1, jobs=1)
        server.send(signal.SIGTERM)
        server.wait_for_log("drain started (SIGTERM)")
    finally:
        client.close()  # gone before its answer, with its job still running
    assert exit_status_by_the_bound(server, 3) == 0
    assert server.jobs() == ["left"]
    assert "handler-finished:left" in server.events()  # neither server cancels the handler
    assert "abandoned 0" in server.log()


# -- 2. misbehaving work ----------------------------------------------------------------------


def test_job_swallowing_cancellation_cannot_hold_the_exit_and_every_job_is_named(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="1")
    assert httpx.post(f"{server.url}/misbehaving?kind=stubborn&id=stubborn", timeout=5).is_success
    assert httpx.post(f"{server.url}/failing?id=raiser&ms=600", timeout=5).status_code == 202
    post_job(server, "well-behaved", 600)
    server.wait_in_flight(jobs=1)  # the stubborn one, at least
    server.send(signal.SIGTERM)
    status = exit_status_by_the_bound(server, 1)
    assert server.jobs() == ["well-behaved"]
    events = server.events()
    assert "ignored-cancel:stubborn" in events  # it was cancelled, and kept going
    assert "abandoned:job:stubborn" in events  # on_abandoned still got it, to re-queue
    log = server.log()
    assert "protected job 'fail-raiser' failed" in log
    assert "RuntimeError: job raiser exploded" in log
    assert "abandoned job 'stubborn' after 1." in log
    if service is UVICORN:
        # The adapter ends the process with 75 in lifespan shutdown, stubborn job or not.
        assert status == graceful_web.EXIT_ABANDONED
    else:
        # run_app's final clean-up waits for every task: the watchdog ends it.
        assert status == graceful_web.EXIT_HARD
        assert (
            "hard exit with status 70: protected work did not stop 0.75 s after the deadline "
            "(job 'stubborn')"
        ) in log


def test_job_blocking_the_loop_within_the_deadline_finishes(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="3")
    assert httpx.post(f"{server.url}/misbehaving?kind=block&id=blocker&ms=600", timeout=5)
    pending = slow_request(server, 1000)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert exit_status_by_the_bound(server, 3) == 0
    assert "blocking:blocker" in server.events()
    assert server.jobs() == ["blocker"]


def test_job_blocking_the_loop_past_the_deadline_meets_the_hard_exit(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="1")
    assert httpx.post(f"{server.url}/misbehaving?kind=block&id=blocker&ms=30000", timeout=5)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    assert exit_status_by_the_bound(server, 1) == graceful_web.EXIT_HARD
    assert "blocking:blocker" in server.events()
    assert server.jobs() == []
    # The loop never ran again: the watchdog's thread names what it had to leave.
    assert "hard exit with status 70" in server.log()
    assert "(job 'blocker')" in server.log()


def test_job_spawning_more_jobs_while_draining_has_each_one_drained_or_named(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="1")
    response = httpx.post(
        f"{server.url}/misbehaving?kind=fan-out&id=parent&ms=100,200,60000", timeout=5
    )
    assert response.status_code == 202
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    assert exit_status_by_the_bound(server, 1) == graceful_web.EXIT_ABANDONED
    assert sorted(server.jobs()) == ["parent", "parent-child-1", "parent-child-2"]
    assert "abandoned:job:parent-child-3" in server.events()
    log = server.log()
    assert "abandoned job 'parent-child-3' after" in log
    assert "drained 0 requests and 3 jobs (0 failed)" in log
    assert "abandoned 1" in log


# -- 3. bad input -------------------------------------------------------------------------------

BAD_REQUESTS = {
    "malformed request line": b"GARBAGE\r\n\r\n",
    # Over every server's limit (aiohttp 8 KiB, uvicorn's h11 reads more before it refuses).
    "oversized header": (
        b"GET /fast HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    ),
    "oversized request target": b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "malformed Content-Length": b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
}

BAD_PARAMETERS = [
    ("GET", "/slow?ms=abc"),
    ("GET", "/slow?ms=-1"),
    ("GET", "/slow?ms=1e3"),
    ("GET", "/slow?ms=99999999999"),
    ("POST", "/jobs?ms=abc&id=fine"),
    ("POST", "/jobs?ms=10"),
    ("POST", "/jobs?ms=10&id="),
    ("POST", "/jobs?ms=10&id=has%20space"),
    ("POST", "/jobs?ms=10&id=%ff"),
    ("POST", "/jobs?ms=10&id=" + "a" * 65),
]


def test_bad_input_during_the_drain_gets_a_clean_4xx_and_the_drain_goes_on(
    start_server: StartServer, service: Service
) -> None:
    # The pre-stop delay keeps the listener open while the drain has started. uvicorn parses
    # with h11 here: httptools, its other parser, sets no limit on a header's size and would
    # serve the oversized one, which says nothing about the drain.
    server = start(
        start_server,
        service,
        GRACEFUL_DRAIN_TIMEOUT="6",
        GRACEFUL_PRE_STOP_DELAY="2.5",
        HTTP="h11",
    )
    post_job(server, "kept", 1500)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    for what, request in BAD_REQUESTS.items():
        status = status_of(raw_exchange(server, request))
        assert 400 <= status < 500, what
    for method, target in BAD_PARAMETERS:
        response = httpx.request(method, f"{server.url}{target}", timeout=5)
        assert response.status_code == 400, (method, target, response.text)
        assert "error" in response.json()
    readiness = httpx.get(f"{server.url}/readyz", timeout=5)
    assert (readiness.status_code, readiness.text) == (503, "draining\n")
    assert exit_status_by_the_bound(server, 6) == 0
    assert server.jobs() == ["kept"]
    log = server.log()
    assert "deadline in 6.0 s" in log
    assert "abandoned 0" in log


# -- 4. signals at odd moments ------------------------------------------------------------------


def wait_for_startup_hook(server: Server) -> None:
    server.wait_for_log("startup hook running", timeout=20)


@pytest.mark.parametrize("hook_first", ["0", "1"], ids=["after-setup", "before-setup"])
def test_signal_during_aiohttp_startup_stops_it_before_it_serves(
    start_server: StartServer, hook_first: str
) -> None:
    server = start_server(
        AIOHTTP.module,
        env={"STARTUP_DELAY_MS": "60000", "STARTUP_HOOK_FIRST": hook_first},
        ready_path=None,
    )
    wait_for_startup_hook(server)
    assert connect_refused(server.port)  # not serving yet
    server.send(signal.SIGTERM)
    # aiohttp cancels the startup hooks at once; nothing was accepted, nothing is drained.
    assert exit_status_by_the_bound(server, 25) == 0
    assert "drain finished" not in server.log()


def test_signal_during_uvicorn_startup_stops_it_once_started(start_server: StartServer) -> None:
    server = start_server(UVICORN.module, env={"STARTUP_DELAY_MS": "1500"}, ready_path=None)
    wait_for_startup_hook(server)
    assert connect_refused(server.port)  # not serving yet
    server.send(signal.SIGTERM)
    # uvicorn lets the lifespan startup finish, then shuts down at once and raises the
    # SIGTERM it caught again, as without the library. The drain finds nothing to do.
    assert server.wait_exit(timeout=20) == -signal.SIGTERM
    log = server.log()
    assert "drain started (shutdown): 0 requests and 0 jobs in flight" in log
    assert "abandoned 0" in log


def test_two_signals_in_a_row_end_in_one_consistent_outcome(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="5")
    post_job(server, "twice", 1500)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    server.send(signal.SIGTERM)  # back to back: the kernel may merge the two into one
    status = exit_status_by_the_bound(server, 5)
    log = server.log()
    if "second signal (SIGTERM)" in log:
        assert status == 128 + signal.SIGTERM
        assert "abandoned job 'job-twice'" in log
        assert "abandoned:job:job-twice" in server.events()
        assert server.jobs() == []
    else:
        assert status == 0
        assert server.jobs() == ["twice"]
    assert log.count("drain started") == 1
    assert log.count("drain finished") == 1


def test_sigint_after_sigterm_forces_the_exit(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="30")
    post_job(server, "endless", 60_000)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    server.send(signal.SIGINT)
    status = server.wait_exit(timeout=10)
    # uvicorn skips lifespan shutdown after a second SIGINT and would raise the first signal
    # again; the exit status still says which signal forced the exit.
    assert status == 128 + signal.SIGINT
    assert "second signal (SIGINT)" in server.log()
    assert "abandoned:job:job-endless" in server.events()
    assert server.jobs() == []


def test_sighup_is_not_handled_by_default(start_server: StartServer, service: Service) -> None:
    server = start(start_server, service)
    post_job(server, "hup", 60_000)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGHUP)
    # The default action, as without the library: the process ends at once.
    assert server.wait_exit(timeout=10) == -signal.SIGHUP
    assert "drain started" not in server.log()
    assert server.jobs() == []


def test_sighup_drains_when_chosen(start_server: StartServer, service: Service) -> None:
    # uvicorn does not stop on SIGHUP itself: the ASGI adapter stops it as on SIGTERM.
    server = start(start_server, service, SIGNALS="SIGINT,SIGTERM,SIGHUP")
    post_job(server, "hup", 1500)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGHUP)
    assert exit_status_by_the_bound(server, 25) == 0
    assert "drain started (SIGHUP)" in server.log()
    assert server.jobs() == ["hup"]


def test_server_stopping_by_itself_without_a_signal_drains(start_server: StartServer) -> None:
    # The job outlasts the moment the program stops the server.
    server = start_server(AIOHTTP.module, env={"MODE": "runner", "STOP_AFTER_MS": "2500"})
    post_job(server, "no-signal", 3000)
    assert server.wait_exit(timeout=20) == 0
    assert server.jobs() == ["no-signal"]
    log = server.log()
    assert "drain started (shutdown): 0 requests and 1 jobs in flight" in log
    assert "drained 0 requests and 1 jobs (0 failed)" in log
    assert "abandoned 0" in log


# -- 5. nothing over HTTP can touch the drain; readiness says ready or not, nothing more --------

# The readiness path itself, asked in other ways: it answers readiness, and nothing more.
READINESS_PROBES = [
    b"GET /readyz?drain=1&state=stopped HTTP/1.1",
    b"POST /readyz HTTP/1.1",
    b"PUT /readyz HTTP/1.1",
    b"DELETE /readyz HTTP/1.1",
    b"PATCH /readyz?ready=0 HTTP/1.1",
    b"OPTIONS /readyz HTTP/1.1",
]
# Paths around it and guesses at a control route: readiness at most, or a 4xx.
OTHER_PROBES = [
    b"GET /readyz/ HTTP/1.1",
    b"GET //readyz HTTP/1.1",
    b"GET /READYZ HTTP/1.1",
    b"GET /%72eadyz HTTP/1.1",
    b"GET /readyz%2F..%2Fdrain HTTP/1.1",
    b"GET /./readyz HTTP/1.1",
    b"GET /readyz;drain HTTP/1.1",
    b"GET http://127.0.0.1/readyz HTTP/1.1",
    b"POST /drain HTTP/1.1",
    b"POST /shutdown HTTP/1.1",
    b"POST /stop HTTP/1.1",
    b"GET /_graceful HTTP/1.1",
    b"POST /_graceful/drain HTTP/1.1",
]
PROBE_HEADERS = (
    b"Host: 127.0.0.1\r\nX-Drain: start\r\nX-Graceful-Deadline: 0\r\n"
    b"Content-Length: 10\r\nConnection: close\r\n\r\n0123456789"
)
READINESS_HEADERS = {
    "content-type", "content-length", "cache-control", "date", "server", "connection",
}


def probe_everything(server: Server, expected_readiness: tuple[int, bytes]) -> None:
    for line in READINESS_PROBES:
        response = raw_exchange(server, line + b"\r\n" + PROBE_HEADERS)
        assert (status_of(response), body_of(response)) == expected_readiness, line
    for line in OTHER_PROBES:
        response = raw_exchange(server, line + b"\r\n" + PROBE_HEADERS)
        status, body = status_of(response), body_of(response)
        if body in (b"ready\n", b"draining\n"):
            # Reached the readiness answer: it says ready or not, whatever was asked.
            assert (status, body) == expected_readiness, line
        else:
            assert 400 <= status < 500, (line, response[:300])
            assert b"ready" not in body.lower() and b"drain" not in body.lower(), line


def readiness_answer(server: Server) -> tuple[int, bytes]:
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert set(response.headers) <= READINESS_HEADERS, response.headers
    return response.status_code, response.content


def test_nothing_over_http_starts_stops_or_alters_the_drain(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_DRAIN_TIMEOUT="5", GRACEFUL_PRE_STOP_DELAY="2")
    probe_everything(server, (200, b"ready\n"))
    assert readiness_answer(server) == (200, b"ready\n")
    assert "drain started" not in server.log()
    assert server.proc.poll() is None

    post_job(server, "probed", 1200)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    probe_everything(server, (503, b"draining\n"))
    assert readiness_answer(server) == (503, b"draining\n")
    assert exit_status_by_the_bound(server, 5) == 0
    assert server.jobs() == ["probed"]
    log = server.log()
    assert "deadline in 5.0 s" in log
    assert log.count("drain started") == 1


def test_readiness_tells_nothing_of_the_work_in_flight(
    start_server: StartServer, service: Service
) -> None:
    server = start(start_server, service, GRACEFUL_PRE_STOP_DELAY="1")
    idle = readiness_answer(server)
    pending = [slow_request(server, 2000) for _ in range(3)]
    post_job(server, "busy", 2000)
    server.wait_in_flight(requests=3, jobs=1)
    assert readiness_answer(server) == idle == (200, b"ready\n")
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    assert readiness_answer(server) == (503, b"draining\n")
    assert all(request.result().status_code == 200 for request in pending)
    assert exit_status_by_the_bound(server, 25) == 0
