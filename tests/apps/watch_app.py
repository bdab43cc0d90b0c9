"""The aiohttp demo service with JSON logs and drain hooks, run in a real process by the tests.

Logs go to stdout as JSON lines (python-json-logger). Hooks write what they saw to
JOBS_FILE.events. STARTED_HOOK=record (default) | slow (takes HOOK_MS) | hang | raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiohttp import web
from pythonjsonlogger.json import JsonFormatter

from demo_services._contract import jobs_file
from demo_services.aiohttp_service import make_app
from graceful_web import DrainReport
from graceful_web._core import current_drain


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


async def stats(request: web.Request) -> web.Response:
    drain = current_drain()
    # This request is itself in flight: leave it out.
    return web.json_response(
        {"requests": drain.requests_in_flight - 1, "jobs": drain.jobs_in_flight}
    )


def configure_json_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main() -> None:
    configure_json_logging()
    app = make_app(on_drain_started=on_drain_started, on_drain_finished=on_drain_finished)
    app.router.add_get("/_stats", stats)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)


if __name__ == "__main__":
    main()
