"""The aiohttp demo service plus test-only routes, run in a real process by the tests.

MODE=run_app (default) | runner (AppRunner + TCPSite) | unwired (middleware without setup)
HANDLE_SIGNALS=0 runs run_app(handle_signals=False); SHUTDOWN_TIMEOUT sets aiohttp's own.
SIGNALS=SIGINT,SIGTERM,SIGHUP chooses the signals that start the drain.
STARTUP_DELAY_MS=N adds a startup hook that logs "startup hook running" and sleeps N ms;
STARTUP_HOOK_FIRST=1 runs it before graceful_web's own startup hook.
STOP_AFTER_MS=N (MODE=runner) stops the runner after N ms without any signal.
RECORD_REQUESTS=1 records "start:<X-Request-Id>" in JOBS_FILE.events as each request starts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

import graceful_web
from demo_services._contract import append_job_record, configure_logging, jobs_file
from demo_services.aiohttp_service import make_app, record_after
from graceful_web import AbandonedWork, ShutdownInProgress, spawn
from graceful_web._core import current_drain
from graceful_web.aiohttp import graceful_middleware

_unprotected: set[asyncio.Task[Any]] = set()


def record_event(line: str) -> None:
    """What the tests check besides finished jobs goes to JOBS_FILE.events."""
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


async def stats(request: web.Request) -> web.Response:
    drain = current_drain()
    # This request is itself in flight: leave it out.
    return web.json_response(
        {"requests": drain.requests_in_flight - 1, "jobs": drain.jobs_in_flight}
    )


async def unprotected(request: web.Request) -> web.Response:
    ms = int(request.query["ms"])
    job_id = request.query["id"]

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
    return web.json_response({"id": job_id}, status=202)


async def spawn_after(request: web.Request) -> web.Response:
    """Follow-up work: the handler sleeps, then spawns a job (maybe during the drain)."""
    await asyncio.sleep(int(request.query["ms"]) / 1000)
    spawn(record_after(0, request.query["id"]), name=f"follow-up-{request.query['id']}")
    return web.Response(text="spawned\n")


async def failing(request: web.Request) -> web.Response:
    async def explode() -> None:
        await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
        raise RuntimeError(f"job {request.query['id']} exploded")

    spawn(explode(), name=f"fail-{request.query['id']}")
    return web.json_response({}, status=202)


async def big(request: web.Request) -> web.StreamResponse:
    """A response of ``mb`` MiB, written in chunks: a client that never reads it fills the
    socket buffers, and the handler waits on the write."""
    response = web.StreamResponse()
    await response.prepare(request)
    chunk = b"x" * 65536
    for _ in range(int(request.query["mb"]) * 16):
        await response.write(chunk)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    """Reads the whole body: a client that sends it slowly keeps this request in flight."""
    body = await request.read()
    return web.Response(text=f"read {len(body)} bytes\n")


async def spawn_then_slow(request: web.Request) -> web.Response:
    """Spawns a job first, then takes ``ms`` more before answering."""
    job_id = request.query["id"]
    spawn(record_after(int(request.query["job_ms"]), job_id), name=f"job-{job_id}")
    try:
        await asyncio.sleep(int(request.query["ms"]) / 1000)
    except asyncio.CancelledError:
        record_event(f"handler-cancelled:{job_id}")
        raise
    record_event(f"handler-finished:{job_id}")
    return web.Response(text="done\n")


async def stubborn(job_id: str) -> None:
    """Swallows every cancellation and keeps going."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record_event(f"ignored-cancel:{job_id}")


async def blocking(job_id: str, ms: int) -> None:
    """Blocks the event loop for ``ms`` once the drain has started."""
    await graceful_web.shutting_down().wait()
    record_event(f"blocking:{job_id}")
    time.sleep(ms / 1000)
    append_job_record(job_id)


async def fan_out(job_id: str, child_ms: list[int]) -> None:
    """Once the drain has started, spawns one more job for each entry of ``child_ms``."""
    await graceful_web.shutting_down().wait()
    for n, ms in enumerate(child_ms, start=1):
        spawn(record_after(ms, f"{job_id}-child-{n}"), name=f"{job_id}-child-{n}")
    append_job_record(job_id)


async def misbehaving(request: web.Request) -> web.Response:
    """POST /misbehaving?kind=stubborn|block|fan-out&id=X&ms=N[,N...]"""
    kind = request.query["kind"]
    job_id = request.query["id"]
    ms = [int(part) for part in request.query.get("ms", "0").split(",")]
    if kind == "stubborn":
        spawn(stubborn(job_id), name=job_id)
    elif kind == "block":
        spawn(blocking(job_id, ms[0]), name=job_id)
    elif kind == "fan-out":
        spawn(fan_out(job_id, ms), name=job_id)
    else:
        raise web.HTTPBadRequest(text=f"unknown kind {kind!r}\n")
    return web.json_response({"id": job_id}, status=202)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id")
    if request_id is not None:
        record_event(f"start:{request_id}")
    return await handler(request)


async def slow_startup(app: web.Application) -> None:
    print("startup hook running", flush=True)
    await asyncio.sleep(int(os.environ["STARTUP_DELAY_MS"]) / 1000)


async def outsider(app: web.Application) -> None:
    """An unprotected background loop that tries to spawn once the drain has started."""
    await graceful_web.shutting_down().wait()
    try:
        spawn(record_after(0, "outsider-accepted"), name="outsider")
    except ShutdownInProgress as exc:
        record_event(f"outsider-refused: {exc}")


def on_abandoned(abandoned: tuple[AbandonedWork, ...]) -> None:
    for work in abandoned:
        record_event(f"abandoned:{work.kind}:{work.name}")


async def start_outsider(app: web.Application) -> None:
    task = asyncio.create_task(outsider(app))
    _unprotected.add(task)


def build() -> web.Application:
    mode = os.environ.get("MODE", "run_app")
    if mode == "unwired":
        app = web.Application(middlewares=[graceful_middleware])
        app.router.add_get("/healthz", lambda request: _ok())
    else:
        signals = os.environ.get("SIGNALS")
        app = make_app(on_abandoned=on_abandoned, signals=signals.split(",") if signals else None)
    if os.environ.get("RECORD_REQUESTS") == "1":
        app.middlewares.insert(0, record_requests)
    if os.environ.get("STARTUP_DELAY_MS"):
        if os.environ.get("STARTUP_HOOK_FIRST") == "1":
            app.on_startup.insert(0, slow_startup)
        else:
            app.on_startup.append(slow_startup)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/unprotected", unprotected)
    app.router.add_get("/spawn-after", spawn_after)
    app.router.add_post("/failing", failing)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/spawn-then-slow", spawn_then_slow)
    app.router.add_post("/misbehaving", misbehaving)
    app.on_startup.append(start_outsider)
    return app


async def _ok() -> web.Response:
    return web.Response(text="alive\n")


async def run_with_runner(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop_after = os.environ.get("STOP_AFTER_MS")
    try:
        if stop_after:
            await asyncio.sleep(int(stop_after) / 1000)  # the program decides to stop
        else:
            await asyncio.Event().wait()  # until SIGTERM / SIGINT
    finally:
        await runner.cleanup()


def main() -> None:
    configure_logging()
    port = int(os.environ["PORT"])
    app = build()
    if os.environ.get("MODE") == "runner":
        asyncio.run(run_with_runner(app, port))
        return
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        handle_signals=os.environ.get("HANDLE_SIGNALS", "1") != "0",
        shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "60")),
    )


if __name__ == "__main__":
    main()
