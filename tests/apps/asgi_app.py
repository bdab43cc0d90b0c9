"""The ASGI demo service plus test-only routes, served by whichever ASGI server a test starts.

TEST_APP=starlette (default) | bare (a plain ASGI function without lifespan support)
    | startup_fails (the inner app's lifespan startup raises)
The inner Starlette app's lifespan sets ``state["db"]`` and records "inner-startup" and
"inner-shutdown" in JOBS_FILE.events, so tests can see the inner lifespan still runs.
``python -m tests.apps.asgi_app`` serves it with ``uvicorn.run``; LOOP and HTTP there choose
uvicorn's loop and HTTP parser (auto by default).
HANDLE_SIGNALS=0 leaves the signals to the server (``handle_signals=False``).
RECORD_REQUESTS=1 records "start:<X-Request-Id>" in JOBS_FILE.events as each request starts;
STARTUP_DELAY_MS=N makes the inner lifespan startup log "startup hook running" and sleep N ms.
WITHOUT_GRACEFUL=1 serves the inner app as it is, for the bare server's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from demo_services._contract import configure_logging, parse_ms
from demo_services.asgi_service import build_starlette
from graceful_web import ShutdownInProgress, spawn
from graceful_web._current import current_drain
from graceful_web.asgi import GracefulLifespan

from ._work import (
    keep_unprotected,
    on_abandoned,
    outsider,
    record_after,
    record_event,
    spawn_misbehaving,
    start_unprotected,
)


async def stats(request: Request) -> Response:
    drain = current_drain()
    return JSONResponse(
        {"requests": drain.requests_in_flight - 1, "jobs": drain.jobs_in_flight, "pid": os.getpid()}
    )


async def slow_recorded(request: Request) -> Response:
    """/slow that records its start, so a test knows it is in flight in a multi-process server."""
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    record_event(f"start:{request.query_params.get('id', '')}")
    await anyio.sleep(ms / 1000)
    return PlainTextResponse(f"slept {ms} ms\n")


async def jobs_recorded(request: Request) -> Response:
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    job_id = request.query_params["id"]
    try:
        spawn(record_after(ms, job_id), name=f"job-{job_id}")
    except ShutdownInProgress:
        return JSONResponse({"id": job_id, "error": "shutting down"}, status_code=503)
    record_event(f"spawned:{job_id}")
    return JSONResponse({"id": job_id, "accepted": True}, status_code=202)


async def background_recorded(request: Request) -> Response:
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    job_id = request.query_params["id"]

    async def run() -> None:
        record_event(f"background-start:{job_id}")
        await record_after(ms, job_id)

    return JSONResponse({"id": job_id}, status_code=202, background=BackgroundTask(run))


async def unprotected(request: Request) -> Response:
    ms = int(request.query_params["ms"])
    job_id = request.query_params["id"]
    start_unprotected(ms, job_id)
    record_event(f"spawned:{job_id}")
    return JSONResponse({"id": job_id}, status_code=202)


async def spawn_after(request: Request) -> Response:
    """Follow-up work: the handler sleeps, then spawns a job (maybe during the drain)."""
    record_event(f"start:{request.query_params['id']}")
    await anyio.sleep(int(request.query_params["ms"]) / 1000)
    job_id = request.query_params["id"]
    spawn(record_after(0, job_id), name=f"follow-up-{job_id}")
    return PlainTextResponse("spawned\n")


async def state(request: Request) -> Response:
    return JSONResponse({"db": request.state.db})


async def websocket_ticker(websocket: WebSocket) -> None:
    """Sends a tick every 100 ms and never closes by itself: the drain's close (1012) ends it."""
    await websocket.accept()
    record_event("ws-open")
    try:
        while True:
            await websocket.send_text("tick")
            await anyio.sleep(0.1)
    except WebSocketDisconnect:
        pass
    finally:
        record_event("ws-closed")


@contextlib.asynccontextmanager
async def inner_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    record_event("inner-startup")
    if os.environ.get("STARTUP_DELAY_MS"):
        print("startup hook running", flush=True)
        await anyio.sleep(int(os.environ["STARTUP_DELAY_MS"]) / 1000)
    if os.environ.get("TEST_APP") == "startup_fails":
        raise RuntimeError("the database is unreachable")
    if os.environ.get("OUTSIDER") == "1":
        # Started here, outside any request, like a queue consumer the app runs beside.
        keep_unprotected(asyncio.create_task(outsider()))
    yield {"db": "connected"}
    record_event("inner-shutdown")


