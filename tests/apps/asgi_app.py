"""The ASGI demo service plus test-only routes, served by whichever ASGI server a test starts.

TEST_APP=starlette (default) | bare (a plain ASGI function without lifespan support)
    | startup_fails (the inner app's lifespan startup raises)
The inner Starlette app's lifespan sets ``state["db"]`` and records "inner-startup" and
"inner-shutdown" in JOBS_FILE.events, so tests can see the inner lifespan still runs.
``python -m tests.apps.asgi_app`` serves it with ``uvicorn.run``.
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
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import graceful_web
from demo_services._contract import append_job_record, configure_logging, jobs_file, parse_ms
from demo_services.asgi_service import build_starlette, record_after
from graceful_web import AbandonedWork, ShutdownInProgress, spawn
from graceful_web._core import current_drain
from graceful_web.asgi import GracefulLifespan

_unprotected: set[asyncio.Task[Any]] = set()


def record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


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

    async def work() -> None:
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            record_event(f"cancelled:{job_id}")
            raise
        append_job_record(job_id)

    task = asyncio.create_task(work())
    _unprotected.add(task)
    task.add_done_callback(_unprotected.discard)
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
    """Sends a tick every 100 ms and never closes by itself: only the drain's 1001 ends it."""
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
    if os.environ.get("TEST_APP") == "startup_fails":
        raise RuntimeError("the database is unreachable")
    if os.environ.get("OUTSIDER") == "1":
        # Started here, outside any request, like a queue consumer the app runs beside.
        task = asyncio.create_task(outsider())
        _unprotected.add(task)
    yield {"db": "connected"}
    record_event("inner-shutdown")


async def outsider() -> None:
    """An unprotected background loop that tries to spawn once the drain has started."""
    await graceful_web.shutting_down().wait()
    try:
        spawn(record_after(0, "outsider-accepted"), name="outsider")
    except ShutdownInProgress as exc:
        record_event(f"outsider-refused: {exc}")


def on_abandoned(abandoned: tuple[AbandonedWork, ...]) -> None:
    for work in abandoned:
        record_event(f"abandoned:{work.kind}:{work.name}")


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
    }
    if os.environ.get("WEBSOCKET_CLOSE_GRACE"):
        options["websocket_close_grace"] = float(os.environ["WEBSOCKET_CLOSE_GRACE"])
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
        ]
    )
    return GracefulLifespan(inner, **options)


app = build()


def main() -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_config=None)


if __name__ == "__main__":
    main()
