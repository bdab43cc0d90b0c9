"""The smallest aiohttp app the benchmarks need; ``GRACEFUL=0`` runs it without graceful_web.

GET /fast, GET /work (1 ms of awaited work and a JSON body), GET /slow?ms=N&after=K (sleeps N
ms once K slow requests have started), POST /jobs?ms=N (a protected job with the library, a
bare task without), GET /stats (slow requests started / running), GET /healthz; GET /ws (an
echo websocket) and GET /events (an endless server-sent-events feed), written as aiohttp's
docs write them. HOST, PORT, DONE_FILE, GRACEFUL_DRAIN_TIMEOUT and SHUTDOWN_TIMEOUT (run_app's
own, default 60 s) from the environment.
``python -m bench.aiohttp_app uvloop`` runs it on uvloop's event loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def fast(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def work(request: web.Request) -> web.Response:
    await asyncio.sleep(WORK_MS / 1000)
    return web.json_response(WORK_BODY)


async def slow(request: web.Request) -> web.Response:
    query = request.query
    await in_flight.sleep(int(query.get("ms", "1000")), int(query.get("after", "0")))
    done.mark("request")
    return web.Response(text="slept\n")


async def job(ms: int) -> None:
    await asyncio.sleep(ms / 1000)
    done.mark("job")


async def create_job(request: web.Request) -> web.Response:
    ms = int(request.query.get("ms", "1000"))
    if graceful_enabled():
        from graceful_web import spawn

        spawn(job(ms), name="bench-job")
    else:
        task = asyncio.create_task(job(ms))
        _bare_jobs.add(task)
        task.add_done_callback(_bare_jobs.discard)
    return web.Response(status=202, text="accepted\n")


async def stats(request: web.Request) -> web.Response:
    return web.Response(text=in_flight.as_json(), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="alive\n")


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    tick = 0
    while True:
        await response.write(f"data: {tick}\n\n".encode())
        tick += 1
        await asyncio.sleep(EVENT_INTERVAL_S)


@web.middleware
async def passes_on(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/work", work)
    app.router.add_get("/slow", slow)
    app.router.add_post("/jobs", create_job)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", echo)
    app.router.add_get("/events", events)
    if graceful_enabled():
        from graceful_web.aiohttp import setup

        setup(app)  # deadline from GRACEFUL_DRAIN_TIMEOUT
    elif empty_middleware():
        app.middlewares.append(passes_on)
    return app


def main() -> None:
    configure_logging()
    loop = None
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        make_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        backlog=4096,  # 10 000 clients connect at once in the in-flight benchmark
        shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "60")),
        print=None,
        access_log=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
