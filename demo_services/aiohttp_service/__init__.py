"""The aiohttp demo service (see demo_services/_contract.py for its HTTP contract)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from graceful_web import ShutdownInProgress, shutting_down, spawn
from graceful_web.aiohttp import graceful_middleware, setup

from .._contract import (
    BadParameter,
    append_job_record,
    graceful_enabled,
    parse_id,
    parse_ms,
    reports_served,
)

_background: set[asyncio.Task[Any]] = set()


async def slow(request: web.Request) -> web.Response:
    ms = parse_ms(request.query.get("ms"), default=1000)
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


async def fast(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="alive\n")


async def ready_without_library(request: web.Request) -> web.Response:
    return web.Response(text="ready\n")


async def record_after(ms: int, job_id: str) -> None:
    await asyncio.sleep(ms / 1000)
    append_job_record(job_id)


async def create_job(request: web.Request) -> web.Response:
    ms = parse_ms(request.query.get("ms"), default=1000)
    job_id = parse_id(request.query.get("id"))
    if graceful_enabled():
        try:
            spawn(record_after(ms, job_id), name=f"job-{job_id}")
        except ShutdownInProgress:
            return web.json_response({"id": job_id, "error": "shutting down"}, status=503)
    else:
        task = asyncio.create_task(record_after(ms, job_id))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return web.json_response({"id": job_id, "accepted": True}, status=202)


async def create_report(request: web.Request) -> web.Response:
    """A durable job (only with GRACEFUL_DURABLE_URL set; see demo_services/_reports.py)."""
    from .._reports import accept

    status, body = accept(request.query)
    return web.json_response(body, status=status)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events until the drain starts, then a polite goodbye."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    stop = shutting_down() if graceful_enabled() else None
    count = 0
    while not stop:
        await response.write(f"data: tick {count}\n\n".encode())
        count += 1
        if stop is None:
            await asyncio.sleep(0.2)
            continue
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.2)
        except TimeoutError:
            pass
    await response.write(b"event: bye\ndata: server is restarting\n\n")
    await response.write_eof()
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bad_parameters_are_400(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadParameter as exc:
        return web.json_response({"error": str(exc)}, status=400)


def make_app(**setup_options: Any) -> web.Application:
    """The demo app; ``setup_options`` go to graceful_web.aiohttp.setup()."""
    app = web.Application(middlewares=[bad_parameters_are_400])
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/events", events)
    app.router.add_get("/healthz", healthz)
    if reports_served():
        from .. import _reports  # registers the durable job before the app starts  # noqa: F401

        app.router.add_post("/reports", create_report)
    if graceful_enabled():
        app.middlewares.append(graceful_middleware)
        # Deadline and pre-stop delay come from GRACEFUL_DRAIN_TIMEOUT / GRACEFUL_PRE_STOP_DELAY.
        setup(app, **setup_options)
    else:
        app.router.add_get("/readyz", ready_without_library)
    return app


def main() -> None:
    from .._contract import configure_logging, serve_metrics_from_env

    configure_logging()
    serve_metrics_from_env()
    web.run_app(
        make_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8080")),
        print=None,
        access_log=None,
    )
