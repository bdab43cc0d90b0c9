"""One single-process server of tests/apps/reload_app.py on a port other processes share.

``python -m tests.reload._serve aiohttp|uvicorn`` listens on 127.0.0.1:PORT with SO_REUSEPORT,
beside any other process doing the same, and on an abstract Unix socket of its own named
READY_SOCKET: a readiness check sent there reaches this process and no other, and the name
goes with the socket, leaving no file behind. It is the recipe of docs/reloads.md (blue/green
on one host), with the test app:

- aiohttp: ``web.run_app(app, host=..., port=..., reuse_port=True, path=READY_SOCKET)``;
  run_app starts both sites once the app's startup is over.
- uvicorn, which has no reuse-port option: the two sockets are bound here and handed to
  ``uvicorn.Server.run(sockets=...)``, which starts listening on them once the app's lifespan
  startup is over, as uvicorn's own parent process hands its workers their socket.
"""

from __future__ import annotations

import os
import socket
import sys

HOST = "127.0.0.1"


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """Bound, not listening: no connection is queued for this process before it can serve."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def abstract_socket(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(f"\0{name}")
    return sock


def serve_aiohttp(port: int, ready_socket: str) -> None:
    from aiohttp import web

    from tests.apps.reload_app import aiohttp_app

    web.run_app(aiohttp_app(), host=HOST, port=port, reuse_port=True, path=f"\0{ready_socket}")


def serve_uvicorn(port: int, ready_socket: str) -> None:
    import uvicorn

    config = uvicorn.Config("tests.apps.reload_app:app", log_config=None)
    sockets = [reuse_port_socket(HOST, port), abstract_socket(ready_socket)]
    uvicorn.Server(config).run(sockets=sockets)


def main() -> None:
    serve = {"aiohttp": serve_aiohttp, "uvicorn": serve_uvicorn}[sys.argv[1]]
    serve(int(os.environ["PORT"]), os.environ["READY_SOCKET"])


if __name__ == "__main__":
    main()
