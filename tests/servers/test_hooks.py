"""Drain-started and drain-finished hooks: when they run, what they get, how they are bounded."""

from __future__ import annotations

import logging
import signal

import anyio
import pytest

from graceful_web import DrainReport
from graceful_web._config import Config
from graceful_web._current import current_drain
from graceful_web.aiohttp import setup
from tests.support.clients import post_job, slow_request
from tests.support.servers import StartServer

APP = "tests.apps.watch_app"
#: The same service behind either adapter: aiohttp's run_app, or GracefulLifespan under uvicorn.
ADAPTERS = pytest.mark.parametrize("adapter", ["aiohttp", "asgi"])


@ADAPTERS
def test_drain_started_hook_runs_at_the_signal_while_work_is_in_flight(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(APP, env={"ADAPTER": adapter})
    pending = slow_request(server, 1500)
    server.wait_in_flight(requests=1)
    post_job(server, "h1", 1500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert pending.result().status_code == 200
    assert server.events()[0] == "started:SIGTERM:requests=1:jobs=1"


@ADAPTERS
def test_drain_finished_hook_receives_the_report(start_server: StartServer, adapter: str) -> None:
    server = start_server(APP, env={"ADAPTER": adapter})
    pending = slow_request(server, 1000)
    server.wait_in_flight(requests=1)
    post_job(server, "h2", 500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert pending.result().status_code == 200
    assert server.events()[-1] == "finished:SIGTERM:requests=1:jobs=1:abandoned=0"
    assert server.jobs() == ["h2"]


@ADAPTERS
def test_drain_waits_for_an_async_started_hook(start_server: StartServer, adapter: str) -> None:
    server = start_server(
        APP, env={"ADAPTER": adapter, "STARTED_HOOK": "slow", "HOOK_MS": "800"}
    )
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    events = server.events()
    assert events[1:] == ["started-hook-done", "finished:SIGTERM:requests=0:jobs=0:abandoned=0"]


@ADAPTERS
def test_a_hung_started_hook_is_cancelled_at_the_deadline(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(
        APP, env={"ADAPTER": adapter, "STARTED_HOOK": "hang", "GRACEFUL_DRAIN_TIMEOUT": "1"}
    )
    post_job(server, "h3", 100)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0  # no protected work was abandoned
    assert "started-hook-cancelled" in server.events()
    assert "on_drain_started hook was still running at the deadline: cancelled" in server.log()
    assert server.jobs() == ["h3"]


@ADAPTERS
def test_a_failing_started_hook_is_logged_and_the_drain_goes_on(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(APP, env={"ADAPTER": adapter, "STARTED_HOOK": "raise"})
    post_job(server, "h4", 500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["h4"]
    assert "RuntimeError: service discovery is down" in server.log()
    assert server.events()[-1] == "finished:SIGTERM:requests=0:jobs=1:abandoned=0"


@ADAPTERS
def test_a_hung_finished_hook_is_cancelled_at_the_deadline_and_the_process_exits_0(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(
        APP, env={"ADAPTER": adapter, "FINISHED_HOOK": "hang", "GRACEFUL_DRAIN_TIMEOUT": "1"}
    )
    post_job(server, "h5", 100)
    server.send(signal.SIGTERM)
    # Cancelled at the deadline, before the watchdog's hard exit (status 70) could fire.
    assert server.wait_exit() == 0
    assert server.jobs() == ["h5"]
    assert server.events()[-2:] == [
        "finished:SIGTERM:requests=0:jobs=1:abandoned=0",
        "finished-hook-cancelled",
    ]
    assert "on_drain_finished hook was still running after" in server.log()
    assert "hard exit" not in server.log()


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
