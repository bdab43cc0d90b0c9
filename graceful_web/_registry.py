"""The registry of protected work of one event loop: what may start, how requests and jobs
enter and leave, and how what is left is cancelled at the deadline. What is in flight and
what became of it are counted by the ledger it extends (``_in_flight``).

It knows nothing of phases beyond one question, asked of every new piece of work: may I admit
this? While open, everything is admitted; once the drain has closed it, only follow-up work
(started from inside a request or job still in flight) while the drain says it is welcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from . import _trio_jobs
from ._in_flight import InFlight
from ._report import (
    AbandonedWork,
    WorkKind,
    log_abandoned,
    log_handed_over,
    log_job_failed,
    log_undelivered,
)
from ._work import ShutdownInProgress, Work, inside_protected

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SpawnsItself(Protocol[T_co]):
    """What ``spawn`` takes besides a coroutine: a call that starts itself through the registry
    (a durable job's call records itself first)."""

    def __graceful_spawn__(self, registry: Registry, name: str | None) -> asyncio.Task[T_co]: ...

_Coroutine = types.CoroutineType  # checked first: asyncio.iscoroutine is a call per job
_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop


class Registry(InFlight):
    """The protected work of one event loop: what is admitted, how it enters and leaves, and
    how it is cut at the deadline."""

    def __init__(self, follow_ups_welcome: Callable[[], bool]) -> None:
        super().__init__()
        self.closed_by = ""  # why it was closed, for the refusal's message
        self._follow_ups_welcome = follow_ups_welcome
        # Jobs whose cancellation hands their record over to a successor (durable jobs): at
        # the deadline they are reported apart from the abandoned.
        self.hands_over: set[asyncio.Task[Any]] = set()

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
        started from inside one."""
        if inside_protected.get():
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:  # trio: its requests and jobs are marked in their context
            return False
        return (
            task in self._jobs.tasks
            or self._requests.knows(task)
            or self._requests.started_the_caller()
        )

    def close(self, reason: str) -> None:
        """From now on only follow-up work is admitted; the requests in flight become Work."""
        self.open = False
        self.closed_by = reason
        self._hand_requests -= len(self._requests.noted)  # counted again as each becomes Work
        for work in self._requests.close(self.loop):
            self.add(work)

    # -- requests ------------------------------------------------------------------------

    def enter_request(
        self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any
    ) -> bool:
        """Register the request ``task`` is serving; its name, ``namer(source)``, is made only
        if the drain ever needs it. False when this task already has a request in flight (a
        nested app's middleware): only the outer registration counts."""
        if self.open:
            if not self._requests.note(task, namer, source):
                return False
            self._hand_requests += 1
            return True
        if self._requests.knows(task):
            return False
        self._requests.adopt(task, self.request_started(namer(source), task.cancel))
        return True

    def exit_request(self, task: asyncio.Task[Any]) -> None:
        """The request ``task`` was serving has ended: one registered by ``enter_request``,
        or one learnt as the registry closed (for any other task, nothing happens)."""
        if self._requests.leave_noted(task):
            self._hand_requests -= 1
            return
        delivered = task not in self._undelivered
        self._undelivered.discard(task)
        work = self._requests.leave_adopted(task)
        if work is not None:
            self.discard(work, delivered=delivered)
            return
        abandoned = self._requests.leave_learnt(task)
        if abandoned is not None:
            self.drained_requests += not abandoned and delivered
            if not self.any_left:
                self.wake_idle_waiters()

    def undeliverable(self, task: asyncio.Task[Any]) -> None:
        """The server cannot deliver the response of the request ``task`` serves (its
        connection closed under it): the request is named, and not counted as drained."""
        if self.open or task in self._undelivered:
            return
        described = self._requests.describe(task)
        if described is None:
            return
        self._undelivered.add(task)
        name, started = described
        entry = AbandonedWork("request", name, time.monotonic() - started)
        self.undelivered.append(entry)
        log_undelivered(entry)

    def request_started(self, name: str, cancel: Callable[[], object]) -> Work:
        """Register an in-flight request by hand (during the drain, a request still gets in
        through an already-open connection; under trio; a websocket)."""
        work = Work("request", name, cancel)
        self.add(work)
        return work

    # -- jobs ----------------------------------------------------------------------------

    def spawn(
        self,
        coro: Coroutine[Any, Any, T] | SpawnsItself[T],
        *,
        name: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a job on ``loop`` (else the running loop, else trio's)."""
        if type(coro) is not _Coroutine and not asyncio.iscoroutine(coro):
            # A durable job's call (graceful_web.durable) records itself, then comes back
            # here with the coroutine that runs it.
            spawn_itself = getattr(coro, "__graceful_spawn__", None)
            if spawn_itself is not None:
                task: asyncio.Task[T] = spawn_itself(self, name)
                return task
            raise TypeError(
                f"spawn() takes a coroutine, e.g. spawn(send_receipt(order_id)); got {coro!r}"
            )
        if not self.open:
            try:
                self.admit("job")
            except ShutdownInProgress:
                coro.close()  # never awaited, so close it rather than leave a warning behind
                raise
        if loop is None:
            loop = _running_loop()
            if loop is None:
                return self._spawn_trio(coro, name)
        return self._jobs.start(coro, name, loop)

    def _spawn_trio(self, coro: Coroutine[Any, Any, T], name: str | None) -> asyncio.Task[T]:
        if _trio_jobs.trio_running() is None:
            coro.close()
            raise RuntimeError("spawn() needs a running asyncio or trio event loop")
        # Under trio a job is told apart by its context: what it starts during the drain is
        # its follow-up work.
        context = contextvars.copy_context()
        context.run(inside_protected.set, True)
        job: _trio_jobs.TrioJob[T] = _trio_jobs.TrioJob(
            name or str(getattr(coro, "__qualname__", "job"))
        )
        work = Work("job", job.get_name(), job.cancel)
        self.add(work)
        _trio_jobs.start(job, coro, context, lambda failed: self.discard(work, failed=failed))
        # Under trio the handle is a TrioJob (cancel(), done(), result(), await wait()).
        return job  # type: ignore[return-value]

    def hands_over_when_cut(self, task: asyncio.Task[Any]) -> None:
        """``task`` (a durable job) is handed over, not abandoned, if the deadline cuts it."""
        self.hands_over.add(task)
        task.add_done_callback(self.hands_over.discard)

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
        return bool(self._abandoned or self._jobs.abandoned or self._requests.abandoned)

    def abandon(self) -> tuple[list[AbandonedWork], list[AbandonedWork]]:
        """Cancel every piece of work in flight and not yet abandoned, oldest first, and
        say what was abandoned and what was handed over to a successor."""
        now = time.monotonic()
        left: list[tuple[float, WorkKind, str, Work | asyncio.Task[Any]]] = [
            (work.started, work.kind, work.name, work)
            for work in self.work
            if work not in self._abandoned
        ]
        left += [(started, "request", name, task) for started, name, task in self._requests.left()]
        left += [(started, "job", name, task) for started, name, task in self._jobs.left()]
        entries: list[AbandonedWork] = []
        handed_over: list[AbandonedWork] = []
        for started, kind, name, what in sorted(left, key=lambda item: item[0]):
            future = what.future if isinstance(what, Work) else what
            if future is not None and future.done():
                # It finished in this turn of the loop; its done callback, already scheduled,
                # counts it as drained. Reporting it abandoned would have it re-queued twice.
                continue
            if isinstance(what, Work):
                self._abandoned.add(what)
            elif kind == "request":
                self._requests.abandoned.add(what)
            else:
                self._jobs.abandoned.add(what)
            entry = AbandonedWork(kind, name, now - started)
            if what in self.hands_over:
                handed_over.append(entry)
                log_handed_over(entry)
            else:
                entries.append(entry)
                log_abandoned(entry)
            what.cancel()
        return entries, handed_over
