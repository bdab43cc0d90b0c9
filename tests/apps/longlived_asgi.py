"""Connections that never end by themselves, written as a new user writes them from Starlette's
docs: an echo websocket, an endless server-sent-events feed, an LLM answer over SSE, a long
poll and a job route. graceful_web adds the wrapping, one ``mark_stream("finishing")`` and the
``shutting_down()`` long poll; GRACEFUL=0 serves the same app bare (the job then runs as a
Starlette background task, the long poll just waits).

Served by any ASGI server as ``tests.apps.longlived_asgi:app``. A finished job appends
``<id> <unix time>`` to JOBS_FILE; ``/poll`` appends ``poll-waiting`` to JOBS_FILE.events once
it waits, so a test knows its long polls are in flight. BAD=1 adds the routes of misbehaving
handlers (tests/servers/test_long_lived_bad_input.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from demo_services._contract import append_job_record, configure_logging, jobs_file

GRACEFUL = os.environ.get("GRACEFUL", "1") != "0"
TOKENS = 20
TOKEN_EVERY = 0.1  # 20 tokens over about 2 s
JOB_SECONDS = 2.0
POLL_SECONDS = 30.0


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def feed(request: Request) -> Response:
    async def events() -> AsyncIterator[str]:
        number = 0
        while True:
            number += 1
            yield f"id: {number}\ndata: tick {number}\n\n"
            await anyio.sleep(0.1)

    return StreamingResponse(events(), media_type="text/event-stream")


async def answer(request: Request) -> Response:
    """An LLM's answer streamed token by token over SSE: it must finish, not be cut."""
    if GRACEFUL:
        from graceful_web import mark_stream

        mark_stream("finishing")

    async def tokens() -> AsyncIterator[str]:
        for number in range(TOKENS):
            yield f"data: token{number}\n\n"
            await anyio.sleep(TOKEN_EVERY)
        yield "data: [DONE]\n\n"

    return StreamingResponse(tokens(), media_type="text/event-stream")


async def poll(request: Request) -> Response:
    """A long poll: answers when there is news, or early when the process is stopping."""
    _record_event("poll-waiting")
    with anyio.move_on_after(POLL_SECONDS):
        if GRACEFUL:
            from graceful_web import shutting_down

            await shutting_down().wait()
            return JSONResponse({"events": [], "reconnect": True})
        await anyio.sleep(POLL_SECONDS)
    return JSONResponse({"events": []})


async def run_job(job_id: str) -> None:
    await anyio.sleep(JOB_SECONDS)
    append_job_record(f"{job_id} {time.time():.3f}")


async def jobs(request: Request) -> Response:
    job_id = request.query_params["id"]
    if GRACEFUL:
        from graceful_web import spawn

        spawn(run_job(job_id), name=f"job-{job_id}")
        return JSONResponse({"id": job_id}, status_code=202)
    return JSONResponse({"id": job_id}, status_code=202, background=BackgroundTask(run_job, job_id))


def _record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


def build() -> Any:
    configure_logging()
    routes = [
        Route("/healthz", healthz),
        WebSocketRoute("/ws", echo),
        Route("/feed", feed),
        Route("/answer", answer),
        Route("/poll", poll),
        Route("/jobs", jobs, methods=["POST"]),
    ]
    if os.environ.get("BAD") == "1":
        from ._longlived_bad import ASGI_ROUTES

        routes += ASGI_ROUTES
    inner = Starlette(routes=routes)
    if not GRACEFUL:
        return inner
    from graceful_web.asgi import GracefulLifespan

    return GracefulLifespan(inner)


app = build()
