"""Protected work, the drain state and the one deadline.

This module knows nothing of any web framework. Adapters translate their server's hooks
into four calls: ``configure`` at startup, ``begin`` when the stop signal arrives,
``wait`` inside the server's own shutdown path, and ``force`` on a second signal.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import math
import os
import signal
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio

logger = logging.getLogger("graceful_web")

T = TypeVar("T")

DRAIN_TIMEOUT_ENV = "GRACEFUL_DRAIN_TIMEOUT"
PRE_STOP_DELAY_ENV = "GRACEFUL_PRE_STOP_DELAY"
PROGRESS_INTERVAL_ENV = "GRACEFUL_PROGRESS_INTERVAL"
DEFAULT_DRAIN_TIMEOUT = 25.0
DEFAULT_PROGRESS_INTERVAL = 1.0

#: Exit status when the deadline passed and work had to be abandoned (EX_TEMPFAIL:
#: the orchestrator may retry; it is not 3 or 4, which gunicorn's arbiter treats as boot errors).
EXIT_ABANDONED = 75
#: Exit status of the last-resort hard exit: work that refused to stop even after being cancelled.
EXIT_HARD = 70
#: How long cancelled work may take to unwind after the deadline (finally blocks, rollbacks).
CANCEL_GRACE = 0.25
#: How long ``on_drain_finished`` may run when the deadline has already passed (or after a
#: second signal); well inside the watchdog's margin.
LATE_HOOK_TIME = 0.5
#: The last-resort hard exit comes this long after the deadline: the unwinding and the late
#: hook fit before it, and the process is gone by deadline + 1 s whatever the work does.
HARD_EXIT_AFTER = CANCEL_GRACE + LATE_HOOK_TIME

WorkKind = Literal["request", "job"]


class ShutdownInProgress(RuntimeError):
    """Raised by ``spawn``/``protect`` when the process is draining and will not accept new work.

    Answer the caller with 503 (or re-queue the work elsewhere): nothing was started.
    """


@dataclass(frozen=True)
class AbandonedWork:
    """A request or job still running at the deadline (or at a second signal)."""

    kind: WorkKind
    name: str
    age: float  # seconds since the work started


@dataclass(frozen=True)
class DrainReport:
    """What one drain did, from the stop signal to the end of waiting."""

    reason: str
    drained_requests: int
    drained_jobs: int
    failed_jobs: int
    refused_jobs: int
    abandoned: tuple[AbandonedWork, ...]
    duration: float  # seconds from the start of the drain to the end of waiting
    forced: bool

    @property
    def exit_code(self) -> int:
        """The process exit status this drain calls for: 0 when nothing was abandoned."""
        if self.forced:
            forced = forced_exit_code(self.reason)
            if forced is not None:
                return forced
        return EXIT_ABANDONED if self.abandoned else 0


def forced_exit_code(reason: str) -> int | None:
    """128 + the signal's number, as a shell reports a process ended by a signal, when a
    second signal named ``reason`` forced the exit; None when ``reason`` names no signal."""
    signum = getattr(signal.Signals, reason, None) if reason.startswith("SIG") else None
    return None if signum is None else 128 + int(signum)


class TrioJob(Generic[T]):
    """What ``spawn`` returns under trio: the job's handle, shaped like a small task."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._scope: Any = None
        self._done = anyio.Event()
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._cancelled = False

    def get_name(self) -> str:
        return self._name

    def cancel(self) -> bool:
        if self._scope is None or self._done.is_set():
            return False
        self._scope.cancel()
        return True

    def done(self) -> bool:
        return self._done.is_set()

    def cancelled(self) -> bool:
        return self._cancelled

    def result(self) -> T:
        if not self._done.is_set():
            raise RuntimeError(f"job {self._name!r} has not finished")
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]

    async def wait(self) -> T:
        await self._done.wait()
        return self.result()


