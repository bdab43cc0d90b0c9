"""Requests in flight, by the task serving each.

While the registry is open an adapter registers nothing (a request registered by hand, as the
tests do, is noted with how to name it). As the registry closes, the requests in flight are
learnt from the loop's tasks (``_census``) and each becomes ``Work``, cancelled through its
task. A task a request started holds the request's own object on its stack, which tells its
follow-up work from anyone else's during the drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from . import _census
from ._work import Work


class Requests:
    def __init__(self) -> None:
        # Registered by hand while open: task → how to name the request, when it started.
        self.noted: dict[Any, tuple[Callable[[Any], str], Any, float]] = {}
        # Requests in flight once closed, by task; the id of each learnt one's own object.
        self._by_task: dict[Any, Work] = {}
        self._objects: dict[int, Any] = {}

    def note(self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any) -> bool:
        """While open: False when ``task`` has a request noted already (a nested app's)."""
        if task in self.noted:
            return False
        self.noted[task] = (namer, source, time.monotonic())
        return True

    def knows(self, task: object) -> bool:
        return task in self._by_task

    def adopt(self, task: asyncio.Task[Any], work: Work) -> None:
        self._by_task[task] = work

    def leave(self, task: asyncio.Task[Any]) -> tuple[bool, Work | None]:
        """The request ``task`` served has ended: was it noted, or which Work was it?"""
        if self.noted.pop(task, None) is not None:
            return True, None
        return False, self._by_task.pop(task, None)

    def close(self, loop: asyncio.AbstractEventLoop | None) -> list[Work]:
        """The requests in flight, noted or learnt from ``loop``'s tasks, as Work."""
        found: list[Work] = []
        noted, self.noted = self.noted, {}
        for task, (namer, source, started) in noted.items():
            found.append(self._work(task, namer(source), started))
        for request in _census.requests_in_flight(loop) if loop is not None else ():
            if request.task not in self._by_task:
                found.append(self._work(request.task, request.name, request.started))
                self._objects[id(request.source)] = request.task
        return found

    def _work(self, task: asyncio.Task[Any], name: str, started: float) -> Work:
        work = Work("request", name, task.cancel)
        work.started = started
        self._by_task[task] = work
        return work

    def started_the_caller(self) -> bool:
        """Whether a request in flight started the calling task: its own object is on the
        caller's stack (Starlette's BaseHTTPMiddleware runs the endpoint in a task of its own)."""
        if not self._objects:
            return False
        held = _census.stack_holds(self._objects)
        return held is not None and self._objects[id(held)] in self._by_task
