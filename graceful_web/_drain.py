"""The drain of one event loop: its phase, the one deadline, and the sequence from the stop
signal to the exit status.

Adapters translate their server's hooks into four calls: ``configure`` at startup, ``begin``
when the stop signal arrives, ``wait`` inside the server's own shutdown path, and ``force``
on a second signal. The sequence, end to end::

    signal ─ begin(): readiness answers 503, requests get ``Connection: close``, the registry
             admits only follow-up work, the deadline is set, the watchdog armed
           ─ the adapter has the server close its listener (after ``pre_stop_delay``)
           ─ wait(): wait for the work in flight, abandon what is left at the deadline,
             make the report; its ``exit_code`` is the process's exit status
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import anyio

from . import _hooks
from ._config import CANCEL_GRACE, HARD_EXIT_AFTER, LATE_HOOK_TIME, Config
from ._long_lived import LongLived
from ._registry import Registry
from ._report import (
    EXIT_HARD,
    AbandonedWork,
    DrainReport,
    log_finished,
    log_forced,
    log_progress,
    log_started,
    progress_beat,
)
from ._watchdog import Watchdog
from ._work import Work

logger = logging.getLogger("graceful_web")

T = TypeVar("T")


class _OfRegistry(Generic[T]):
    """A figure of the drain's registry, read through the drain (typed, unlike a bare
    ``property(attrgetter(...))``)."""

    def __init__(self, attribute: str) -> None:
        self.attribute = attribute

    def __get__(self, drain: Drain, owner: type[Drain] | None = None) -> T:
        value: T = getattr(drain.work, self.attribute)
        return value


class ProcessState:
    """What every request checks first, for the whole process: whether every drain is still
    serving. A request that finds the process serving needs nothing of its loop's drain;
    should that drain begin while the request runs, it learns of it from the loop's tasks
    (``_census``)."""

    __slots__ = ("serving",)

    def __init__(self) -> None:
        self.serving = True  # False from the first drain that begins, for good


process = ProcessState()


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Drain:
    """The drain state of one event loop: the phase, the deadline and its protected work."""

    def __init__(self) -> None:
        self.config = Config()
        self.phase = Phase.SERVING
        self.reason = ""
        self.started_at: float | None = None
        self.deadline: float | None = None
        self.forced = False
        self.wired = False  # an adapter has tied this drain into a server's shutdown
        self.report: DrainReport | None = None
        self.work = Registry(self._follow_ups_welcome)
        self.long_lived = LongLived()
        self._abandoned: list[AbandonedWork] = []
        self._handed_over: list[AbandonedWork] = []
        self._shutdown_waiters: list[Callable[[], None]] = []
        self._watchdog = Watchdog()
        self._beside = _hooks.Beside()
        self._started_hook = _hooks.StartedHook()

    # -- state ---------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.phase is not Phase.SERVING

    def remaining(self) -> float:
        if self.deadline is None:
            return self.config.drain_timeout
        return max(0.0, self.deadline - time.monotonic())

    def _follow_ups_welcome(self) -> bool:
        return self.phase is Phase.DRAINING and not self.forced and self.remaining() > 0

    def configure(self, config: Config) -> None:
        self.config = config
        self.wired = True
        # anyio imports its backend for this event loop at first use, which is begin() in the
        # signal handler: that import (15 ms and more) would hold back closing the listener.
        # Adapters configure at startup, on the loop: import it now. (Without a running loop
        # there is nothing to import yet; begin() then imports it when needed.)
        with contextlib.suppress(Exception):
            anyio.get_cancelled_exc_class()

    # -- the sequence --------------------------------------------------------------------

    def begin(self, reason: str = "shutdown") -> bool:
        """The stop signal: from now on readiness answers 503 and responses close their
        connection, only follow-up work is admitted, and the one deadline runs. Returns
        False when a drain had already started."""
        if self.phase is not Phase.SERVING:
            return False
        self.phase = Phase.DRAINING
        process.serving = False
        self.reason = reason
        self.work.close(reason)
        self.started_at = time.monotonic()
        self.deadline = self.started_at + self.config.drain_timeout
        log_started(reason, self.work.requests, self.work.jobs, self.config.drain_timeout)
        waiters, self._shutdown_waiters = self._shutdown_waiters, []
        for wake in waiters:
            wake()
        self._watch()
        return True

    async def wait(self, reason: str = "shutdown") -> DrainReport:
        """Drain: wait for every protected request and job until the deadline, then cancel
        and report what is left. Safe to call more than once; later calls return the report."""
        if self.report is not None:
            return self.report
        self.begin(reason)
        try:
            while not self.forced and self.work.any_left and self.remaining() > 0:
                await self.work.wait_idle(self.remaining())
            if self.work.any_left and not self.forced:
                self._abandon()  # the deadline
            if self.work.any_left:
                await self.work.wait_idle(CANCEL_GRACE)  # cancelled work unwinds
            if not self.forced:
                # The hook cancels itself at the deadline; the grace covers its unwinding.
                deadline = self.deadline if self.deadline is not None else time.monotonic()
                await self._started_hook.wait(max(0.0, deadline + CANCEL_GRACE - time.monotonic()))
        except BaseException:
            # The drain itself was cancelled (e.g. the loop is being torn down): report
            # what is being lost rather than lose it silently.
            self._abandon()
            self._finish()
            raise
        report = self._finish()
        await _hooks.call_on_abandoned(self.config.on_abandoned, report.abandoned, CANCEL_GRACE)
        # Bounded by the deadline; when it has passed (or after a second signal) the hook
        # still gets a short moment, well before the watchdog's hard exit.
        late = LATE_HOOK_TIME if self.forced else max(self.remaining(), LATE_HOOK_TIME)
        await _hooks.call_on_drain_finished(self.config.on_drain_finished, report, late)
        return report

    def force(self, reason: str) -> None:
        """A second signal: cancel every piece of protected work now."""
        if self.phase is Phase.SERVING:
            self.begin(reason)
        if self.forced:
            return
        self.forced = True
        self.reason = reason
        log_forced(reason, self.work.requests + self.work.jobs)
        self._abandon()
        self.work.wake_idle_waiters()

    def _abandon(self) -> None:
        if self.work.any_left:
            abandoned, handed_over = self.work.abandon()
            self._abandoned.extend(abandoned)
            self._handed_over.extend(handed_over)

    def _finish(self) -> DrainReport:
        if self.report is not None:
            return self.report
        self.phase = Phase.STOPPED
        started = self.started_at if self.started_at is not None else time.monotonic()
        long_lived = self.long_lived
        report = DrainReport(
            reason=self.reason,
            # A websocket closed or a stream ended by the drain is counted apart, not as a
            # request that finished by itself.
            drained_requests=max(0, self.work.drained_requests - long_lived.count),
            drained_jobs=self.work.drained_jobs,
            failed_jobs=self.work.failed_jobs,
            refused_jobs=self.work.refused_jobs,
            abandoned=tuple(self._abandoned),
            duration=time.monotonic() - started,
            forced=self.forced,
            handed_over=tuple(self._handed_over),
            websockets_closed=long_lived.websockets_closed,
            streams_ended=long_lived.streams_ended,
            undelivered=tuple(self.work.undelivered),
        )
        for listener in tuple(report_listeners):
            try:
                listener(self, report)
            except Exception:
                logger.exception("drain report listener failed")
        self.report = report
        self._beside.stop()
        # aiohttp's connections are learnt only at their end, which the drain may not reach.
        self.long_lived.drain_over()
        log_finished(report)
        return report

    # -- beside the drain: the drain-started hook and the progress lines ------------------

    def _watch(self) -> None:
        if self.config.on_drain_started is not None:
            self._started_hook.call(
                self.config.on_drain_started, self.reason, self._beside, self.remaining
            )
        if self.config.progress_interval > 0:
            self._beside.start(self._progress)
        self._beside.start(self._end_long_lived)

    async def _end_long_lived(self) -> None:
        # Timed from the drain's start for every server: the stop sequence spends the
        # pre-stop delay before the listeners close, and holds the server's own stop until
        # these ends are sent (a server that closes websockets itself does it unannounced).
        await anyio.sleep(self.config.pre_stop_delay + self.config.long_lived_grace)
        if not self.forced:
            await self.long_lived.end_all()

    async def _progress(self) -> None:
        await progress_beat(
            self.config.progress_interval,
            lambda: self.phase is Phase.DRAINING,
            self._log_progress,
        )

    def _log_progress(self) -> None:
        # Past the deadline (or after a second signal) what is left is being cancelled, not
        # drained: the abandoned lines have said so.
        oldest = self.work.oldest()
        if oldest is None or self.work.any_abandoned:
            return
        kind, name, started = oldest
        age = time.monotonic() - started
        log_progress(self.work.requests, self.work.jobs, kind, name, age, self.remaining())

    # -- the watchdog --------------------------------------------------------------------

    def arm_watchdog(self) -> None:
        """Guarantee the process ends by deadline + grace even if work ignores cancellation
        or blocks the event loop. Armed only for signal-driven drains of a real server."""
        if self.deadline is None:
            return
        self._watchdog.arm(
            self.remaining() + HARD_EXIT_AFTER,
            code=EXIT_HARD,
            late_by=HARD_EXIT_AFTER,
            left=self.work.names,
        )

    def disarm_watchdog(self) -> None:
        self._watchdog.disarm()

    # -- shutting_down() -----------------------------------------------------------------

    async def wait_shutting_down(self) -> None:
        if self.draining:
            return
        event = anyio.Event()
        self._shutdown_waiters.append(event.set)
        await event.wait()

    # -- the registry, as adapters and tests reach it ------------------------------------

    @property
    def requests_in_flight(self) -> int:
        return self.work.requests_in_flight()

    jobs_in_flight = _OfRegistry[int]("jobs")
    drained_requests = _OfRegistry[int]("drained_requests")
    drained_jobs = _OfRegistry[int]("drained_jobs")
    refused_jobs = _OfRegistry[int]("refused_jobs")
    _work = _OfRegistry[set[Work]]("work")

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        return self.work.spawn(coro, name=name)

    def protect(self, awaitable: Awaitable[T], *, name: str | None = None) -> asyncio.Future[T]:
        return self.work.protect(awaitable, name=name)

    def request_started(self, name: str, cancel: Callable[[], object]) -> Work:
        return self.work.request_started(name, cancel)

    def discard(self, work: Work) -> None:
        self.work.discard(work)

    def enter_request(
        self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any
    ) -> bool:
        return self.work.enter_request(task, namer, source)

    def exit_request(self, task: asyncio.Task[Any]) -> None:
        self.work.exit_request(task)

    def undeliverable(self, task: asyncio.Task[Any]) -> None:
        self.work.undeliverable(task)

    def protected_futures(self) -> set[asyncio.Future[Any]]:
        return self.work.protected_futures()


# Told of every finished drain, once, as the report is made (the metrics module listens here;
# empty unless it is used).
report_listeners: list[Callable[[Drain, DrainReport], None]] = []
