"""What a client sees on a connection that is open, with no request in progress, when the server
is told to stop: the listener closes at once; a connection the server had already accepted
gets its first request read and answered, and an idle keep-alive connection its next one, each
with ``Connection: close``, for ``idle_connection_grace`` seconds; what is still idle then is
closed, and the process exits 0. A bare server closes both kinds unanswered the moment it
stops (uvicorn and aiohttp alike), which is what the reload tests (tests/reload) count.

Each server runs on LOOP (asyncio, or uvloop in make test's second pass).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from graceful_web import _listeners
from tests.support.polling import wait_until
from tests.support.ports import connect_refused
from tests.support.servers import Server, StartServer

LOOP = os.environ.get("LOOP", "asyncio")
GRACE = 3.0  # long enough for the test to send its requests after the listener has closed
ENV = {"GRACEFUL_IDLE_CONNECTION_GRACE": str(GRACE), "GRACEFUL_DRAIN_TIMEOUT": "10"}

UVICORN_WORKER = "UvicornWorker" if LOOP == "uvloop" else "UvicornH11Worker"
GUNICORN = [sys.executable, "-m", "gunicorn", "-k", f"uvicorn_worker.{UVICORN_WORKER}",
            "-b", "127.0.0.1:{port}", "--workers", "1", "--graceful-timeout", "20",
            "tests.apps.asgi_app:app"]  # fmt: skip
AIOHTTP_WORKER = "GunicornUVLoopWebWorker" if LOOP == "uvloop" else "GunicornWebWorker"
GUNICORN_AIOHTTP = [sys.executable, "-m", "gunicorn", "-k", f"aiohttp.{AIOHTTP_WORKER}",
                    "-b", "127.0.0.1:{port}", "--workers", "1", "--graceful-timeout", "20",
                    "tests.apps.aiohttp_app:build()"]  # fmt: skip
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "uvicorn h11": (["tests.apps.asgi_app"], {"HTTP": "h11", "LOOP": LOOP}),
    "uvicorn httptools": (["tests.apps.asgi_app"], {"HTTP": "httptools", "LOOP": LOOP}),
    "aiohttp run_app": (["tests.apps.aiohttp_app"], {"LOOP": LOOP}),
    "gunicorn UvicornWorker": (GUNICORN, {}),
    "gunicorn GunicornWebWorker": (GUNICORN_AIOHTTP, {}),
}


def _request(path: str = "/healthz") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Status and headers of one whole response (read to the end of its body); a connection
    closed before it raises ConnectionError."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without a response (read {data!r})")
        data += chunk
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    head = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a response body")
        body += chunk
    return int(head[0].split()[1]), headers


def _connect(port: int, stack: ExitStack) -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    return sock


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest, start_server: StartServer) -> Iterator[Server]:
    argv, env = SERVERS[request.param]
    yield start_server(argv[0] if len(argv) == 1 else argv, env={**ENV, **env})


def _stopped_listening(server: Server) -> None:
    server.send(signal.SIGTERM)
    wait_until(lambda: connect_refused(server.port), 10, "the listener to close")


def _assert_answered_with_close(socks: list[socket.socket]) -> None:
    """A request written on each now (all sent before any is read) gets 200, and the
    connection is then closed by the server (``Connection: close``)."""
    for sock in socks:
        sock.sendall(_request())
    for sock in socks:
        status, headers = _read_response(sock)
        assert status == 200
        assert headers.get("connection") == "close"


def test_a_connection_accepted_before_the_listener_closed_is_answered(server: Server) -> None:
    with ExitStack() as stack:
        waiting = [_connect(server.port, stack) for _ in range(5)]  # connected, nothing sent
        _stopped_listening(server)
        _assert_answered_with_close(waiting)
    assert server.wait_exit(20) == 0, server.log()


def test_an_idle_keep_alive_connection_gets_its_next_request_answered(server: Server) -> None:
    with ExitStack() as stack:
        kept = [_connect(server.port, stack) for _ in range(3)]
        for sock in kept:
            sock.sendall(_request())
            status, headers = _read_response(sock)
            assert status == 200 and headers.get("connection") != "close"
        _stopped_listening(server)
        _assert_answered_with_close(kept)
    assert server.wait_exit(20) == 0, server.log()


def test_a_connection_still_idle_after_the_grace_is_closed_and_the_process_exits(
    server: Server,
) -> None:
    with ExitStack() as stack:
        idle = _connect(server.port, stack)
        idle.sendall(_request())
        _read_response(idle)
        _stopped_listening(server)
        idle.settimeout(GRACE + 10)
        assert idle.recv(1) == b""  # closed by the server, once the grace was over
    assert server.wait_exit(20) == 0, server.log()


@pytest.mark.skipif(_listeners.migrates_requests() is None, reason="no tcp_migrate_req here")
def test_a_reuse_port_listener_is_named_in_the_log_while_requests_are_not_migrated(
    start_server: StartServer,
) -> None:
    server = start_server(
        "tests.apps.aiohttp_app", env={**ENV, "LOOP": LOOP, "REUSE_PORT": "1"}
    )
    warning = "with SO_REUSEPORT while net.ipv4.tcp_migrate_req is 0"
    if _listeners.migrates_requests():
        server.send(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        assert warning not in server.log()
    else:
        server.wait_for_log(warning)
        assert f"127.0.0.1:{server.port}" in server.log()
        assert server.log().count(warning) == 1
