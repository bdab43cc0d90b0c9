"""The registry of protected work: requests and jobs in flight, how each is cancelled, and
what finished, failed or was refused.

It knows nothing of phases beyond one question, asked of every new piece of work: may I admit
this? While open, everything is admitted; once the drain has closed it, only follow-up work
(started from inside a request or job still in flight) while the drain says it is welcome.

While open it holds as little as it can. A request holds nothing here: as the registry closes,
the requests in flight are learnt from the loop's tasks (``_census``). An asyncio job is one
dict entry, its task → when it started, with one callback bound once for every job; its name
is asked of its task only if the drain needs it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

from . import _census, _trio_jobs
from ._report import AbandonedWork, WorkKind, log_abandoned, log_job_failed

logger = logging.getLogger("graceful_web")

T = TypeVar("T")


_Coroutine = types.CoroutineType  # checked first: asyncio.iscoroutine is a call per job
_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop


class ShutdownInProgress(RuntimeError):
    """Raised by ``spawn``/``protect`` when the process is draining and will not accept new work.

    Answer the caller with 503 (or re-queue the work elsewhere): nothing was started.
    """


class Work:
    """One piece of protected work: an in-flight request or a background job."""

    __slots__ = ("__weakref__", "_cancel", "future", "kind", "name", "started")

    def __init__(
        self,
        kind: WorkKind,
        name: str,
        cancel: Callable[[], object] | None,
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        if cancel is None and future is None:
            raise TypeError("Work needs a cancel callable or a future to cancel")
        self.kind = kind
        self.name = name
        self.started = time.monotonic()
        self._cancel = cancel
        self.future = future  # the job's task or future, so a runner can tell it from the rest

    @property
    def cancel(self) -> Callable[[], object]:
        """Cancels the work; without a callable of its own, its future's ``cancel``."""
        if self._cancel is not None:
            return self._cancel
        assert self.future is not None
        return self.future.cancel


# True inside a request or job that is itself protected: work it spawns during the drain is
# its follow-up and is accepted, while a spawn from anywhere else is refused.
inside_protected: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "graceful_web_inside_protected", default=False
)


