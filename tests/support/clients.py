"""Requests in flight from a thread while the test signals the server, jobs posted, and the
server's JSON log lines read back."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from .servers import Server

#: tests/apps/watch_app.py, the same service behind either adapter: aiohttp's run_app, or
#: GracefulLifespan under uvicorn (ADAPTER names which).
WATCH_APP = "tests.apps.watch_app"
ADAPTERS = pytest.mark.parametrize("adapter", ["aiohttp", "asgi"])

#: The fields of every progress line, beside its message.
FIELDS = {
    "graceful_requests",
    "graceful_jobs",
    "graceful_oldest_kind",
    "graceful_oldest_name",
    "graceful_oldest_age_s",
    "graceful_remaining_s",
}


class Background:
    """A request sent from a thread, so the test can signal the server while it is in flight."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send: Callable[[], httpx.Response]) -> None:
        try:
            self.response = send()
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 30.0) -> httpx.Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "request still running"
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response


def slow_request(server: Server, ms: int) -> Background:
    return Background(lambda: httpx.get(f"{server.url}/slow?ms={ms}", timeout=60))


def post_job(server: Server, job_id: str, ms: int) -> None:
    response = httpx.post(f"{server.url}/jobs?ms={ms}&id={job_id}", timeout=10)
    assert response.status_code == 202, response.text


def json_records(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log lines, parsed; other output (tracebacks) is skipped."""
    records = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def progress_records(server: Server) -> list[dict[str, Any]]:
    return [r for r in json_records(server) if str(r.get("message", "")).startswith("draining:")]
