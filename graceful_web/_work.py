"""The registry of protected work: requests and jobs in flight, how each is cancelled, and
what finished, failed or was refused.

It knows nothing of phases beyond one question, asked of every new piece of work: may I admit
this? While open, everything is admitted; once the drain has closed it, only follow-up work
(started from inside a request or job still in flight) while the drain says it is welcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

from . import _trio_jobs
from ._report import AbandonedWork, WorkKind, log_abandoned, log_job_failed

logger = logging.getLogger("graceful_web")

T = TypeVar("T")


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
        self._follow_ups_welcome = follow_ups_welcome
        self.work: set[Work] = set()
        self.requests = 0
        self.jobs = 0
        # While open, a request costs one dict entry (its task → how to name it, when it
        # started); the Work objects the drain needs are made from these as it closes.
        self._serving_requests: dict[Any, tuple[Callable[[Any], str], Any, float]] = {}
        self._promoted_requests: dict[Any, Work] = {}
        self.drained_requests = 0
        self.drained_jobs = 0
        self.failed_jobs = 0
        self.refused_jobs = 0
        self._abandoned: set[Work] = set()
        self._idle_waiters: list[Callable[[], None]] = []
        # Each asyncio job's task with its Work. It holds the task until it is done (the loop
        # keeps only weak references to tasks), and lets one callback, bound once here, serve
        # every job: a spawn allocates as little as it can, as each object it leaves alive
        # makes every garbage collection longer while many jobs are pending.
        self._job_work: dict[asyncio.Task[Any], Work] = {}
        self._on_job_done = self._job_done

    # -- admission -----------------------------------------------------------------------

    def admit(self, kind: WorkKind) -> None:
        """Raise ``ShutdownInProgress`` unless new work of ``kind`` may start now."""
        if self.open:
            return
        if inside_protected.get() and self._follow_ups_welcome():
            return
        if kind == "job":
            self.refused_jobs += 1
        raise ShutdownInProgress(
            f"the process is shutting down ({self.closed_by or 'drain started'}); "
            f"this {kind} was not started: answer 503 or hand it to another instance"
        )

    def close(self, reason: str) -> None:
        """From now on only follow-up work is admitted; the requests in flight become Work."""
        self.open = False
        self.closed_by = reason
        for task, (namer, source, started) in self._serving_requests.items():
            work = Work("request", namer(source), task.cancel)
            work.started = started
            self.work.add(work)
            self._promoted_requests[task] = work
        self._serving_requests.clear()

    # -- adding and removing -------------------------------------------------------------

    def add(self, work: Work) -> None:
        self.work.add(work)
        if work.kind == "request":
            self.requests += 1
        else:
            self.jobs += 1

    def discard(self, work: Work, *, failed: bool = False) -> None:
        if work not in self.work:
            return
        self.work.remove(work)
        counted = not self.open and work not in self._abandoned
        if work.kind == "request":
            self.requests -= 1
            if counted:
                self.drained_requests += 1
        else:
            self.jobs -= 1
            if counted:
                # A job that failed still finished within the drain; it is counted in both.
                self.drained_jobs += 1
                self.failed_jobs += failed
        if not self.work:
            self.wake_idle_waiters()

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
        """The request ``task`` was serving has ended (call it only when ``enter_request``
        returned True)."""
        if self._serving_requests.pop(task, None) is not None:
            self.requests -= 1
            return
        work = self._promoted_requests.pop(task, None)
        if work is not None:
            self.discard(work)

    def request_started(self, name: str, cancel: Callable[[], object]) -> Work:
        """Register an in-flight request. During the drain a request still gets in through an
        already-open connection; it is served, as the listener is already closed."""
        work = Work("request", name, cancel)
        self.work.add(work)  # add(), inline: this runs for every request
        self.requests += 1
        return work

    # -- jobs ----------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        if not asyncio.iscoroutine(coro):
            raise TypeError(
                f"spawn() takes a coroutine, e.g. spawn(send_receipt(order_id)); got {coro!r}"
            )
        try:
            self.admit("job")
        except ShutdownInProgress:
            coro.close()  # never awaited, so close it rather than leave a warning behind
            raise
        context = contextvars.copy_context()
        if not inside_protected.get():
            context.run(inside_protected.set, True)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._spawn_trio(coro, name, context)
        task: asyncio.Task[T] = loop.create_task(coro, name=name, context=context)
        work = Work("job", task.get_name(), None, task)
        self.add(work)
        self._job_work[task] = work
        task.add_done_callback(self._on_job_done, context=context)
        return task

    def _spawn_trio(
        self, coro: Coroutine[Any, Any, T], name: str | None, context: contextvars.Context
    ) -> asyncio.Task[T]:
        if _trio_jobs.trio_running() is None:
            coro.close()
            raise RuntimeError("spawn() needs a running asyncio or trio event loop")
        job: _trio_jobs.TrioJob[T] = _trio_jobs.TrioJob(
            name or str(getattr(coro, "__qualname__", "job"))
        )
        work = Work("job", job.get_name(), job.cancel)
        self.add(work)
        _trio_jobs.start(job, coro, context, lambda failed: self.discard(work, failed=failed))
        # Under trio the handle is a TrioJob (cancel(), done(), result(), await wait()).
        return job  # type: ignore[return-value]

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        work = self._job_work.pop(task)
        failed = False
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failed = True
                log_job_failed(work.name, exc)
        self.discard(work, failed=failed)
        if not self._job_work:
            # Sets and dicts keep the room they once grew to: after a burst of jobs, let that
            # memory go once none is left.
            self._job_work = {}
            if not self.work:
                self.work = set()

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

    def protected_futures(self) -> set[asyncio.Future[Any]]:
        """The tasks and futures of the protected jobs in flight."""
        return {work.future for work in self.work if work.future is not None}

    # -- the end of the drain ------------------------------------------------------------

    def oldest(self) -> Work | None:
        return min(self.work, key=lambda work: work.started) if self.work else None

    @property
    def any_abandoned(self) -> bool:
        return bool(self._abandoned)

    def abandon(self) -> list[AbandonedWork]:
        """Cancel every piece of work in flight and not yet abandoned, oldest first, and
        say what was abandoned."""
        now = time.monotonic()
        entries: list[AbandonedWork] = []
        for work in sorted(self.work, key=lambda w: w.started):
            if work in self._abandoned:
                continue
            if work.future is not None and work.future.done():
                # It finished in this turn of the loop; its done callback, already scheduled,
                # counts it as drained. Reporting it abandoned would have it re-queued twice.
                continue
            entry = AbandonedWork(work.kind, work.name, now - work.started)
            self._abandoned.add(work)
            entries.append(entry)
            log_abandoned(entry)
            work.cancel()
        return entries

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no protected work is left; False when the timeout came first."""
        if not self.work:
            return True
        event = anyio.Event()
        self._idle_waiters.append(event.set)
        with anyio.move_on_after(timeout):
            await event.wait()
        return not self.work

    def wake_idle_waiters(self) -> None:
        if not self._idle_waiters:
            return  # the usual case while serving: no new list for every request
        waiters, self._idle_waiters = self._idle_waiters, []
        for wake in waiters:
            wake()

    def names(self) -> str:
        """What is in flight, for the watchdog's last line."""
        return ", ".join(f"{work.kind} {work.name!r}" for work in tuple(self.work))
