"""What one event loop has in flight and what became of it: requests (``Requests``), asyncio
jobs (``Jobs``), the work registered by hand (``Work``), and the counts the drain reports.

The rules (what is admitted, how work enters and leaves, how it is cut at the deadline) are
the registry's (``_registry``); this is the ledger they keep. While open it holds as little as
it can: nothing for a request, one dict entry for an asyncio job.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import anyio

from . import _census
from ._jobs import Jobs
from ._report import AbandonedWork, WorkKind
from ._requests import Requests
from ._work import Work


class InFlight:
    """The protected work of one event loop, counted."""

    def __init__(self) -> None:
        # Closed by the drain as it begins: what finishes from then on counts as drained.
        self.open = True
        # The loop whose work this is (weakly: the drains are kept by their loop).
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        # Requests once closed (or registered by hand), protected futures, trio jobs.
        self.work: set[Work] = set()
        self._hand_requests = 0  # noted while open, or Work
        self._work_jobs = 0
        self._requests = Requests()
        self._jobs = Jobs(self._job_finished)
        self.drained_requests = 0
        self.drained_jobs = 0
        self.failed_jobs = 0
        self.refused_jobs = 0
        self._abandoned: set[Work] = set()
        # Requests whose response could not be delivered: their tasks, and what the report
        # names (not counted as drained).
        self._undelivered: set[Any] = set()
        self.undelivered: list[AbandonedWork] = []
        self._idle_waiters: list[Callable[[], None]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return None if self._loop is None else self._loop()

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)

    # -- what is in flight ---------------------------------------------------------------

    @property
    def requests(self) -> int:
        return self._hand_requests + len(self._requests.learnt)

    @property
    def jobs(self) -> int:
        return len(self._jobs.tasks) + self._work_jobs

    @property
    def any_left(self) -> bool:
        return bool(self.work or self._jobs.tasks or self._requests.learnt)

    def requests_in_flight(self) -> int:
        """While open the requests in flight are counted from the loop's tasks."""
        loop = self.loop
        if self.open and loop is not None:
            return self.requests + _census.count(loop)
        return self.requests

    def is_job(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is a protected asyncio job in flight."""
        return task in self._jobs.tasks

    def protected_futures(self) -> set[asyncio.Future[Any]]:
        """The tasks and futures of the protected jobs in flight."""
        futures: set[asyncio.Future[Any]] = set(self._jobs.tasks)
        futures.update(work.future for work in self.work if work.future is not None)
        return futures

    def oldest(self) -> tuple[WorkKind, str, float] | None:
        """Kind, name and start of the oldest piece of work in flight."""
        candidates: list[tuple[WorkKind, str, float]] = []
        request = self._requests.oldest()
        if request is not None:
            candidates.append(("request", *request))
        job = self._jobs.oldest()
        if job is not None:
            candidates.append(("job", *job))
        work = min(self.work, key=lambda work: work.started, default=None)
        if work is not None:
            candidates.append((work.kind, work.name, work.started))
        if not candidates:
            return None
        return min(candidates, key=lambda candidate: candidate[2])

    def names(self) -> str:
        """What is in flight, for the watchdog's last line."""
        named = [f"{work.kind} {work.name!r}" for work in tuple(self.work)]
        named += [f"request {name!r}" for name in self._requests.names()]
        return ", ".join(named + [f"job {name!r}" for name in self._jobs.names()])

    # -- adding and removing -------------------------------------------------------------

    def add(self, work: Work) -> None:
        self.work.add(work)
        if work.kind == "request":
            self._hand_requests += 1
        else:
            self._work_jobs += 1

    def discard(self, work: Work, *, failed: bool = False, delivered: bool = True) -> None:
        if work not in self.work:
            return
        self.work.remove(work)
        counted = not self.open and work not in self._abandoned
        if work.kind == "request":
            self._hand_requests -= 1
            self.drained_requests += counted and delivered
        else:
            self._work_jobs -= 1
            self._count_job(counted, failed)
        if not self.any_left:
            self.wake_idle_waiters()

    def _job_finished(self, failed: bool, abandoned: bool) -> None:
        self._count_job(not self.open and not abandoned, failed)
        if not self._jobs.tasks and not self.work:
            self.wake_idle_waiters()

    def _count_job(self, counted: bool, failed: bool) -> None:
        if counted:
            # A job that failed still finished within the drain; it is counted in both.
            self.drained_jobs += 1
            self.failed_jobs += failed

    # -- waiting for the end -------------------------------------------------------------

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no protected work is left; False when the timeout came first."""
        if not self.any_left:
            return True
        event = anyio.Event()
        self._idle_waiters.append(event.set)
        with anyio.move_on_after(timeout):
            await event.wait()
        return not self.any_left

    def wake_idle_waiters(self) -> None:
        if not self._idle_waiters:
            return  # the usual case while serving: no new list for every request
        waiters, self._idle_waiters = self._idle_waiters, []
        for wake in waiters:
            wake()