class Phase(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


def _env_seconds(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number of seconds; set it to e.g. {name}=25"
        ) from None
    return value


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return float(value)


AbandonedCallback = Callable[[tuple[AbandonedWork, ...]], "Awaitable[None] | None"]
#: Called with the reason (e.g. ``"SIGTERM"``) the moment the drain starts.
DrainStartedCallback = Callable[[str], "Awaitable[None] | None"]
#: Called with the ``DrainReport`` once the drain has finished.
DrainFinishedCallback = Callable[[DrainReport], "Awaitable[None] | None"]


def _check_callback(name: str, callback: object) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{name} must be callable (a function or an async function), got {callback!r}"
        )


@dataclass(frozen=True)
class Config:
    """Validated drain settings, shared by every adapter.

    A value passed in code wins; when it is ``None`` the environment variable is read,
    then the default applies.
    """

    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    pre_stop_delay: float = 0.0
    on_abandoned: AbandonedCallback | None = None
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
    readiness_path: str | None = "/readyz"
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL  # 0 turns the progress lines off
    on_drain_started: DrainStartedCallback | None = None
    on_drain_finished: DrainFinishedCallback | None = None

    @classmethod
    def build(
        cls,
        *,
        drain_timeout: float | None = None,
        pre_stop_delay: float | None = None,
        on_abandoned: AbandonedCallback | None = None,
        signals: Iterable[signal.Signals | int | str] | None = None,
        readiness_path: str | None = "/readyz",
        progress_interval: float | None = None,
        on_drain_started: DrainStartedCallback | None = None,
        on_drain_finished: DrainFinishedCallback | None = None,
    ) -> Config:
        if drain_timeout is None:
            drain_timeout = _env_seconds(DRAIN_TIMEOUT_ENV)
            name = DRAIN_TIMEOUT_ENV
        else:
            name = "drain_timeout"
        timeout = _check_seconds(
            name,
            DEFAULT_DRAIN_TIMEOUT if drain_timeout is None else drain_timeout,
            allow_zero=False,
        )
        if pre_stop_delay is None:
            pre_stop_delay = _env_seconds(PRE_STOP_DELAY_ENV)
            delay_name = PRE_STOP_DELAY_ENV
        else:
            delay_name = "pre_stop_delay"
        delay = _check_seconds(
            delay_name, 0.0 if pre_stop_delay is None else pre_stop_delay, allow_zero=True
        )
        if delay >= timeout:
            raise ValueError(
                f"pre_stop_delay ({delay:g} s) must be shorter than drain_timeout "
                f"({timeout:g} s): the delay is spent inside the one drain deadline"
            )
        if on_abandoned is not None and not callable(on_abandoned):
            raise TypeError(f"on_abandoned must be callable, got {on_abandoned!r}")
        _check_callback("on_drain_started", on_drain_started)
        _check_callback("on_drain_finished", on_drain_finished)
        if progress_interval is None:
            progress_interval = _env_seconds(PROGRESS_INTERVAL_ENV)
            interval_name = PROGRESS_INTERVAL_ENV
        else:
            interval_name = "progress_interval"
        interval = _check_seconds(
            interval_name,
            DEFAULT_PROGRESS_INTERVAL if progress_interval is None else progress_interval,
            allow_zero=True,
        )
        if readiness_path is not None and (
            not isinstance(readiness_path, str) or not readiness_path.startswith("/")
        ):
            raise ValueError(
                f"readiness_path must be a path starting with '/', e.g. '/readyz', or None to "
                f"turn it off; got {readiness_path!r}"
            )
        return cls(
            readiness_path=readiness_path,
            drain_timeout=timeout,
            pre_stop_delay=delay,
            on_abandoned=on_abandoned,
            signals=parse_signals(signals),
            progress_interval=interval,
            on_drain_started=on_drain_started,
            on_drain_finished=on_drain_finished,
        )


