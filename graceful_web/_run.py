"""``run(main())``: the drain for plain asyncio programs (workers, queue consumers, scripts).

``asyncio.run`` cancels every task on Ctrl-C and dies on SIGTERM. ``run`` starts ``main`` the
same way, but on SIGINT/SIGTERM (or once ``main`` has ended) it cancels only the tasks that
are not protected and drains the protected jobs (``spawn``/``protect``) within the one
deadline, with the report, logging and exit status of the web adapters.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar, Unpack, cast

from . import _quirks, _signals
from . import durable as _durable
from ._config import CANCEL_GRACE, Config, DrainSettings, config_of
from ._current import current_drain
from ._drain import Drain
from ._report import (
    DrainReport,
)
from ._stop import start_drain
from ._work import inside_protected

__all__ = ["run"]

logger = logging.getLogger("graceful_web")

T = TypeVar("T")


def run(
    main: Coroutine[Any, Any, T],
    *,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    **settings: Unpack[DrainSettings],
) -> T:
    """Run ``main`` like ``asyncio.run``, draining protected jobs when it is stopped.

    On the first of ``signals`` (SIGINT and SIGTERM by default), or once ``main`` has ended,
    the drain starts: tasks that are not protected are cancelled, as ``asyncio.run`` does,
    and jobs started with ``spawn``/``protect`` get until ``drain_timeout`` (else
    ``GRACEFUL_DRAIN_TIMEOUT``, else 25 s) to finish. ``main`` itself is cancelled at the
    signal; when it is awaiting a protected job right then, it is cancelled once that job is
    done, so the cancellation never reaches the job through the ``await``. A second signal
    cancels everything at once. ``loop_factory`` makes the event loop, as for ``asyncio.run``
    (e.g. ``uvloop.new_event_loop``).

    Returns what ``main`` returned when nothing was abandoned. Otherwise raises
    ``SystemExit`` with the drain's exit status: 0 when a signal stopped ``main`` and every
    protected job finished, 75 when work was abandoned at the deadline, 128 + the signal
    number after a second signal. An exception raised by ``main`` is raised again once the
    drain is over.
    """
    if not asyncio.iscoroutine(main):
        raise TypeError(f"run() takes a coroutine, e.g. run(main()); got {main!r}")
    try:
        _refuse_running_loop()
        if loop_factory is not None and not callable(loop_factory):
            raise TypeError(
                "loop_factory must be a callable that returns a new event loop, e.g. "
                f"uvloop.new_event_loop (not uvloop.new_event_loop()); got {loop_factory!r}"
            )
        config = replace(config_of("run()", dict(settings), DrainSettings), readiness_path=None)
    except BaseException:
        main.close()  # never started: close it rather than leave a "never awaited" warning
        raise
    supervisor: _Supervisor[T] = _Supervisor(config)
    try:
        with asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
            outcome = runner.run(supervisor.supervise(main))
    finally:
        # Only now, with every task ended and the loop closed, is the process out of danger
        # of hanging; until then the watchdog may still end it.
        if supervisor.drain is not None:
            supervisor.drain.disarm_watchdog()
    return outcome.deliver()


def _refuse_running_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "graceful_web.run() cannot be called from a running event loop: it starts its own, "
        "like asyncio.run(). Call it once, at the program's entry point; inside async code "
        "use graceful_web.spawn() or protect()"
    )


@dataclass
class _Outcome(Generic[T]):
    report: DrainReport
    result: T | None = None
    error: BaseException | None = None
    has_result: bool = False

    def deliver(self) -> T:
        if self.error is not None:
            raise self.error
        if not self.has_result or self.report.exit_code:
            raise SystemExit(self.report.exit_code)
        return cast(T, self.result)


class _Supervisor(Generic[T]):
    """Runs ``main`` beside the drain and decides, at the signal, what is cancelled."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.drain: Drain | None = None
        self._main: asyncio.Task[T | None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[Any] | None = None
        # Tasks started from inside protected work (a job's gather or TaskGroup children):
        # they are part of that work, so the signal does not cancel them. A task factory
        # marks them in their context (so their own children are marked too) and notes them.
        self._follow_ups: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._result: T | None = None
        self._has_result = False
        self._error: BaseException | None = None

    async def supervise(self, main: Coroutine[Any, Any, T]) -> _Outcome[T]:
        loop = asyncio.get_running_loop()
        drain = self.drain = current_drain()
        drain.configure(self.config)
        self._supervisor = asyncio.current_task()
        self._stopped = loop.create_future()
        self._note_follow_ups(loop, drain)
        await _durable.startup()
        self._main = loop.create_task(self._call_main(main), name="main")
        installed = _signals.install(loop, self.config.signals, self._on_signal)
        try:
            ends: list[asyncio.Future[Any]] = [self._main, self._stopped]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            if not drain.draining:
                error = self._error
                self._start_drain(
                    "main returned" if error is None else f"main raised {type(error).__name__}"
                )
            report = await drain.wait("shutdown")
            await self._wait_for_main(drain)
            await _durable.shutdown()
        finally:
            if installed is not None:
                installed.uninstall()
        return _Outcome(report, self._result, self._error, self._has_result)

    async def _call_main(self, main: Coroutine[Any, Any, T]) -> T | None:
        # What main raises is kept for after the drain; a SystemExit or KeyboardInterrupt
        # let out of a task would stop the loop under the protected jobs.
        try:
            self._result = await main
            self._has_result = True
            return self._result
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            return None

    def _on_signal(self, sig: signal.Signals) -> None:
        drain = self.drain
        assert drain is not None
        if not drain.draining:
            self._start_drain(sig.name)
            return
        drain.force(sig.name)
        if self._main is not None:
            self._main.cancel()

    def _start_drain(self, reason: str) -> None:
        drain = self.drain
        assert drain is not None
        others = asyncio.all_tasks()
        start_drain(drain, reason)
        protected = drain.protected_futures()
        for task in others:
            if task is self._main or task is self._supervisor:
                continue
            if task in protected or self._is_follow_up(task):
                continue
            task.cancel()
        self._stop_main()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _stop_main(self) -> None:
        task = self._main
        drain = self.drain
        if task is None or task.done() or drain is None:
            return
        awaited = _awaited_protected(task, drain.protected_futures())
        if awaited is not None and not drain.forced:
            # An await passes a cancellation on to what it awaits: cancelling main now would
            # cancel the protected job with it. main is cancelled once the job is done.
            awaited.add_done_callback(lambda _: self._stop_main())
            return
        task.cancel()

    async def _wait_for_main(self, drain: Drain) -> None:
        """main is unwinding (its ``finally`` blocks) or waits on a protected job: give it
        what is left of the deadline, then cancel it once more."""
        task = self._main
        assert task is not None
        if task.done():
            return
        await asyncio.wait([task], timeout=0 if drain.forced else drain.remaining())
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_GRACE)
        if not task.done():
            logger.warning("main did not stop after being cancelled: leaving it to the watchdog")

    def _is_follow_up(self, task: asyncio.Task[Any]) -> bool:
        if task in self._follow_ups:
            return True
        get_context = getattr(task, "get_context", None)
        return get_context is not None and bool(get_context().get(inside_protected, False))

    def _note_follow_ups(self, loop: asyncio.AbstractEventLoop, drain: Drain) -> None:
        follow_ups = self._follow_ups
        is_job = drain.work.is_job

        def task_factory(
            loop: asyncio.AbstractEventLoop, coro: Any, **options: Any
        ) -> asyncio.Task[Any]:
            context = options.get("context")
            if context is None:
                context = options["context"] = contextvars.copy_context()
                # Started from inside a job: part of that work, and so is all it starts.
                if not context.get(inside_protected, False) and is_job(
                    asyncio.current_task(loop)
                ):
                    context.run(inside_protected.set, True)
            task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **options)
            if context.get(inside_protected, False) or is_job(asyncio.current_task(loop)):
                follow_ups.add(task)
            return task

        loop.set_task_factory(task_factory)


def _awaited_protected(
    task: asyncio.Task[Any], protected: set[asyncio.Future[Any]]
) -> asyncio.Future[Any] | None:
    """The protected job ``task`` is awaiting right now (directly or through gather)."""
    waiter = _quirks.awaited_future(task)
    if waiter is None:
        return None
    if waiter in protected:
        return waiter
    if any(child in protected for child in _quirks.gathered_children(waiter)):
        return waiter
    return None
