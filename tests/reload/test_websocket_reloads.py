"""A reload with websockets open: 200 clients that reconnect on close, the server reloaded by
SIGHUP, directly and behind nginx, with graceful_web and bare (GRACEFUL=0).

Each run: the server with 2 workers (tests/apps/reload_app.py), 200 websocket clients
(tests/reload/_reconnecting.py) connected, SIGHUP to the parent, a wait until every worker that
was there is gone and every client is connected again to a new one; then the clients stop and
the parent gets SIGTERM. Counted from the clients: how the server closed each connection (by
close code, 1006 for none) and the connect attempts that failed. With graceful_web every
retiring worker closes its websockets with 1012 (Service Restart) after ``long_lived_grace``, so
none is closed abnormally and every reconnect reaches a worker that serves. With
GRACEFUL_RELOAD_FIGURES set, one JSON line per run is appended to that file.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.polling import wait_until
from tests.support.servers import StartServer

from ._figures import record_figures
from ._reconnecting import ReconnectingClients, wait_connected
from ._workers import Workers
from .test_behind_nginx import run_nginx

PY = sys.executable
ASGI = "tests.apps.reload_app:app"
AIOHTTP = "tests.apps.reload_app:aiohttp_app()"
CLIENTS = 200
WORKERS = 2
# graceful_web's deadline, below the servers' own: gunicorn's graceful timeout (aiohttp's worker
# holds open websockets for 95 % of it) and uvicorn's, which waits for connections forever.
DRAIN_TIMEOUT = "4"
SERVER_GRACE = "6"
RELOAD_TIMEOUT = 30.0


def _gunicorn(worker: str, app: str) -> list[str]:
    return [PY, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:{port}",
            "--workers", str(WORKERS), "--graceful-timeout", SERVER_GRACE, app]  # fmt: skip


SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "uvicorn --workers 2": (
        [PY, "-m", "uvicorn", ASGI, "--host", "127.0.0.1", "--port", "{port}",
         "--workers", str(WORKERS), "--loop", "uvloop", "--http", "httptools",
         "--ws", "websockets", "--timeout-graceful-shutdown", SERVER_GRACE, "--no-access-log"],
        {},
    ),
    "gunicorn UvicornWorker": (_gunicorn("uvicorn_worker.UvicornWorker", ASGI), {}),
    "gunicorn GunicornWebWorker": (
        _gunicorn("aiohttp.GunicornWebWorker", AIOHTTP), {"APP": "aiohttp"}
    ),
}  # fmt: skip
BEHIND_NGINX = ("uvicorn --workers 2", "gunicorn GunicornWebWorker")
# The row whose bare run closes websockets abnormally: aiohttp's worker holds them until its
# shutdown timeout, then closes the connections without a close frame.
MUST_CLOSE_ABNORMALLY_BARE = "gunicorn GunicornWebWorker"
SHORT = dict(zip(SERVERS, ("uvicorn", "UvicornWorker", "GunicornWebWorker"), strict=True))
CASES = [(kind, False) for kind in SERVERS] + [(kind, True) for kind in BEHIND_NGINX]


@contextmanager
def _direct(port: int) -> Iterator[SimpleNamespace]:
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}")


def check_run(figures: dict[str, object]) -> None:
    """What a reload with graceful_web must show: every close a 1012, none abnormal, no
    reconnect failed. Bare runs are recorded; what they show differs by server, and only what
    is stable is asserted."""
    if not figures["graceful_web"]:
        if figures["server"] == MUST_CLOSE_ABNORMALLY_BARE:
            assert figures["abnormal"], "no abnormal close bare: the run cannot see one"
        return
    closes = figures["closes"]
    assert isinstance(closes, dict)
    assert figures["failed_reconnects"] == 0, figures
    assert figures["abnormal"] == 0, figures
    assert set(closes) == {"1012"}, figures
    assert figures["exit_status"] == 0, figures


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful_web", "bare"])
@pytest.mark.parametrize(
    ("kind", "nginx"), CASES, ids=[f"{SHORT[k]}{'-nginx' if n else ''}" for k, n in CASES]
)
def test_websockets_reconnect_through_a_reload(
    start_server: StartServer, tmp_path: Path, kind: str, nginx: bool, graceful: bool
) -> None:
    began = time.monotonic()
    argv, env = SERVERS[kind]
    env = {**env, "GRACEFUL": "1" if graceful else "0", "GRACEFUL_DRAIN_TIMEOUT": DRAIN_TIMEOUT}
    server = start_server(argv, env=env, ready_path="/readyz", name="ws-reload")
    workers = Workers(server.pid)
    workers.start()
    try:
        with run_nginx(tmp_path / "nginx", server.port) if nginx else _direct(server.port) as front:
            wait_until(lambda: len(workers.alive()) == WORKERS, 15, f"{WORKERS} workers")
            clients = ReconnectingClients(f"{front.url.replace('http', 'ws')}/ws", CLIENTS)
            clients.begin()
            try:
                wait_connected(clients, None, 20)
                retiring = workers.alive()
                reloaded = time.monotonic()
                server.send(signal.SIGHUP)

                def replaced() -> bool:
                    alive = workers.alive()
                    return not alive & retiring and len(alive) == WORKERS

                wait_until(replaced, RELOAD_TIMEOUT, "the reload to replace the workers")
                reload_s = time.monotonic() - reloaded
                wait_connected(clients, workers.alive(), 15)
            finally:
                seen = clients.stop()
    finally:
        workers.stop()
    server.send(signal.SIGTERM)
    figures = {
        "test": "websocket_reload",
        "server": kind,
        "behind_nginx": nginx,
        "graceful_web": graceful,
        "clients": CLIENTS,
        **seen.as_dict(),
        "reload_s": round(reload_s, 1),
        "exit_status": server.wait_exit(30),
        "seconds": round(time.monotonic() - began, 1),
    }
    record_figures(figures)
    print(f"\n{json.dumps(figures)}")
    assert sum(seen.closes.values()) >= CLIENTS, "the reload closed fewer websockets than open"
    check_run(figures)