def parse_signals(
    signals: Iterable[signal.Signals | int | str] | None,
) -> tuple[signal.Signals, ...]:
    """Turn names ("SIGTERM", "TERM"), numbers or ``signal.Signals`` into a checked tuple."""
    if signals is None:
        return (signal.SIGINT, signal.SIGTERM)
    if isinstance(signals, (str, int)):
        signals = (signals,)
    parsed: list[signal.Signals] = []
    for item in signals:
        if isinstance(item, signal.Signals):
            parsed.append(item)
        elif isinstance(item, bool):
            raise TypeError(f"unknown signal {item!r}: use e.g. signal.SIGTERM or 'SIGTERM'")
        elif isinstance(item, int):
            try:
                parsed.append(signal.Signals(item))
            except ValueError:
                raise ValueError(f"unknown signal number {item}") from None
        elif isinstance(item, str):
            key = item.upper()
            key = key if key.startswith("SIG") else "SIG" + key
            try:
                parsed.append(signal.Signals[key])
            except KeyError:
                known = ", ".join(s.name for s in (signal.SIGINT, signal.SIGTERM))
                raise ValueError(f"unknown signal name {item!r}: use a name like {known}") from None
        else:
            raise TypeError(f"unknown signal {item!r}: use e.g. signal.SIGTERM or 'SIGTERM'")
    if not parsed:
        raise ValueError("signals must name at least one signal, e.g. ('SIGINT', 'SIGTERM')")
    return tuple(dict.fromkeys(parsed))


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
_inside_protected: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "graceful_web_inside_protected", default=False
)


