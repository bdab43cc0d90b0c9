"""The demo service as a FastAPI app (``APP=fastapi``).

No ``from __future__ import annotations`` here: FastAPI reads the parameter annotations at
runtime to tell a query parameter from an injected ``BackgroundTasks``.
"""

from typing import Any

from fastapi import BackgroundTasks, FastAPI

from .._contract import BadParameter, graceful_enabled, parse_id, parse_ms, reports_served
from . import (
    _bad_parameter,
    create_job,
    create_report,
    events,
    fast,
    healthz,
    ready_without_library,
    record_after,
    slow,
)


def build() -> FastAPI:
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    api.add_exception_handler(BadParameter, _bad_parameter)
    for path, endpoint, methods in (
        ("/slow", slow, ["GET"]),
        ("/fast", fast, ["GET"]),
        ("/jobs", create_job, ["POST"]),
        ("/events", events, ["GET"]),
        ("/healthz", healthz, ["GET"]),
    ):
        api.add_route(path, endpoint, methods=methods)
    if not graceful_enabled():
        api.add_route("/readyz", ready_without_library, methods=["GET"])
    if reports_served():
        from .. import _reports  # registers the durable job before the app starts  # noqa: F401

        api.add_route("/reports", create_report, methods=["POST"])

    @api.post("/background", status_code=202)
    async def fastapi_background(
        background: BackgroundTasks, ms: str = "1000", id: str = ""
    ) -> Any:
        """The job as a FastAPI background task, run after the response is sent."""
        job_id = parse_id(id)
        background.add_task(record_after, parse_ms(ms), job_id)
        return {"id": job_id, "accepted": True}

    return api
