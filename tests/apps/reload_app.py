"""The app tests/reload restarts through each server's own reload signal, as ASGI and aiohttp.

GET /fast          a 5 ms handler, answers ``ok``
POST /orders?id=X  202 at once; a 1.5 s background job then appends ``done X <pid>`` to
                   JOBS_FILE (503 once the drain refuses new jobs)
GET /readyz        graceful_web's readiness route (with GRACEFUL=0, a plain 200)
GET /ws            an echo websocket, written as each framework's docs write one; its first
                   message is the worker's pid

Every answer names the worker that gave it in ``X-Worker-Pid``, so a test knows which
generation of workers served what. GRACEFUL=0 serves the same routes without graceful_web:
the job is then a plain ``asyncio.create_task``.

APP=asgi (default: ``app``, Starlette wrapped in GracefulLifespan, for uvicorn, granian,
hypercorn and gunicorn's UvicornWorker) | aiohttp (``aiohttp_app()`` for gunicorn's aiohttp
workers; ``app`` is then None).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from demo_services._contract import configure_logging, graceful_enabled, jobs_file
from graceful_web import ShutdownInProgress, spawn

FAST_SECONDS = 0.005
JOB_SECONDS = 1.5
PID_HEADER = "X-Worker-Pid"

_unprotected: set[asyncio.Task[None]] = set()


def _append_done(order_id: str) -> None:
    # One write with O_APPEND, so lines of concurrent workers never interleave. No fsync: a
    # worker that dies after the write has still put the line in the kernel's page cache,
    # which is what the test reads; an fsync per job would stall the event loop on disk.
    fd = os.open(jobs_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"done {order_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def _fulfil(order_id: str) -> None:
    await asyncio.sleep(JOB_SECONDS)
    _append_done(order_id)


def _accept_order(order_id: str) -> int:
    """Start the order's job; the status to answer with."""
    if not graceful_enabled():
        task = asyncio.create_task(_fulfil(order_id))
        _unprotected.add(task)  # held, as an app would, so it is not collected mid-run
        task.add_done_callback(_unprotected.discard)
        return 202
    try:
        spawn(_fulfil(order_id), name=f"order-{order_id}")
    except ShutdownInProgress:
        return 503
    return 202


def _pid_header() -> dict[str, str]:
    return {PID_HEADER: str(os.getpid())}


def asgi_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from graceful_web.asgi import GracefulLifespan

    async def fast(request: Request) -> Response:
        await asyncio.sleep(FAST_SECONDS)
        return PlainTextResponse("ok", headers=_pid_header())

    async def orders(request: Request) -> Response:
        order_id = request.query_params["id"]
        status = _accept_order(order_id)
        return PlainTextResponse(order_id, status_code=status, headers=_pid_header())

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ready", headers=_pid_header())

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(str(os.getpid()))
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    routes = [
        Route("/fast", fast),
        Route("/orders", orders, methods=["POST"]),
        WebSocketRoute("/ws", echo),
    ]
    if not graceful_enabled():
        return Starlette(routes=[*routes, Route("/readyz", ready)])
    # The deadline comes from GRACEFUL_DRAIN_TIMEOUT; /readyz is the library's.
    return GracefulLifespan(Starlette(routes=routes))


def aiohttp_app() -> Any:
    from aiohttp import web

    import graceful_web.aiohttp

    async def fast(request: web.Request) -> web.Response:
        await asyncio.sleep(FAST_SECONDS)
        return web.Response(text="ok", headers=_pid_header())

    async def orders(request: web.Request) -> web.Response:
        order_id = request.query["id"]
        status = _accept_order(order_id)
        return web.Response(status=status, text=order_id, headers=_pid_header())

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ready", headers=_pid_header())

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(str(os.getpid()))
        async for message in ws:
            if message.type == web.WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/ws", echo)
    app.router.add_post("/orders", orders)
    if graceful_enabled():
        graceful_web.aiohttp.setup(app)
    else:
        app.router.add_get("/readyz", ready)
    return app


# Servers configure only their own loggers; graceful_web's lines should reach the server log.
configure_logging()
app = asgi_app() if os.environ.get("APP", "asgi") == "asgi" else None
