"""graceful_web.run() in process: what it returns and what it refuses, saying what to do."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import graceful_web


async def answer() -> int:
    return 42


def test_run_returns_what_main_returns() -> None:
    assert graceful_web.run(answer(), drain_timeout=5) == 42


def test_run_takes_a_coroutine() -> None:
    with pytest.raises(TypeError, match=r"run\(\) takes a coroutine, e.g. run\(main\(\)\)"):
        graceful_web.run(answer)  # type: ignore[arg-type]


def test_bad_deadline_is_refused_before_main_starts() -> None:
    main = answer()
    with pytest.raises(ValueError, match="drain_timeout must be more than zero seconds"):
        graceful_web.run(main, drain_timeout=-1)
    assert inspect.getcoroutinestate(main) == inspect.CORO_CLOSED


async def test_run_inside_a_running_loop_says_what_to_do() -> None:
    main = answer()
    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        graceful_web.run(main)
    assert inspect.getcoroutinestate(main) == inspect.CORO_CLOSED
    await asyncio.sleep(0)


def test_a_loop_instead_of_a_loop_factory_is_refused_with_what_to_pass() -> None:
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        with pytest.raises(TypeError, match=r"e\.g\. uvloop\.new_event_loop \(not"):
            graceful_web.run(asyncio.sleep(0), loop_factory=loop)  # type: ignore[arg-type]
    finally:
        loop.close()
