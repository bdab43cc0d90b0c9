"""The application's hooks around a drain, each within its bounds, and what runs beside the
event loop's other tasks while the drain lasts.

``on_drain_started`` is called as the drain starts; when it is async it runs beside the drain
until the deadline, and the end of the drain waits for it. ``on_abandoned`` and
``on_drain_finished`` are called at the end, each bounded by the time it is given.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._config import Hook
from ._report import AbandonedWork, DrainReport
from ._trio_jobs import trio_running

logger = logging.getLogger("graceful_web")

Watcher = Callable[[], Awaitable[None]]


class Beside:
    """Tasks beside the loop's others, under asyncio or trio, from the start of a drain to its
    end: nothing of them exists while serving."""

    def __init__(self) -> None:
        self.stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scopes: set[anyio.CancelScope] = set()

    def start(self, watcher: Watcher) -> bool:
        """Run ``watcher`` beside the loop's other tasks; False outside any event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(self._watch(watcher), name="graceful_web drain watcher")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        trio = trio_running()
        if trio is not None:
            try:
                trio.lowlevel.spawn_system_task(self._watch, watcher)
                return True
            except RuntimeError:
                pass
        return False  # called outside any event loop: nothing can run beside it

    async def _watch(self, watcher: Watcher) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            if self.stopped:
                scope.cancel()  # the drain ended before this started: stop at the first await
            try:
                await watcher()
            except Exception:
                logger.exception("watching the drain failed")
            finally:
                self._scopes.discard(scope)

    def stop(self) -> None:
        self.stopped = True
        for scope in list(self._scopes):
            scope.cancel()


class StartedHook:
    """``on_drain_started``: called as the drain starts, awaited beside it when async."""

    def __init__(self) -> None:
        self.running = False
        self._waiters: list[Callable[[], None]] = []

    def call(self, hook: Hook, reason: str, beside: Beside, remaining: Callable[[], float]) -> None:
        try:
            result = hook(reason)
        except Exception:
            logger.exception("on_drain_started hook failed")
            return
        if not inspect.isawaitable(result):
            return
        self.running = True
        if not beside.start(lambda: self._await(result, remaining())):
            self._done()
            if inspect.iscoroutine(result):
                result.close()

    async def _await(self, pending: Awaitable[object], bound: float) -> None:
        try:
            with anyio.move_on_after(bound) as scope:
                await pending
            if scope.cancelled_caught:
                logger.warning("on_drain_started hook was still running at the deadline: cancelled")
        except Exception:
            logger.exception("on_drain_started hook failed")
        finally:
            self._done()

    def _done(self) -> None:
        self.running = False
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    async def wait(self, bound: float) -> None:
        """Wait, at most ``bound`` seconds, for the hook to end."""
        if not self.running:
            return
        event = anyio.Event()
        self._waiters.append(event.set)
        with anyio.move_on_after(bound):
            await event.wait()


async def call_on_abandoned(
    callback: Hook | None, abandoned: tuple[AbandonedWork, ...], bound: float
) -> None:
    if callback is None or not abandoned:
        return
    try:
        result = callback(abandoned)
        if result is not None and hasattr(result, "__await__"):
            with anyio.move_on_after(bound):
                await result
    except Exception:
        logger.exception("on_abandoned callback failed")


async def call_on_drain_finished(hook: Hook | None, report: DrainReport, bound: float) -> None:
    if hook is None:
        return
    try:
        with anyio.move_on_after(bound) as scope:
            result = hook(report)
            if inspect.isawaitable(result):
                await result
        if scope.cancelled_caught:
            logger.warning(
                "on_drain_finished hook was still running after %.1f s: cancelled", bound
            )
    except Exception:
        logger.exception("on_drain_finished hook failed")
