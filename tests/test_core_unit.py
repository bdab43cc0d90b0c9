"""In-process checks of the core and the aiohttp wiring, beside the real-process tests."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import graceful_web
from graceful_web import ShutdownInProgress, spawn
from graceful_web._config import Config, parse_signals
from graceful_web._current import current_drain
from graceful_web._signals import install
from graceful_web.aiohttp import graceful_middleware, setup

# -- configuration errors say what to do --------------------------------------------------


def test_negative_deadline_is_refused_at_setup() -> None:
    with pytest.raises(ValueError, match="drain_timeout must be more than zero seconds, got -1"):
        Config.build(drain_timeout=-1)


def test_pre_stop_delay_must_fit_inside_the_deadline() -> None:
    with pytest.raises(ValueError, match="must be shorter than drain_timeout"):
        Config.build(drain_timeout=5, pre_stop_delay=5)


def test_the_idle_connection_grace_is_1_s_or_a_quarter_of_what_the_deadline_leaves() -> None:
    assert Config.build(drain_timeout=25).idle_connection_grace == 1.0
    assert Config.build(drain_timeout=3, pre_stop_delay=1).idle_connection_grace == 0.5
    assert Config.build(drain_timeout=3, idle_connection_grace=0).idle_connection_grace == 0.0


def test_unknown_signal_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal name 'SIGTERMINATE'"):
        parse_signals(["SIGTERMINATE"])


def test_signal_names_numbers_and_short_names_are_accepted() -> None:
    assert parse_signals(["term", 2, signal.SIGHUP]) == (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
    )


def test_deadline_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACEFUL_DRAIN_TIMEOUT", "7.5")
    assert Config.build().drain_timeout == 7.5
    assert Config.build(drain_timeout=3).drain_timeout == 3.0  # code wins over environment


def test_readiness_path_must_be_a_path() -> None:
    with pytest.raises(ValueError, match="readiness_path must be a path starting with '/'"):
        Config.build(readiness_path="readyz")


def test_setup_refuses_what_is_not_an_application() -> None:
    with pytest.raises(TypeError, match="setup\\(\\) takes an aiohttp web.Application"):
        setup(object())  # type: ignore[arg-type]


def test_setup_twice_is_refused() -> None:
    app = web.Application()
    setup(app)
    with pytest.raises(RuntimeError, match="already called"):
        setup(app)


def test_setup_adds_the_middleware_once() -> None:
    app = web.Application(middlewares=[graceful_middleware])
    setup(app)
    assert list(app.middlewares).count(graceful_middleware) == 1


def test_spawn_outside_an_event_loop_says_why() -> None:
    async def job() -> None:
        pass

    coro = job()
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        spawn(coro)
    coro.close()


async def test_spawn_takes_a_coroutine_not_a_function() -> None:
    async def job() -> None:
        pass

    with pytest.raises(TypeError, match=r"spawn\(\) takes a coroutine"):
        spawn(job)  # type: ignore[arg-type]


# -- the registry -------------------------------------------------------------------------


async def test_drain_waits_for_a_job_and_reports_it() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    finished: list[str] = []

    async def job() -> None:
        await asyncio.sleep(0.05)
        finished.append("done")

    task = spawn(job(), name="unit-job")
    assert task.get_name() == "unit-job"
    report = await drain.wait("test")
    assert finished == ["done"]
    assert (report.drained_jobs, report.abandoned, report.exit_code) == (1, (), 0)


async def test_late_spawn_is_refused_and_the_coroutine_closed() -> None:
    drain = current_drain()
    drain.begin("test")
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")

    with pytest.raises(ShutdownInProgress, match="this job was not started"):
        spawn(job())
    await asyncio.sleep(0)
    assert ran == []
    assert drain.refused_jobs == 1


async def test_protect_waits_for_an_existing_task() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    existing = asyncio.ensure_future(asyncio.sleep(0.05, result="kept"))
    protected = graceful_web.protect(existing, name="existing")
    report = await drain.wait("test")
    assert protected.result() == "kept"
    assert report.drained_jobs == 1


async def test_deadline_cancels_and_reports_by_name() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=0.1))
    spawn(asyncio.sleep(30), name="sleeper")
    report = await drain.wait("test")
    assert [(w.kind, w.name) for w in report.abandoned] == [("job", "sleeper")]
    assert report.exit_code == graceful_web.EXIT_ABANDONED


async def test_shutting_down_flag_and_wait() -> None:
    flag = graceful_web.shutting_down()
    assert not flag
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    current_drain().begin("test")
    await asyncio.wait_for(waiter, 1)
    assert flag.is_set()


async def test_in_process_app_answers_readiness(aiohttp_client: Any) -> None:
    app = web.Application()
    setup(app, handle_signals=False)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert response.status == 200
    current_drain().begin("test")
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.text() == "draining\n"


def test_a_route_of_the_app_at_the_readiness_path_is_refused_at_setup() -> None:
    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app = web.Application()
    app.router.add_get("/readyz", mine)
    with pytest.raises(ValueError, match="already has a route at '/readyz'.*readiness_path=None"):
        setup(app, handle_signals=False)


async def test_without_a_readiness_path_the_app_keeps_its_own(aiohttp_client: Any) -> None:
    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app = web.Application()
    app.router.add_get("/readyz", mine)
    setup(app, handle_signals=False, readiness_path=None)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert (response.status, await response.text()) == (200, "mine")


# -- platforms without loop.add_signal_handler (Windows) ----------------------------------


class LoopWithoutSignalHandlers(asyncio.SelectorEventLoop):
    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def test_signal_fallback_routes_signals_through_the_loop() -> None:
    loop = LoopWithoutSignalHandlers()
    seen: list[signal.Signals] = []
    chained: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: chained.append(signum))
    try:

        async def scenario() -> None:
            installed = install(asyncio.get_running_loop(), [signal.SIGUSR1], seen.append)
            assert installed is not None
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(200):
                    if seen:
                        break
                    await asyncio.sleep(0.01)
                assert installed.deliver(signal.SIGUSR1)
            finally:
                installed.uninstall()

        loop.run_until_complete(scenario())
    finally:
        loop.close()
        signal.signal(signal.SIGUSR1, previous)
    assert seen == [signal.SIGUSR1]
    assert chained == [signal.SIGUSR1]  # the handler it replaced is still reachable


async def test_a_request_in_flight_at_the_drain_is_named_aged_and_drained() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5))
    release = asyncio.Event()

    async def handler() -> None:
        task = asyncio.current_task()
        assert task is not None
        assert drain.enter_request(task, lambda path: f"GET {path}", "/slow")
        # A nested app's middleware on the same task does not count the request twice.
        assert not drain.enter_request(task, lambda path: f"GET {path}", "/slow")
        try:
            await release.wait()
        finally:
            drain.exit_request(task)

    request = asyncio.create_task(handler())
    await asyncio.sleep(0)
    assert drain.requests_in_flight == 1
    drain.begin("test")
    assert [(work.kind, work.name) for work in drain._work] == [("request", "GET /slow")]
    release.set()
    report = await drain.wait()
    await request
    assert (report.drained_requests, report.abandoned, drain.requests_in_flight) == (1, (), 0)
