"""tests/apps/longlived_asgi.py's app written from aiohttp's docs: an echo websocket, an endless
server-sent-events feed, an LLM answer over SSE, a long poll and a job route. graceful_web adds
``setup``, one ``mark_stream("finishing")``, the ``shutting_down()`` long poll and ``spawn``;
GRACEFUL=0 serves it bare (the job is a task the app keeps, the long poll just waits).

``python -m tests.apps.longlived_aiohttp`` serves it with ``web.run_app`` on LOOP (asyncio or
uvloop), its ``shutdown_timeout`` SHUTDOWN_TIMEOUT (60 s by default); gunicorn's aiohttp
workers serve ``tests.apps.longlived_aiohttp:build()``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiohttp import WSMsgType, web

from demo_services._contract import append_job_record, configure_logging, jobs_file

from .longlived_asgi import JOB_SECONDS, POLL_SECONDS, TOKEN_EVERY, TOKENS

GRACEFUL = os.environ.get("GRACEFUL", "1") != "0"
_tasks: set[asyncio.Task[None]] = set()


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


async def echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def feed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    number = 0
    while True:
        number += 1
        await response.write(f"id: {number}\ndata: tick {number}\n\n".encode())
        await asyncio.sleep(0.1)


async def answer(request: web.Request) -> web.StreamResponse:
    """An LLM's answer streamed token by token over SSE: it must finish, not be cut."""
    if GRACEFUL:
        from graceful_web import mark_stream

        mark_stream("finishing")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for number in range(TOKENS):
        await response.write(f"data: token{number}\n\n".encode())
        await asyncio.sleep(TOKEN_EVERY)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def poll(request: web.Request) -> web.StreamResponse:
    """A long poll: answers when there is news, or early when the process is stopping."""
    _record_event("poll-waiting")
    try:
        if GRACEFUL:
            from graceful_web import shutting_down

            await asyncio.wait_for(shutting_down().wait(), POLL_SECONDS)
            return web.json_response({"events": [], "reconnect": True})
        await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        pass
    return web.json_response({"events": []})


async def run_job(job_id: str) -> None:
    await asyncio.sleep(JOB_SECONDS)
    append_job_record(f"{job_id} {time.time():.3f}")


async def jobs(request: web.Request) -> web.StreamResponse:
    job_id = request.query["id"]
    if GRACEFUL:
        from graceful_web import spawn

        spawn(run_job(job_id), name=f"job-{job_id}")
    else:
        task = asyncio.create_task(run_job(job_id))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    return web.json_response({"id": job_id}, status=202)


def _record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


def build() -> web.Application:
    configure_logging()
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ws", echo)
    app.router.add_get("/feed", feed)
    app.router.add_get("/answer", answer)
    app.router.add_get("/poll", poll)
    app.router.add_post("/jobs", jobs)
    if os.environ.get("BAD") == "1":
        from ._longlived_bad import add_aiohttp_routes

        add_aiohttp_routes(app)
    if GRACEFUL:
        import graceful_web.aiohttp

        graceful_web.aiohttp.setup(app)
    return app


def main() -> None:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": int(os.environ["PORT"]),
        "access_log": None,
        "shutdown_timeout": float(os.environ.get("SHUTDOWN_TIMEOUT", "60")),
    }
    if os.environ.get("LOOP") == "uvloop":
        import uvloop

        options["loop"] = uvloop.new_event_loop()
    web.run_app(build(), print=None, **options)


if __name__ == "__main__":
    main()
