"""The drain of the running event loop, and the public functions that act on it: ``spawn``,
``protect`` and ``shutting_down``.

One drain per event loop, so independent loops (tests, threads) never share state.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from ._drain import Drain
from ._registry import SpawnsItself

T = TypeVar("T")

drains: weakref.WeakKeyDictionary[object, Drain] = weakref.WeakKeyDictionary()

# The drain asked for last, with a weak reference to its loop: every request and job asks,
# and most processes run one loop, so most lookups end here instead of in the dictionary.
_last_drain: tuple[weakref.ref[object], Drain] | None = None


_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop


def current_drain() -> Drain:
    last = _last_drain
    if last is not None:
        loop = _running_loop()
        if loop is not None and last[0]() is loop:
            return last[1]
    return _find_drain()


def _find_drain() -> Drain:
    global _last_drain
    key = _loop_key()
    drain = drains.get(key)
    if drain is None:
        drain = drains[key] = Drain()
        if isinstance(key, asyncio.AbstractEventLoop):
            drain.work.loop = key
    _last_drain = (weakref.ref(key), drain)
    return drain


def _loop_key() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
    raise RuntimeError(
        "graceful_web needs a running event loop: call it from async code "
        "(a request handler, a startup hook or a coroutine started by graceful_web.run)"
    )


def request_done() -> None:
    """The request the current task was serving as the drain began is done: it is drained.
    (Adapters call it only once the process is no longer serving.)"""
    task = asyncio.current_task()
    if task is not None:
        current_drain().exit_request(task)


@overload
def spawn(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]: ...


@overload
def spawn(coro: SpawnsItself[T], *, name: str | None = None) -> asyncio.Task[T]: ...


def spawn(
    coro: Coroutine[Any, Any, T] | SpawnsItself[T], *, name: str | None = None
) -> asyncio.Task[T]:
    """Start ``coro`` as a protected background job and return its task.

    Use it where you would use ``asyncio.create_task``: shutdown waits for the job (until the
    drain deadline) instead of cancelling it. Raises ``ShutdownInProgress`` once the drain has
    started, unless called from a request or job that is itself still being drained. A call
    of a ``@durable.job`` function is recorded first (see ``graceful_web.durable``).
    """
    # current_drain(), inline: this runs for every job.
    loop = _running_loop()
    last = _last_drain
    if loop is not None and last is not None and last[0]() is loop:
        return last[1].work.spawn(coro, name=name, loop=loop)
    return _find_drain().work.spawn(coro, name=name, loop=loop)


def protect(awaitable: Awaitable[T], *, name: str | None = None) -> asyncio.Future[T]:
    """Protect work that already exists (a task or future, or a coroutine).

    Returns a future to await in place of the original. Shutdown waits for the work as it
    waits for a spawned job.
    """
    return current_drain().work.protect(awaitable, name=name)


@dataclass
class ShuttingDown:
    """Tells long-lived handlers (websockets, server-sent events, long polls) that the
    process is draining. ``bool(shutting_down())`` is a cheap check; ``await
    shutting_down().wait()`` returns when the drain starts."""

    _drain: Drain = field(repr=False)

    def is_set(self) -> bool:
        return self._drain.draining

    def __bool__(self) -> bool:
        return self._drain.draining

    async def wait(self) -> None:
        await self._drain.wait_shutting_down()


def shutting_down() -> ShuttingDown:
    """The drain flag of the running event loop: true from the first moment of the drain."""
    return ShuttingDown(current_drain())
