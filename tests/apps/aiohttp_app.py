"""The aiohttp demo service plus test-only routes, run in a real process by the tests.

MODE=run_app (default) | runner (AppRunner + TCPSite) | unwired (middleware without setup)
HANDLE_SIGNALS=0 runs run_app(handle_signals=False); SHUTDOWN_TIMEOUT sets aiohttp's own.
"""

from __future__ import annotations

import asyncio
import os
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
        app = make_app(on_abandoned=on_abandoned)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/unprotected", unprotected)
    app.router.add_get("/spawn-after", spawn_after)
    app.router.add_post("/failing", failing)
    app.on_startup.append(start_outsider)
    return app


async def _ok() -> web.Response:
    return web.Response(text="alive\n")


async def run_with_runner(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
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