async def big(request: Request) -> Response:
    """A response of ``mb`` MiB: a client that never reads it fills the socket buffers."""

    async def chunks() -> AsyncIterator[bytes]:
        chunk = b"x" * 65536
        for _ in range(int(request.query_params["mb"]) * 16):
            yield chunk

    return StreamingResponse(chunks())


async def upload(request: Request) -> Response:
    """Reads the whole body: a client that sends it slowly keeps this request in flight."""
    body = await request.body()
    return PlainTextResponse(f"read {len(body)} bytes\n")


async def spawn_then_slow(request: Request) -> Response:
    """Spawns a job first, then takes ``ms`` more before answering."""
    job_id = request.query_params["id"]
    spawn(record_after(int(request.query_params["job_ms"]), job_id), name=f"job-{job_id}")
    try:
        await anyio.sleep(int(request.query_params["ms"]) / 1000)
    except asyncio.CancelledError:
        record_event(f"handler-cancelled:{job_id}")
        raise
    record_event(f"handler-finished:{job_id}")
    return PlainTextResponse("done\n")


async def failing(request: Request) -> Response:
    async def explode() -> None:
        await anyio.sleep(int(request.query_params.get("ms", "0")) / 1000)
        raise RuntimeError(f"job {request.query_params['id']} exploded")

    spawn(explode(), name=f"fail-{request.query_params['id']}")
    return JSONResponse({}, status_code=202)


async def misbehaving(request: Request) -> Response:
    """POST /misbehaving?kind=stubborn|block|fan-out&id=X&ms=N[,N...]"""
    kind = request.query_params["kind"]
    job_id = request.query_params["id"]
    ms = [int(part) for part in request.query_params.get("ms", "0").split(",")]
    try:
        spawn_misbehaving(kind, job_id, ms)
    except ValueError as exc:
        return PlainTextResponse(f"{exc}\n", status_code=400)
    return JSONResponse({"id": job_id}, status_code=202)


def recording_requests(inner: Any) -> Any:
    async def record(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request_id = dict(scope["headers"]).get(b"x-request-id")
            if request_id is not None:
                record_event(f"start:{request_id.decode()}")
        await inner(scope, receive, send)

    return record


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app that knows nothing of lifespan."""
    assert scope["type"] == "http", "no lifespan here"
    if scope["path"] == "/slow":
        record_event("start:bare")
        await anyio.sleep(1.0)
    body = json.dumps({"path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def build() -> Any:
    # Servers configure only their own loggers; the tests read graceful_web's lines.
    configure_logging()
    kind = os.environ.get("TEST_APP", "starlette")
    signals = os.environ.get("SIGNALS")
    options: dict[str, Any] = {
        "on_abandoned": on_abandoned,
        "signals": signals.split(",") if signals else None,
        "handle_signals": os.environ.get("HANDLE_SIGNALS") != "0",
    }
    if kind == "bare":
        return GracefulLifespan(bare_app, **options)
    inner = build_starlette()
    inner.router.lifespan_context = inner_lifespan
    inner.router.routes.extend(
        [
            Route("/_stats", stats),
            Route("/slow-recorded", slow_recorded),
            Route("/jobs-recorded", jobs_recorded, methods=["POST"]),
            Route("/background-recorded", background_recorded, methods=["POST"]),
            Route("/unprotected", unprotected, methods=["POST"]),
            Route("/spawn-after", spawn_after),
            Route("/state", state),
            WebSocketRoute("/ws", websocket_ticker),
            Route("/big", big),
            Route("/upload", upload, methods=["POST"]),
            Route("/spawn-then-slow", spawn_then_slow),
            Route("/failing", failing, methods=["POST"]),
            Route("/misbehaving", misbehaving, methods=["POST"]),
        ]
    )
    if os.environ.get("RECORD_REQUESTS") == "1":
        return GracefulLifespan(recording_requests(inner), **options)
    if os.environ.get("WITHOUT_GRACEFUL") == "1":
        return inner  # the bare server, side by side
    return GracefulLifespan(inner, **options)


app = build()


def main() -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_config=None,
        loop=os.environ.get("LOOP", "auto"),
        http=os.environ.get("HTTP", "auto"),
    )


if __name__ == "__main__":
    main()
