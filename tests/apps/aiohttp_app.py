"""The aiohttp demo service plus test-only routes, run in a real process by the tests.

MODE=run_app (default) | runner (AppRunner + TCPSite) | unwired (middleware without setup)
HANDLE_SIGNALS=0 runs run_app(handle_signals=False); SHUTDOWN_TIMEOUT sets aiohttp's own.
SIGNALS=SIGINT,SIGTERM,SIGHUP chooses the signals that start the drain.
STARTUP_DELAY_MS=N adds a startup hook that logs "startup hook running" and sleeps N ms;
STARTUP_HOOK_FIRST=1 runs it before graceful_web's own startup hook.
STOP_AFTER_MS=N (MODE=runner) stops the runner after N ms without any signal.
RECORD_REQUESTS=1 records "start:<X-Request-Id>" in JOBS_FILE.events as each request starts.
LOOP=asyncio (default) | uvloop | plain (a loop without add_reader(), whose signal handlers
graceful_web cannot put behind its own).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from demo_services._contract import configure_logging
from demo_services.aiohttp_service import make_app
from graceful_web import spawn
from graceful_web._current import current_drain
from graceful_web.aiohttp import graceful_middleware

from ._work import (
    keep_unprotected,
    on_abandoned,
    outsider,
    record_after,
    record_event,
    spawn_misbehaving,
    start_unprotected,
)


async def stats(request: web.Request) -> web.Response:
    drain = current_drain()
    # This request is itself in flight: leave it out.
    return web.json_response(
        {"requests": drain.requests_in_flight - 1, "jobs": drain.jobs_in_flight}
    )


async def unprotected(request: web.Request) -> web.Response:
    job_id = request.query["id"]
    start_unprotected(int(request.query["ms"]), job_id)
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


async def misbehaving(request: web.Request) -> web.Response:
    """POST /misbehaving?kind=stubborn|block|fan-out&id=X&ms=N[,N...]"""
    kind = request.query["kind"]
    job_id = request.query["id"]
    ms = [int(part) for part in request.query.get("ms", "0").split(",")]
    try:
        spawn_misbehaving(kind, job_id, ms)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
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


async def start_outsider(app: web.Application) -> None:
    keep_unprotected(asyncio.create_task(outsider()))


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


class LoopWithoutReaders(asyncio.SelectorEventLoop):
    """A loop of a kind graceful_web does not know: it cannot watch a file descriptor."""

    def add_reader(self, fd: object, callback: object, *args: object) -> None:
        raise NotImplementedError


def new_loop() -> asyncio.AbstractEventLoop:
    kind = os.environ.get("LOOP", "asyncio")
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "plain":
        return LoopWithoutReaders()
    return asyncio.new_event_loop()


def main() -> None:
    configure_logging()
    port = int(os.environ["PORT"])
    app = build()
    if os.environ.get("MODE") == "runner":
        if os.environ.get("LOOP") == "uvloop":
            import uvloop

            uvloop.run(run_with_runner(app, port))
            return
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(run_with_runner(app, port))
        return
    web.run_app(
        app,
        loop=new_loop(),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        handle_signals=os.environ.get("HANDLE_SIGNALS", "1") != "0",
        shutdown_timeout=float(os.environ.get("SHUTDOWN_TIMEOUT", "60")),
        reuse_port=os.environ.get("REUSE_PORT") == "1" or None,
    )


if __name__ == "__main__":
    main()
