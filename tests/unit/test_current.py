"""spawn, protect and shutting_down: the public calls on the current loop's drain."""

from __future__ import annotations

import asyncio

import pytest

import graceful_web
from graceful_web import ShutdownInProgress, spawn
from graceful_web._config import Config
from graceful_web._current import current_drain


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


async def test_shutting_down_flag_and_wait() -> None:
    flag = graceful_web.shutting_down()
    assert not flag
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    current_drain().begin("test")
    await asyncio.wait_for(waiter, 1)
    assert flag.is_set()
