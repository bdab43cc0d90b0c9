"""Requests in flight, by the task serving each.

While the registry is open an adapter registers nothing (a request registered by hand, as the
tests do, is noted with how to name it). As the registry closes, the requests in flight are
learnt from the loop's tasks (``_census``): each is its task → the call serving it, and
nothing more until the drain needs its age or name. A request that comes in during the drain
(or under trio, or a websocket) is registered by hand as ``Work``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from . import _census
from ._work import Work


class Requests:
    def __init__(self) -> None:
        # Registered by hand while open: task → how to name the request, when it started.
        self.noted: dict[Any, tuple[Callable[[Any], str], Any, float]] = {}
        # Registered by hand once closed, by task.
        self._adopted: dict[Any, Work] = {}
        # Learnt as the registry closed: task → the call serving it; what was read of them.
        self.learnt: dict[Any, Any] = {}
        self.abandoned: set[Any] = set()
        self._started: dict[Any, float] = {}
        self._objects: dict[int, Any] | None = None

    # -- registered by hand --------------------------------------------------------------

    def note(self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any) -> bool:
        """While open: False when ``task`` has a request noted already (a nested app's)."""
        if task in self.noted:
            return False
        self.noted[task] = (namer, source, time.monotonic())
        return True

    def knows(self, task: object) -> bool:
        return task in self._adopted or task in self.learnt

    def adopt(self, task: asyncio.Task[Any], work: Work) -> None:
        self._adopted[task] = work

    def leave_noted(self, task: asyncio.Task[Any]) -> bool:
        return self.noted.pop(task, None) is not None

    def leave_adopted(self, task: asyncio.Task[Any]) -> Work | None:
        return self._adopted.pop(task, None)

    # -- learnt as the registry closes ---------------------------------------------------

    def close(self, loop: asyncio.AbstractEventLoop | None) -> list[Work]:
        """Learn the requests in flight on ``loop``; the noted ones come back as Work."""
        noted, self.noted = self.noted, {}
        found = []
        for task, (namer, source, started) in noted.items():
            work = Work("request", partial(namer, source), task.cancel)
            work.started = started
            self._adopted[task] = work
            found.append(work)
        if loop is not None:
            for task, call in _census.requests_in_flight(loop).items():
                if task not in self._adopted:
                    self.learnt[task] = call
        return found

    def leave_learnt(self, task: asyncio.Task[Any]) -> bool | None:
        """A learnt request has ended: None when ``task`` served none, else whether it had
        been abandoned."""
        if self.learnt.pop(task, None) is None:
            return None
        self._started.pop(task, None)
        abandoned = task in self.abandoned
        self.abandoned.discard(task)
        return abandoned

    def started(self, task: asyncio.Task[Any]) -> float:
        started = self._started.get(task)
        if started is None:
            started = self._started[task] = _census.started(self.learnt[task])
        return started

    def oldest(self) -> tuple[str, float] | None:
        if not self.learnt:
            return None
        task = min(self.learnt, key=self.started)
        return _census.name(self.learnt[task]), self.started(task)

    def describe(self, task: object) -> tuple[str, float] | None:
        """Name and start of the request ``task`` serves, registered or learnt (None for
        another task)."""
        work = self._adopted.get(task)
        if work is not None:
            return work.name, work.started
        if task in self.learnt:
            return _census.name(self.learnt[task]), self.started(task)  # type: ignore[arg-type]
        return None

    def names(self) -> list[str]:
        return [_census.name(call) for call in tuple(self.learnt.values())]

    def left(self) -> list[tuple[float, str, asyncio.Task[Any]]]:
        """Start, name and task of each learnt request not yet abandoned."""
        return [
            (self.started(task), _census.name(call), task)
            for task, call in self.learnt.items()
            if task not in self.abandoned
        ]

    def started_the_caller(self) -> bool:
        """Whether a request in flight started the calling task: its own object is on the
        caller's stack (Starlette's BaseHTTPMiddleware runs the endpoint in a task of its own)."""
        if not self.learnt:
            return False
        if self._objects is None:  # read once, the first time it is asked
            self._objects = {
                id(_census.source(call)): task for task, call in self.learnt.items()
            }
        held = _census.stack_holds(self._objects)
        return held is not None and self._objects[id(held)] in self.learnt
