"""The asyncio jobs of one event loop, each kept as one dict entry: its task → when it started.

The entry holds the task until it is done (the loop keeps only weak references to tasks); one
callback, bound once, serves every job; a job's name is asked of its task only if the drain
needs it. Each object a pending job keeps alive makes every garbage collection longer while
many jobs are pending, so a job keeps none of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._report import log_job_failed

T = TypeVar("T")


class Jobs:
    """Jobs in flight; ``finished(failed, abandoned)`` is told of each one that ends."""

    def __init__(self, finished: Callable[[bool, bool], None]) -> None:
        self.tasks: dict[asyncio.Task[Any], float] = {}
        # Jobs started within a millisecond share one start: a float of its own per pending
        # job is one more object for every garbage collection to visit.
        self._stamp = 0.0
        self.abandoned: set[asyncio.Task[Any]] = set()
        self._finished = finished
        self._on_done = self._done

    def start(
        self, coro: Coroutine[Any, Any, T], name: str | None, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Task[T]:
        context = contextvars.copy_context()  # the task's and its done callback's: one copy
        task: asyncio.Task[T] = loop.create_task(coro, name=name, context=context)
        now = time.monotonic()
        if now - self._stamp >= 0.001:
            self._stamp = now
        self.tasks[task] = self._stamp
        task.add_done_callback(self._on_done, context=context)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        del self.tasks[task]
        failed = False
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failed = True
                log_job_failed(task.get_name(), exc)
        abandoned = task in self.abandoned
        if abandoned:
            self.abandoned.discard(task)
        if not self.tasks:
            # Dicts keep the room they once grew to: after a burst of jobs, let that memory
            # go once none is left.
            self.tasks = {}
        self._finished(failed, abandoned)

    def oldest(self) -> tuple[str, float] | None:
        job = min(self.tasks.items(), key=lambda item: item[1], default=None)
        return None if job is None else (job[0].get_name(), job[1])

    def names(self) -> list[str]:
        return [task.get_name() for task in tuple(self.tasks)]

    def left(self) -> list[tuple[float, str, asyncio.Task[Any]]]:
        """Start, name and task of each job in flight not yet abandoned."""
        return [
            (started, task.get_name(), task)
            for task, started in self.tasks.items()
            if task not in self.abandoned
        ]