class Registry:
    """The protected work of one event loop."""

    def __init__(self, follow_ups_welcome: Callable[[], bool]) -> None:
        self.open = True  # closed by the drain as it begins
        self.closed_by = ""  # why it was closed, for the refusal's message
        # The loop whose work this is (weakly: the drains are kept by their loop).
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._follow_ups_welcome = follow_ups_welcome
        # Requests (learnt at close, or registered by hand), protected futures, trio jobs.
        self.work: set[Work] = set()
        self.requests = 0
        self._work_jobs = 0
        # Registered by hand while open: task → how to name the request, when it started.
        self._serving_requests: dict[Any, tuple[Callable[[Any], str], Any, float]] = {}
        # Requests in flight while closed, by the task serving each; and, for those learnt
        # as it closed, the id of each one's own object → its task.
        self._promoted_requests: dict[Any, Work] = {}
        self._request_objects: dict[int, Any] = {}
        # Each asyncio job's task → when it started. It holds the task until it is done (the
        # loop keeps only weak references to tasks); each object a pending job keeps alive
        # makes every garbage collection longer, so a job keeps none of its own.
        self._jobs: dict[asyncio.Task[Any], float] = {}
        self._on_job_done = self._job_done
        self.drained_requests = 0
        self.drained_jobs = 0
        self.failed_jobs = 0
        self.refused_jobs = 0
        self._abandoned: set[Work] = set()
        self._abandoned_jobs: set[asyncio.Task[Any]] = set()
        self._idle_waiters: list[Callable[[], None]] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return None if self._loop is None else self._loop()

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)

    # -- what is in flight ---------------------------------------------------------------

    @property
    def jobs(self) -> int:
        return len(self._jobs) + self._work_jobs

    @property
    def any_left(self) -> bool:
        return bool(self.work or self._jobs)

    def requests_in_flight(self) -> int:
        """While open the requests in flight are counted from the loop's tasks."""
        loop = self.loop
        if self.open and loop is not None:
            return self.requests + _census.count(loop)
        return self.requests

    def is_job(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is a protected asyncio job in flight."""
        return task in self._jobs

    def protected_futures(self) -> set[asyncio.Future[Any]]:
        """The tasks and futures of the protected jobs in flight."""
        futures: set[asyncio.Future[Any]] = set(self._jobs)
        futures.update(work.future for work in self.work if work.future is not None)
        return futures

    def oldest(self) -> tuple[WorkKind, str, float] | None:
        """Kind, name and start of the oldest piece of work in flight."""
        work = min(self.work, key=lambda work: work.started, default=None)
        job = min(self._jobs.items(), key=lambda item: item[1], default=None)
        if job is not None and (work is None or job[1] < work.started):
            return "job", job[0].get_name(), job[1]
        return None if work is None else (work.kind, work.name, work.started)

    def names(self) -> str:
        """What is in flight, for the watchdog's last line."""
        named = [f"{work.kind} {work.name!r}" for work in tuple(self.work)]
        named += [f"job {task.get_name()!r}" for task in tuple(self._jobs)]
        return ", ".join(named)

    # -- admission -----------------------------------------------------------------------

    def admit(self, kind: WorkKind) -> None:
        """Raise ``ShutdownInProgress`` unless new work of ``kind`` may start now."""
        if self.open:
            return
        if self._inside_protected() and self._follow_ups_welcome():
            return
        if kind == "job":
            self.refused_jobs += 1
        raise ShutdownInProgress(
            f"the process is shutting down ({self.closed_by or 'drain started'}); "
            f"this {kind} was not started: answer 503 or hand it to another instance"
        )

    def _inside_protected(self) -> bool:
        """Whether the caller is protected work: a request or job in flight, or a task
        started from inside one (marked in its context)."""
        if inside_protected.get():
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:  # trio: its requests and jobs are marked in their context
            return False
        if task in self._jobs or task in self._promoted_requests:
            return True
        # A task a request started (an endpoint run in a task of its own) holds the request's
        # own object somewhere on its stack.
        held = _census.stack_holds(self._request_objects)
        return held is not None and self._request_objects[id(held)] in self._promoted_requests

    def close(self, reason: str) -> None:
        """From now on only follow-up work is admitted; the requests in flight become Work."""
        self.open = False
        self.closed_by = reason
        serving, self._serving_requests = self._serving_requests, {}
        self.requests -= len(serving)  # each is counted again as it becomes Work
        for task, (namer, source, started) in serving.items():
            self._promote(task, namer(source), started)
        loop = self.loop
        if loop is not None:
            for task, name, started, source in _census.requests_in_flight(loop):
                if task not in self._promoted_requests:
                    self._promote(task, name, started)
                    self._request_objects[id(source)] = task

    def _promote(self, task: asyncio.Task[Any], name: str, started: float) -> None:
        work = Work("request", name, task.cancel)
        work.started = started
        self.work.add(work)
        self.requests += 1
        self._promoted_requests[task] = work

    # -- requests ------------------------------------------------------------------------

    def enter_request(
        self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any
    ) -> bool:
        """Register the request ``task`` is serving; its name, ``namer(source)``, is made only
        if the drain ever needs it. False when this task already has a request in flight (a
        nested app's middleware): only the outer registration counts."""
        if self.open:
            requests = self._serving_requests
            if task in requests:
                return False
            requests[task] = (namer, source, time.monotonic())
            self.requests += 1
            return True
        if task in self._promoted_requests:
            return False
        self._promoted_requests[task] = self.request_started(namer(source), task.cancel)
        return True

    def exit_request(self, task: asyncio.Task[Any]) -> None:
        """The request ``task`` was serving has ended: one registered by ``enter_request``,
        or one learnt as the registry closed (for any other task, nothing happens)."""
        if self._serving_requests.pop(task, None) is not None:
            self.requests -= 1
            return
        work = self._promoted_requests.pop(task, None)
        if work is not None:
            self.discard(work)

    def request_started(self, name: str, cancel: Callable[[], object]) -> Work:
        """Register an in-flight request by hand (during the drain, a request still gets in
        through an already-open connection; under trio; a websocket)."""
        work = Work("request", name, cancel)
        self.add(work)
        return work

    # -- adding and removing -------------------------------------------------------------

    def add(self, work: Work) -> None:
        self.work.add(work)
        if work.kind == "request":
            self.requests += 1
        else:
            self._work_jobs += 1

    def discard(self, work: Work, *, failed: bool = False) -> None:
        if work not in self.work:
            return
        self.work.remove(work)
        counted = not self.open and work not in self._abandoned
        if work.kind == "request":
            self.requests -= 1
            self.drained_requests += counted
        else:
            self._work_jobs -= 1
            self._count_job(counted, failed)
        if not self.any_left:
            self.wake_idle_waiters()

    def _count_job(self, counted: bool, failed: bool) -> None:
        if counted:
            # A job that failed still finished within the drain; it is counted in both.
            self.drained_jobs += 1
            self.failed_jobs += failed

    # -- jobs ----------------------------------------------------------------------------

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        name: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a job on ``loop`` (else the running loop, else trio's)."""
        if type(coro) is not _Coroutine and not asyncio.iscoroutine(coro):
            raise TypeError(
                f"spawn() takes a coroutine, e.g. spawn(send_receipt(order_id)); got {coro!r}"
            )
        if not self.open:
            try:
                self.admit("job")
            except ShutdownInProgress:
                coro.close()  # never awaited, so close it rather than leave a warning behind
                raise
        context = contextvars.copy_context()  # the task's and its done callback's: one copy
        if loop is None:
            loop = _running_loop()
            if loop is None:
                return self._spawn_trio(coro, name, context)
        task: asyncio.Task[T] = loop.create_task(coro, name=name, context=context)
        self._jobs[task] = time.monotonic()
        task.add_done_callback(self._on_job_done, context=context)
        return task

    def _spawn_trio(
        self, coro: Coroutine[Any, Any, T], name: str | None, context: contextvars.Context
    ) -> asyncio.Task[T]:
        if _trio_jobs.trio_running() is None:
            coro.close()
            raise RuntimeError("spawn() needs a running asyncio or trio event loop")
        # Under trio a job is told apart by its context: what it starts during the drain is
        # its follow-up work.
        context.run(inside_protected.set, True)
        job: _trio_jobs.TrioJob[T] = _trio_jobs.TrioJob(
            name or str(getattr(coro, "__qualname__", "job"))
        )
        work = Work("job", job.get_name(), job.cancel)
        self.add(work)
        _trio_jobs.start(job, coro, context, lambda failed: self.discard(work, failed=failed))
        # Under trio the handle is a TrioJob (cancel(), done(), result(), await wait()).
        return job  # type: ignore[return-value]

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        del self._jobs[task]
        failed = False
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failed = True
                log_job_failed(task.get_name(), exc)
        if not self.open:
            abandoned = task in self._abandoned_jobs
            self._abandoned_jobs.discard(task)
            self._count_job(not abandoned, failed)
        if not self._jobs:
            # Dicts keep the room they once grew to: after a burst of jobs, let that memory
            # go once none is left.
            self._jobs = {}
            if not self.work:
                self.wake_idle_waiters()

    def protect(self, awaitable: Awaitable[T], *, name: str | None = None) -> asyncio.Future[T]:
        if asyncio.iscoroutine(awaitable):
            return self.spawn(awaitable, name=name)
        future = asyncio.ensure_future(awaitable)
        if future.done():
            return future
        self.admit("job")
        label = name or (future.get_name() if isinstance(future, asyncio.Task) else repr(future))
        work = Work("job", label, future.cancel, future)
        self.add(work)

        def _done(done: asyncio.Future[Any]) -> None:
            exc = None if done.cancelled() else done.exception()
            if exc is not None:
                log_job_failed(label, exc)
            self.discard(work, failed=exc is not None)

        future.add_done_callback(_done)
        return future

    # -- the end of the drain ------------------------------------------------------------

    @property
    def any_abandoned(self) -> bool:
        return bool(self._abandoned or self._abandoned_jobs)

    def abandon(self) -> list[AbandonedWork]:
        """Cancel every piece of work in flight and not yet abandoned, oldest first, and
        say what was abandoned."""
        now = time.monotonic()
        left: list[tuple[float, WorkKind, str, Work | asyncio.Task[Any]]] = [
            (work.started, work.kind, work.name, work)
            for work in self.work
            if work not in self._abandoned
        ]
        left += [
            (started, "job", task.get_name(), task)
            for task, started in self._jobs.items()
            if task not in self._abandoned_jobs
        ]
        entries: list[AbandonedWork] = []
        for started, kind, name, what in sorted(left, key=lambda item: item[0]):
            future = what.future if isinstance(what, Work) else what
            if future is not None and future.done():
                # It finished in this turn of the loop; its done callback, already scheduled,
                # counts it as drained. Reporting it abandoned would have it re-queued twice.
                continue
            if isinstance(what, Work):
                self._abandoned.add(what)
            else:
                self._abandoned_jobs.add(what)
            entry = AbandonedWork(kind, name, now - started)
            entries.append(entry)
            log_abandoned(entry)
            what.cancel()
        return entries

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
