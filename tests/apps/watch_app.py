"""A demo service with JSON logs and drain hooks, run in a real process by the tests.

ADAPTER=aiohttp (default: the aiohttp demo service under web.run_app) | asgi (the Starlette
demo service in GracefulLifespan, under uvicorn.run).
Logs go to stdout as JSON lines (python-json-logger). Hooks write what they saw to
JOBS_FILE.events. STARTED_HOOK=record (default) | slow (takes HOOK_MS) | hang | raise;
FINISHED_HOOK=record (default) | hang.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from demo_services._contract import jobs_file
from graceful_web import DrainReport
from graceful_web._current import current_drain


def record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


async def on_drain_started(reason: str) -> None:
    mode = os.environ.get("STARTED_HOOK", "record")
    drain = current_drain()
    record_event(
        f"started:{reason}:requests={drain.requests_in_flight}:jobs={drain.jobs_in_flight}"
    )
    if mode == "raise":
        raise RuntimeError("service discovery is down")
    if mode == "hang":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record_event("started-hook-cancelled")
            raise
    if mode == "slow":
        await asyncio.sleep(int(os.environ.get("HOOK_MS", "1000")) / 1000)
    record_event("started-hook-done")


async def on_drain_finished(report: DrainReport) -> None:
    await asyncio.sleep(0)
    record_event(
        f"finished:{report.reason}:requests={report.drained_requests}:jobs={report.drained_jobs}"
        f":abandoned={len(report.abandoned)}"
    )
    if os.environ.get("FINISHED_HOOK") == "hang":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            record_event("finished-hook-cancelled")
            raise


def in_flight() -> dict[str, int]:
    drain = current_drain()
    # The request asking is itself in flight: leave it out.
    return {"requests": drain.requests_in_flight - 1, "jobs": drain.jobs_in_flight}


def configure_json_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


HOOKS: dict[str, Any] = {
    "on_drain_started": on_drain_started,
    "on_drain_finished": on_drain_finished,
}


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    from demo_services.aiohttp_service import make_app

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(in_flight())

    app = make_app(**HOOKS)
    app.router.add_get("/_stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_asgi(port: int) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from demo_services.asgi_service import build_starlette
    from graceful_web.asgi import GracefulLifespan

    async def stats(request: Request) -> Response:
        return JSONResponse(in_flight())

    inner = build_starlette()
    inner.router.routes.append(Route("/_stats", stats))
    app = GracefulLifespan(inner, **HOOKS)
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_config=None)


def main() -> None:
    configure_json_logging()
    port = int(os.environ["PORT"])
    adapter = os.environ.get("ADAPTER", "aiohttp")
    if adapter == "aiohttp":
        serve_aiohttp(port)
    elif adapter == "asgi":
        serve_asgi(port)
    else:
        raise SystemExit(f"ADAPTER must be 'aiohttp' or 'asgi', got {adapter!r}")


if __name__ == "__main__":
    main()