class Drain:
    """The drain state of one event loop: protected work, the phase and the deadline."""

    def __init__(self) -> None:
        self.config = Config()
        self.phase = Phase.SERVING
        self.reason = ""
        self.started_at: float | None = None
        self.deadline: float | None = None
        self.forced = False
        self.wired = False  # an adapter has tied this drain into a server's shutdown
        self.report: DrainReport | None = None
        self._work: set[Work] = set()
        self._requests = 0
        # While serving, a request costs one dict entry (its task → how to name it, when it
        # started); the Work objects the drain needs are made from these when it begins.
        self._serving_requests: dict[Any, tuple[Callable[[Any], str], Any, float]] = {}
        self._promoted_requests: dict[Any, Work] = {}
        self._jobs = 0
        self.drained_requests = 0
        self.drained_jobs = 0
        self.failed_jobs = 0
        self.refused_jobs = 0
        self._abandoned: list[AbandonedWork] = []
        self._abandoned_work: set[Work] = set()
        self._idle_waiters: list[Callable[[], None]] = []
        self._shutdown_waiters: list[Callable[[], None]] = []
        self._watchdog: _thread.LockType | None = None  # released to disarm
        # Each asyncio job's task with its Work. It holds the task until it is done (the loop
        # keeps only weak references to tasks), and lets one callback, bound once here, serve
        # every job: a spawn allocates as little as it can, as each object it leaves alive
        # makes every garbage collection longer while many jobs are pending.
        self._job_work: dict[asyncio.Task[Any], Work] = {}
        self._on_job_done = self._job_done
        # What watches the drain (progress lines, the drain-started hook) runs only from
        # begin() to the end of the drain: nothing of it exists while serving.
        self._watchers: set[asyncio.Task[Any]] = set()
        self._watcher_scopes: set[anyio.CancelScope] = set()
        self._started_hook_running = False
        self._started_hook_waiters: list[Callable[[], None]] = []

    # -- state ---------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.phase is not Phase.SERVING

    @property
    def requests_in_flight(self) -> int:
        return self._requests

    @property
    def jobs_in_flight(self) -> int:
        return self._jobs

    def protected_futures(self) -> set[asyncio.Future[Any]]:
        """The tasks and futures of the protected jobs in flight."""
        return {work.future for work in self._work if work.future is not None}

    def remaining(self) -> float:
        if self.deadline is None:
            return self.config.drain_timeout
        return max(0.0, self.deadline - time.monotonic())

    def configure(self, config: Config) -> None:
        self.config = config
        self.wired = True
        # anyio imports its backend for this event loop at first use, which is begin() in the
        # signal handler: that import (15 ms and more) would hold back closing the listener.
        # Adapters configure at startup, on the loop: import it now. (Without a running loop
        # there is nothing to import yet; begin() then imports it when needed.)
        with contextlib.suppress(Exception):
            anyio.get_cancelled_exc_class()

    # -- protected work ------------------------------------------------------------------

    def _admit(self, kind: WorkKind) -> None:
        if self.phase is Phase.SERVING:
            return
        if (
            self.phase is Phase.DRAINING
            and not self.forced
            and _inside_protected.get()
            and self.remaining() > 0
        ):
            return
        if kind == "job":
            self.refused_jobs += 1
        raise ShutdownInProgress(
            f"the process is shutting down ({self.reason or 'drain started'}); "
            f"this {kind} was not started: answer 503 or hand it to another instance"
        )

    def add(self, work: Work) -> None:
        self._work.add(work)
        if work.kind == "request":
            self._requests += 1
        else:
            self._jobs += 1

    def discard(self, work: Work, *, failed: bool = False) -> None:
        if work not in self._work:
            return
        self._work.remove(work)
        counted = self.phase is not Phase.SERVING and work not in self._abandoned_work
        if work.kind == "request":
            self._requests -= 1
            if counted:
                self.drained_requests += 1
        else:
            self._jobs -= 1
            if counted:
                # A job that failed still finished within the drain; it is counted in both.
                self.drained_jobs += 1
                self.failed_jobs += failed
        if not self._work:
            self._wake_idle_waiters()

    def _wake_idle_waiters(self) -> None:
        if not self._idle_waiters:
            return  # the usual case while serving: no new list for every request
        waiters, self._idle_waiters = self._idle_waiters, []
        for wake in waiters:
            wake()

    def enter_request(
        self, task: asyncio.Task[Any], namer: Callable[[Any], str], source: Any
    ) -> bool:
        """Register the request ``task`` is serving; its name, ``namer(source)``, is made only
        if the drain ever needs it. False when this task already has a request in flight (a
        nested app's middleware): only the outer registration counts."""
        if self.phase is Phase.SERVING:
            requests = self._serving_requests
            if task in requests:
                return False
            requests[task] = (namer, source, time.monotonic())
            self._requests += 1
            return True
        if task in self._promoted_requests:
            return False
        self._promoted_requests[task] = self.request_started(namer(source), task.cancel)
        return True

    def exit_request(self, task: asyncio.Task[Any]) -> None:
        """The request ``task`` was serving has ended (call it only when ``enter_request``
        returned True)."""
        if self._serving_requests.pop(task, None) is not None:
            self._requests -= 1
            return
        work = self._promoted_requests.pop(task, None)
        if work is not None:
            self.discard(work)

    def _promote_serving_requests(self) -> None:
        for task, (namer, source, started) in self._serving_requests.items():
            work = Work("request", namer(source), task.cancel)
            work.started = started
            self._work.add(work)
            self._promoted_requests[task] = work
        self._serving_requests.clear()

    def request_started(self, name: str, cancel: Callable[[], object]) -> Work:
        """Register an in-flight request. During the drain a request still gets in through an
        already-open connection; it is served, as the listener is already closed."""
        work = Work("request", name, cancel)
        self._work.add(work)  # add(), inline: this runs for every request
        self._requests += 1
        return work

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        if not asyncio.iscoroutine(coro):
            raise TypeError(
                f"spawn() takes a coroutine, e.g. spawn(send_receipt(order_id)); got {coro!r}"
            )
        try:
            self._admit("job")
        except ShutdownInProgress:
            coro.close()  # never awaited, so close it rather than leave a warning behind
            raise
        context = contextvars.copy_context()
        if not _inside_protected.get():
            context.run(_inside_protected.set, True)
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
        trio = sys.modules.get("trio")
        if trio is None:
            coro.close()
            raise RuntimeError("spawn() needs a running asyncio or trio event loop")
        job: TrioJob[T] = TrioJob(name or str(getattr(coro, "__qualname__", "job")))
        work = Work("job", job.get_name(), job.cancel)
        self.add(work)

        async def run_job() -> None:
            failed = False
            with trio.CancelScope() as scope:
                job._scope = scope
                try:
                    job._result = await coro
                except trio.Cancelled:
                    job._cancelled = True
                    raise
                except BaseException as exc:
                    # A system task must not raise: it would crash the whole trio run.
                    failed = True
                    job._exception = exc
                    logger.error(
                        "protected job %r failed",
                        work.name,
                        exc_info=(type(exc), exc, exc.__traceback__),
                    )
                finally:
                    job._done.set()
                    self.discard(work, failed=failed)

        # A system task lives as long as the run, outside any request's nursery, which is what
        # a job started from a request needs.
        trio.lowlevel.spawn_system_task(run_job, name=work.name, context=context)
        # Under trio the handle is a TrioJob (cancel(), done(), result(), await wait()).
        return job  # type: ignore[return-value]

    def _job_done(self, task: asyncio.Task[Any]) -> None:
        work = self._job_work.pop(task)
        failed = False
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failed = True
                logger.error(
                    "protected job %r failed",
                    work.name,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
        self.discard(work, failed=failed)
        if not self._job_work:
            # Sets and dicts keep the room they once grew to: after a burst of jobs, let that
            # memory go once none is left.
            self._job_work = {}
            if not self._work:
                self._work = set()

    # -- the drain -----------------------------------------------------------------------

    def begin(self, reason: str = "shutdown") -> bool:
        """Start draining. Returns False when a drain had already started."""
        if self.phase is not Phase.SERVING:
            return False
        self.phase = Phase.DRAINING
        self._promote_serving_requests()
        self.reason = reason
        self.started_at = time.monotonic()
        self.deadline = self.started_at + self.config.drain_timeout
        logger.info(
            "drain started (%s): %d requests and %d jobs in flight, deadline in %.1f s",
            reason,
            self._requests,
            self._jobs,
            self.config.drain_timeout,
            extra={
                "graceful_reason": reason,
                "graceful_requests": self._requests,
                "graceful_jobs": self._jobs,
                "graceful_deadline_s": self.config.drain_timeout,
            },
        )
        waiters, self._shutdown_waiters = self._shutdown_waiters, []
        for wake in waiters:
            wake()
        self._start_watchers()
        return True

    # -- watching the drain: progress lines and the drain-started hook -------------------

    def _start_watchers(self) -> None:
        started_hook = self.config.on_drain_started
        if started_hook is not None:
            try:
                result = started_hook(self.reason)
            except Exception:
                logger.exception("on_drain_started hook failed")
            else:
                if inspect.isawaitable(result):
                    self._started_hook_running = True
                    hook = functools.partial(self._await_started_hook, result)
                    if not self._start_watcher(hook):
                        self._started_hook_done()
                        if inspect.iscoroutine(result):
                            result.close()
        if self.config.progress_interval > 0:
            self._start_watcher(self._report_progress)

    def _start_watcher(self, watcher: Callable[[], Awaitable[None]]) -> bool:
        """Run ``watcher`` beside the loop's other tasks, under asyncio or trio."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(self._watch(watcher), name="graceful_web drain watcher")
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
            return True
        trio = sys.modules.get("trio")
        if trio is not None:
            try:
                trio.lowlevel.spawn_system_task(self._watch, watcher)
                return True
            except RuntimeError:
                pass
        return False  # begin() was called outside any event loop: nothing can run beside it

    async def _watch(self, watcher: Callable[[], Awaitable[None]]) -> None:
        with anyio.CancelScope() as scope:
            self._watcher_scopes.add(scope)
            if self.report is not None:
                scope.cancel()  # the drain ended before this started: stop at the first await
            try:
                await watcher()
            except Exception:
                logger.exception("watching the drain failed")
            finally:
                self._watcher_scopes.discard(scope)

    async def _await_started_hook(self, pending: Awaitable[object]) -> None:
        try:
            with anyio.move_on_after(self.remaining()) as scope:
                await pending
            if scope.cancelled_caught:
                logger.warning("on_drain_started hook was still running at the deadline: cancelled")
        except Exception:
            logger.exception("on_drain_started hook failed")
        finally:
            self._started_hook_done()

    def _started_hook_done(self) -> None:
        self._started_hook_running = False
        waiters, self._started_hook_waiters = self._started_hook_waiters, []
        for wake in waiters:
            wake()

    async def _wait_started_hook(self) -> None:
        if not self._started_hook_running or self.forced:
            return
        event = anyio.Event()
        self._started_hook_waiters.append(event.set)
        # The hook cancels itself at the deadline; the grace covers its unwinding.
        deadline = self.deadline if self.deadline is not None else time.monotonic()
        with anyio.move_on_after(max(0.0, deadline + CANCEL_GRACE - time.monotonic())):
            await event.wait()

    async def _report_progress(self) -> None:
        interval = self.config.progress_interval
        next_at = anyio.current_time() + interval
        while self.phase is Phase.DRAINING:
            await anyio.sleep_until(next_at)
            now = anyio.current_time()
            # Keep the beat; after the loop was blocked, start a new beat rather than catch
            # up with a burst of lines: two lines are always half an interval apart or more.
            next_at = next_at + interval if now - next_at < interval / 2 else now + interval
            # Past the deadline (or after a second signal) what is left is being cancelled,
            # not drained: the abandoned lines have said so.
            if self.phase is Phase.DRAINING and self._work and not self._abandoned_work:
                self._log_progress()

    def _log_progress(self) -> None:
        now = time.monotonic()
        oldest = min(self._work, key=lambda work: work.started)
        age = now - oldest.started
        remaining = self.remaining()
        logger.info(
            "draining: %d requests and %d jobs left, oldest %s %r (%.1f s), %.1f s to the deadline",
            self._requests,
            self._jobs,
            oldest.kind,
            oldest.name,
            age,
            remaining,
            extra={
                "graceful_requests": self._requests,
                "graceful_jobs": self._jobs,
                "graceful_oldest_kind": oldest.kind,
                "graceful_oldest_name": oldest.name,
                "graceful_oldest_age_s": round(age, 3),
                "graceful_remaining_s": round(remaining, 3),
            },
        )

    def _stop_watchers(self) -> None:
        for scope in list(self._watcher_scopes):
            scope.cancel()

    def arm_watchdog(self) -> None:
        """Guarantee the process ends by deadline + grace even if work ignores cancellation
        or blocks the event loop. Armed only for signal-driven drains of a real server."""
        if self._watchdog is not None or self.deadline is None:
            return
        delay = self.remaining() + HARD_EXIT_AFTER
        # A bare thread waiting on a lock: unlike threading.Timer, starting it does not wait
        # until the new thread runs, which would hold back the server's own stop when armed
        # from the signal handler.
        disarmed = _thread.allocate_lock()
        disarmed.acquire()
        _thread.start_new_thread(_hard_exit_unless_disarmed, (self, disarmed, delay))
        self._watchdog = disarmed

    def disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.release()
            self._watchdog = None

    def force(self, reason: str) -> None:
        """A second signal: cancel every piece of protected work now."""
        if self.phase is Phase.SERVING:
            self.begin(reason)
        if self.forced:
            return
        self.forced = True
        self.reason = reason
        logger.warning(
            "second signal (%s): cancelling %d pieces of protected work now",
            reason,
            len(self._work),
        )
        self._abandon_all()
        self._wake_idle_waiters()

    def _abandon_all(self) -> None:
        now = time.monotonic()
        for work in sorted(self._work, key=lambda w: w.started):
            if work in self._abandoned_work:
                continue
            if work.future is not None and work.future.done():
                # It finished in this turn of the loop; its done callback, already scheduled,
                # counts it as drained. Reporting it abandoned would have it re-queued twice.
                continue
            entry = AbandonedWork(work.kind, work.name, now - work.started)
            self._abandoned_work.add(work)
            self._abandoned.append(entry)
            logger.warning(
                "abandoned %s %r after %.1f s",
                work.kind,
                work.name,
                entry.age,
                extra={
                    "graceful_kind": work.kind,
                    "graceful_name": work.name,
                    "graceful_age_s": entry.age,
                },
            )
            work.cancel()

    async def _wait_idle(self, timeout: float) -> bool:
        """Wait until no protected work is left; False when the timeout came first."""
        if not self._work:
            return True
        event = anyio.Event()
        self._idle_waiters.append(event.set)
        with anyio.move_on_after(timeout):
            await event.wait()
        return not self._work

    async def wait(self, reason: str = "shutdown") -> DrainReport:
        """Drain: wait for every protected request and job until the deadline, then cancel
        and report what is left. Safe to call more than once; later calls return the report."""
        if self.report is not None:
            return self.report
        self.begin(reason)
        try:
            while not self.forced and self._work and self.remaining() > 0:
                await self._wait_idle(self.remaining())
            if self._work and not self.forced:
                self._abandon_all()
            if self._work:
                # Cancelled work gets a moment to unwind (finally blocks, rollbacks).
                await self._wait_idle(CANCEL_GRACE)
            await self._wait_started_hook()
        except BaseException:
            # The drain itself was cancelled (e.g. the loop is being torn down): report
            # what is being lost rather than lose it silently.
            if self._work:
                self._abandon_all()
            self._finish()
            raise
        report = self._finish()
        await self._notify_abandoned(report)
        await self._notify_finished(report)
        return report

    def _finish(self) -> DrainReport:
        if self.report is not None:
            return self.report
        self.phase = Phase.STOPPED
        started = self.started_at if self.started_at is not None else time.monotonic()
        duration = time.monotonic() - started
        report = DrainReport(
            reason=self.reason,
            drained_requests=self.drained_requests,
            drained_jobs=self.drained_jobs,
            failed_jobs=self.failed_jobs,
            refused_jobs=self.refused_jobs,
            abandoned=tuple(self._abandoned),
            duration=duration,
            forced=self.forced,
        )
        for listener in tuple(_report_listeners):
            try:
                listener(self, report)
            except Exception:
                logger.exception("drain report listener failed")
        self.report = report
        self._stop_watchers()
        log = logger.warning if report.abandoned else logger.info
        log(
            "drain finished in %.0f ms: drained %d requests and %d jobs (%d failed), "
            "refused %d jobs, abandoned %d",
            duration * 1000,
            report.drained_requests,
            report.drained_jobs,
            report.failed_jobs,
            report.refused_jobs,
            len(report.abandoned),
            extra={
                "graceful_duration_ms": round(duration * 1000, 1),
                "graceful_drained_requests": report.drained_requests,
                "graceful_drained_jobs": report.drained_jobs,
                "graceful_failed_jobs": report.failed_jobs,
                "graceful_refused_jobs": report.refused_jobs,
                "graceful_abandoned": len(report.abandoned),
            },
        )
        return report

    async def _notify_abandoned(self, report: DrainReport) -> None:
        callback = self.config.on_abandoned
        if callback is None or not report.abandoned:
            return
        try:
            result = callback(report.abandoned)
            if result is not None and hasattr(result, "__await__"):
                with anyio.move_on_after(CANCEL_GRACE):
                    await result
        except Exception:
            logger.exception("on_abandoned callback failed")

    async def _notify_finished(self, report: DrainReport) -> None:
        hook = self.config.on_drain_finished
        if hook is None:
            return
        # Bounded by the deadline; when it has passed (or after a second signal) the hook
        # still gets a short moment, well before the watchdog's hard exit.
        budget = LATE_HOOK_TIME if self.forced else max(self.remaining(), LATE_HOOK_TIME)
        try:
            with anyio.move_on_after(budget) as scope:
                result = hook(report)
                if inspect.isawaitable(result):
                    await result
            if scope.cancelled_caught:
                logger.warning(
                    "on_drain_finished hook was still running after %.1f s: cancelled", budget
                )
        except Exception:
            logger.exception("on_drain_finished hook failed")

    # -- shutting_down() -----------------------------------------------------------------

    async def wait_shutting_down(self) -> None:
        if self.draining:
            return
        event = anyio.Event()
        self._shutdown_waiters.append(event.set)
        await event.wait()


def _hard_exit_unless_disarmed(drain: Drain, disarmed: _thread.LockType, delay: float) -> None:
    if not disarmed.acquire(timeout=delay):
        _hard_exit(drain)


def _hard_exit(drain: Drain) -> None:
    code = EXIT_HARD
    names = ", ".join(f"{w.kind} {w.name!r}" for w in drain._work) or "none left"
    try:
        logger.critical(
            "hard exit with status %d: protected work did not stop %.2f s after the deadline (%s)",
            code,
            HARD_EXIT_AFTER,
            names,
        )
    finally:
        exit_now(code)


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, after flushing what logging and stdio hold."""
    for handler in logging.getLogger().handlers + logger.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


# One Drain per event loop, so independent loops (tests, threads) never share state.
_drains: weakref.WeakKeyDictionary[object, Drain] = weakref.WeakKeyDictionary()

# Told of every finished drain, once, as the report is made (the metrics module listens here;
# empty unless it is used).
_report_listeners: list[Callable[[Drain, DrainReport], None]] = []


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


# The drain asked for last, with a weak reference to its loop: every request and job asks,
# and most processes run one loop, so most lookups end here instead of in the dictionary.
_last_drain: tuple[weakref.ref[object], Drain] | None = None


def current_drain() -> Drain:
    last = _last_drain
    if last is not None:
        loop = asyncio.events._get_running_loop()  # None, not an exception, without a loop
        if loop is not None and last[0]() is loop:
            return last[1]
    return _find_drain()


def _find_drain() -> Drain:
    global _last_drain
    key = _loop_key()
    drain = _drains.get(key)
    if drain is None:
        drain = _drains[key] = Drain()
    _last_drain = (weakref.ref(key), drain)
    return drain


# -- the public functions ----------------------------------------------------------------


def spawn(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Start ``coro`` as a protected background job and return its task.

    Use it where you would use ``asyncio.create_task``: shutdown waits for the job (until the
    drain deadline) instead of cancelling it. Raises ``ShutdownInProgress`` once the drain has
    started, unless called from a request or job that is itself still being drained.
    """
    return current_drain().spawn(coro, name=name)


def protect(awaitable: Awaitable[T], *, name: str | None = None) -> asyncio.Future[T]:
    """Protect work that already exists (a task or future, or a coroutine).

    Returns a future to await in place of the original. Shutdown waits for the work as it
    waits for a spawned job.
    """
    drain = current_drain()
    if asyncio.iscoroutine(awaitable):
        return drain.spawn(awaitable, name=name)
    future = asyncio.ensure_future(awaitable)
    if future.done():
        return future
    drain._admit("job")
    label = name or (future.get_name() if isinstance(future, asyncio.Task) else repr(future))
    work = Work("job", label, future.cancel, future)
    drain.add(work)

    def _done(done: asyncio.Future[Any]) -> None:
        failed = False
        if not done.cancelled() and done.exception() is not None:
            failed = True
            exc = done.exception()
            assert exc is not None
            logger.error(
                "protected job %r failed", label, exc_info=(type(exc), exc, exc.__traceback__)
            )
        drain.discard(work, failed=failed)

    future.add_done_callback(_done)
    return future


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
