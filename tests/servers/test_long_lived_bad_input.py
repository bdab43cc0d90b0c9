"""Long-lived connections that misbehave, on either adapter (uvicorn and aiohttp run_app): a
websocket handler that ignores the close, a feed that keeps writing to its ended stream, a
client that never reads its download, and a websocket client that never answers the close
handshake. Each ends by the deadline with at most one clear log line about it and no traceback;
a job in flight beside it still finishes, and the process exits within the deadline + 1 s: with
0 when the connection was ended politely, with 75 when the deadline had to cut it.

The routes are tests/apps/_longlived_bad.py's, on tests/apps/longlived_asgi.py and
tests/apps/longlived_aiohttp.py.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.support.servers import Server, StartServer

PY = sys.executable
DRAIN_TIMEOUT = 3.0
LOOP = os.environ.get("LOOP", "asyncio")
SERVERS: dict[str, list[str] | str] = {
    "uvicorn": [PY, "-m", "uvicorn", "tests.apps.longlived_asgi:app", "--port", "{port}",
                "--loop", LOOP, "--timeout-graceful-shutdown", "30"],
    "aiohttp": "tests.apps.longlived_aiohttp",
}  # fmt: skip


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest, start_server: StartServer) -> Server:
    env = {"BAD": "1", "LOOP": LOOP, "GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
           "SHUTDOWN_TIMEOUT": "30"}  # fmt: skip
    return start_server(SERVERS[request.param], env=env)


def _stop_with_a_job(server: Server) -> float:
    """A 2 s job in flight, then SIGTERM; seconds from the signal to the exit."""
    assert httpx.post(f"{server.url}/jobs?id=beside", timeout=5).status_code == 202
    server.send(signal.SIGTERM)
    server.wait_exit(DRAIN_TIMEOUT + 5)
    assert server.signalled_at is not None
    return time.monotonic() - server.signalled_at


def _assert_ended_by_the_deadline(server: Server, exited_after: float) -> None:
    log = server.log()
    assert exited_after < DRAIN_TIMEOUT + 1, log
    assert [line.split()[0] for line in server.jobs()] == ["beside"], log
    assert "Traceback" not in log, log


def _lines_about(server: Server, path: str) -> list[str]:
    """The warnings and errors of the log that name ``path``: one, clear, or none at all."""
    return [line for line in server.log().splitlines()
            if path in line and ("WARNING" in line or "ERROR" in line)]  # fmt: skip


@contextmanager
def _raw_websocket(server: Server, path: str) -> Iterator[socket.socket]:
    """A websocket opened by hand, that from then on reads nothing and answers nothing."""
    with closing(socket.create_connection(("127.0.0.1", server.port), timeout=10)) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        yield sock


def test_a_websocket_handler_that_ignores_the_close(server: Server) -> None:
    with ws_connect(f"ws://127.0.0.1:{server.port}/bad/deaf-ws", open_timeout=10) as ws:
        exited_after = _stop_with_a_job(server)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1012
    _assert_ended_by_the_deadline(server, exited_after)
    assert len(_lines_about(server, "/bad/deaf-ws")) == 1, server.log()  # cancelled, it says
    assert server.proc.returncode == 0


def test_a_feed_that_keeps_writing_to_its_ended_stream(server: Server) -> None:
    with httpx.stream("GET", f"{server.url}/bad/stubborn-feed", timeout=30) as response:
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"data: tick")
        exited_after = _stop_with_a_job(server)
        b"".join(chunks)  # the body's proper end: a cut would raise here
    _assert_ended_by_the_deadline(server, exited_after)
    assert len(_lines_about(server, "/bad/stubborn-feed")) <= 1, server.log()  # not a line a write
    assert server.proc.returncode == 0


def test_a_client_that_never_reads_its_download(server: Server) -> None:
    with closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /bad/download HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(16).startswith(b"HTTP/1.1 200")  # then nothing more is read
        exited_after = _stop_with_a_job(server)
    _assert_ended_by_the_deadline(server, exited_after)
    assert len(_lines_about(server, "/bad/download")) == 1, server.log()  # abandoned, it says
    assert server.proc.returncode == 75


def test_a_websocket_client_that_never_answers_the_close(server: Server) -> None:
    with _raw_websocket(server, "/ws"):
        exited_after = _stop_with_a_job(server)
    _assert_ended_by_the_deadline(server, exited_after)
    assert len(_lines_about(server, "/ws")) <= 1, server.log()
    assert server.proc.returncode == 0
