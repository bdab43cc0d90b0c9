"""The smallest Starlette app the benchmarks need, served by uvicorn or hypercorn;
``GRACEFUL=0`` serves it bare, otherwise it is wrapped in ``GracefulLifespan``.

The same routes as bench/aiohttp_app.py: GET /fast, GET /work, GET /slow?ms=N&after=K,
POST /jobs?ms=N, GET /stats, GET /healthz, GET /ws (an echo websocket) and GET /events (an
endless server-sent-events feed), written as Starlette's docs write them. DONE_FILE and
GRACEFUL_DRAIN_TIMEOUT from the environment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ._app_common import (
    EVENT_INTERVAL_S,
    WORK_BODY,
    WORK_MS,
    DoneRecord,
    InFlight,
    configure_logging,
    empty_middleware,
    graceful_enabled,
)

in_flight = InFlight()
done = DoneRecord()
_bare_jobs: set[asyncio.Task[Any]] = set()


async def fast(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def work(request: Request) -> Response:
    await asyncio.sleep(WORK_MS / 1000)
    return JSONResponse(WORK_BODY)


async def slow(request: Request) -> Response:
    query = request.query_params
    await in_flight.sleep(int(query.get("ms", "1000")), int(query.get("after", "0")))
    done.mark("request")
    return PlainTextResponse("slept\n")


async def job(ms: int) -> None:
    await asyncio.sleep(ms / 1000)
    done.mark("job")


async def create_job(request: Request) -> Response:
    ms = int(request.query_params.get("ms", "1000"))
    if graceful_enabled():
        from graceful_web import spawn

        spawn(job(ms), name="bench-job")
    else:
        task = asyncio.create_task(job(ms))
        _bare_jobs.add(task)
        task.add_done_callback(_bare_jobs.discard)
    return PlainTextResponse("accepted\n", status_code=202)


async def stats(request: Request) -> Response:
    return Response(in_flight.as_json(), media_type="application/json")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("alive\n")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def events(request: Request) -> Response:
    async def feed() -> AsyncIterator[str]:
        tick = 0
        while True:
            yield f"data: {tick}\n\n"
            tick += 1
            await asyncio.sleep(EVENT_INTERVAL_S)

    return StreamingResponse(feed(), media_type="text/event-stream")


def make_app() -> Any:
    inner = Starlette(
        routes=[
            Route("/fast", fast),
            Route("/work", work),
            Route("/slow", slow),
            Route("/jobs", create_job, methods=["POST"]),
            Route("/stats", stats),
            Route("/healthz", healthz),
            WebSocketRoute("/ws", echo),
            Route("/events", events),
        ]
    )
    if empty_middleware() and not graceful_enabled():

        async def passes_on(scope: Any, receive: Any, send: Any) -> None:
            await inner(scope, receive, send)

        return passes_on
    if not graceful_enabled():
        return inner
    from graceful_web.asgi import GracefulLifespan

    return GracefulLifespan(inner)  # deadline from GRACEFUL_DRAIN_TIMEOUT


configure_logging()
app = make_app()
