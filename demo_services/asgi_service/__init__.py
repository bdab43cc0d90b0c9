"""The ASGI demo service, as a Starlette app or a FastAPI app (``APP=starlette|fastapi``), with
the HTTP contract of demo_services/_contract.py. Handlers sleep with anyio, so the same app
serves under asyncio servers and under hypercorn's trio worker.

``app`` is what servers load: ``uvicorn demo_services.asgi_service:app``,
``hypercorn demo_services.asgi_service:app``, ``granian --interface asgi ...``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from graceful_web import ShutdownInProgress, shutting_down, spawn
from graceful_web.asgi import GracefulLifespan

from .._contract import (
    BadParameter,
    append_job_record,
    graceful_enabled,
    parse_id,
    parse_ms,
    reports_served,
)

_background: set[asyncio.Task[Any]] = set()


async def record_after(ms: int, job_id: str) -> None:
    await anyio.sleep(ms / 1000)
    append_job_record(job_id)


async def slow(request: Request) -> Response:
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    await anyio.sleep(ms / 1000)
    return PlainTextResponse(f"slept {ms} ms\n")


async def fast(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("alive\n")


async def ready_without_library(request: Request) -> Response:
    return PlainTextResponse("ready\n")


async def create_job(request: Request) -> Response:
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    job_id = parse_id(request.query_params.get("id"))
    if graceful_enabled():
        try:
            spawn(record_after(ms, job_id), name=f"job-{job_id}")
        except ShutdownInProgress:
            return JSONResponse({"id": job_id, "error": "shutting down"}, status_code=503)
    else:
        task = asyncio.create_task(record_after(ms, job_id))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return JSONResponse({"id": job_id, "accepted": True}, status_code=202)


async def create_report(request: Request) -> Response:
    """A durable job (only with GRACEFUL_DURABLE_URL set; see demo_services/_reports.py)."""
    from .._reports import accept

    status, body = accept(request.query_params)
    return JSONResponse(body, status_code=status)


async def create_background(request: Request) -> Response:
    """The same job as a Starlette background task: it runs after the response is sent."""
    ms = parse_ms(request.query_params.get("ms"), default=1000)
    job_id = parse_id(request.query_params.get("id"))
    return JSONResponse(
        {"id": job_id, "accepted": True},
        status_code=202,
        background=BackgroundTask(record_after, ms, job_id),
    )


async def events(request: Request) -> Response:
    """Server-sent events until the drain starts, then a polite goodbye."""

    async def stream() -> AsyncIterator[bytes]:
        stop = shutting_down() if graceful_enabled() else None
        count = 0
        while not stop:
            yield f"data: tick {count}\n\n".encode()
            count += 1
            if stop is None:
                await anyio.sleep(0.2)
                continue
            with anyio.move_on_after(0.2):
                await stop.wait()
        yield b"event: bye\ndata: server is restarting\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


def _bad_parameter(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


def build_starlette() -> Any:
    routes = [
        Route("/slow", slow),
        Route("/fast", fast),
        Route("/jobs", create_job, methods=["POST"]),
        Route("/background", create_background, methods=["POST"]),
        Route("/events", events),
        Route("/healthz", healthz),
    ]
    if not graceful_enabled():
        routes.append(Route("/readyz", ready_without_library))
    if reports_served():
        from .. import _reports  # registers the durable job before the app starts  # noqa: F401

        routes.append(Route("/reports", create_report, methods=["POST"]))
    return Starlette(routes=routes, exception_handlers={BadParameter: _bad_parameter})


def build_fastapi() -> Any:
    from ._fastapi import build

    return build()


def build() -> Any:
    """The app named by APP (starlette by default), wrapped unless GRACEFUL=0."""
    kind = os.environ.get("APP", "starlette")
    if kind not in ("starlette", "fastapi"):
        raise SystemExit(f"APP must be 'starlette' or 'fastapi', got {kind!r}")
    inner = build_starlette() if kind == "starlette" else build_fastapi()
    if not graceful_enabled():
        return inner
    # Deadline and pre-stop delay come from GRACEFUL_DRAIN_TIMEOUT / GRACEFUL_PRE_STOP_DELAY.
    return GracefulLifespan(inner)


app = build()


def main() -> None:
    import uvicorn

    from .._contract import configure_logging, serve_metrics_from_env

    configure_logging()
    serve_metrics_from_env()
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8080")),
        access_log=False,
        log_config=None,
    )
