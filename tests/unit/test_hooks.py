"""Drain hooks in process: what they must be, how they are bounded, under asyncio and trio."""

from __future__ import annotations

import logging

import anyio
import pytest

from graceful_web import DrainReport
from graceful_web._config import Config
from graceful_web._current import current_drain
from graceful_web.aiohttp import setup


def test_hooks_must_be_callable() -> None:
    from aiohttp import web

    with pytest.raises(TypeError, match="on_drain_started must be callable"):
        setup(web.Application(), on_drain_started="deregister")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_drain_finished must be callable"):
        Config.build(on_drain_finished=42)  # type: ignore[arg-type]


async def test_a_hung_finished_hook_is_cancelled_and_the_drain_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hang(report: DrainReport) -> None:
        await anyio.sleep_forever()

    drain = current_drain()
    drain.configure(Config.build(drain_timeout=0.2, progress_interval=0, on_drain_finished=hang))
    with caplog.at_level(logging.WARNING, logger="graceful_web"):
        report = await drain.wait("test")
    assert report.exit_code == 0
    assert "on_drain_finished hook was still running after 0.5 s: cancelled" in caplog.text


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hooks_run_under_asyncio_and_trio(backend: str) -> None:
    seen: list[str] = []

    async def started(reason: str) -> None:
        await anyio.sleep(0.05)
        seen.append(f"started:{reason}")

    def finished(report: DrainReport) -> None:
        seen.append(f"finished:{report.drained_requests}")

    async def drain_one_request() -> None:
        drain = current_drain()
        drain.configure(
            Config.build(drain_timeout=5, on_drain_started=started, on_drain_finished=finished)
        )
        work = drain.request_started("GET /x", lambda: None)
        drain.begin("SIGTERM")
        drain.discard(work)
        await drain.wait()

    anyio.run(drain_one_request, backend=backend)
    assert seen == ["started:SIGTERM", "finished:1"]
