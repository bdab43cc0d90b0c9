"""The journal of durable jobs of one event loop: each job is recorded before it is accepted,
forgotten when it is done, handed over when the drain's deadline cancels it; and, beside it,
the recovery that keeps this process's lease alive and runs what others left behind.

Records made in one turn of the loop share one write, and so do the jobs done in one turn.
Nothing here blocks the loop: the SQLite store writes from a thread of its own, PostgreSQL
through asyncpg.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import socket
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._current import current_drain
from .._work import inside_protected
from . import _settings
from ._functions import DurableCall, JobInfo, current_job, functions
from ._store import (
    Claimed,
    DeadJob,
    NewRecord,
    Store,
    StoreCorrupt,
    StoreUnavailable,
    open_store,
)

if TYPE_CHECKING:
    from .._registry import Registry

logger = logging.getLogger("graceful_web")

_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop

T = TypeVar("T")

#: How long a cancelled job's hand-over may take: well inside the drain's grace after the
#: deadline. Should it not make it, the lease runs out and another process runs the job.
HAND_OVER_TIME = 0.2
#: At most this many records are claimed at a time.
CLAIM_LIMIT = 100
#: The longest pause between two tries of a write that must not be lost (a job's completion).
RETRY_AT_MOST = 2.0


class _State:
    """What each response checks before it leaves: records made and not yet written."""

    __slots__ = ("unwritten",)

    def __init__(self) -> None:
        self.unwritten = 0


state = _State()

#: How many jobs each outcome met in this process (the Prometheus collector reads these).
counts = dict.fromkeys(
    ("recorded", "refused", "completed", "failed", "dead", "handed_over", "recovered"), 0
)

journals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Journal] = (
    weakref.WeakKeyDictionary()
)


def active() -> bool:
    """Whether this process uses durable jobs at all: a job is registered, or a store set."""
    return bool(functions or _settings._configured or os.environ.get(_settings.URL_ENV))


def journal_for(loop: asyncio.AbstractEventLoop) -> Journal:
    journal = journals.get(loop)
    if journal is None:
        journal = journals[loop] = Journal(_settings.current_settings(), loop)
    return journal


def spawn(registry: Registry, call: DurableCall[Any], name: str | None) -> asyncio.Task[None]:
    """Record ``call`` (written before the response that accepted it leaves) and run it as a
    protected job whose cancellation at the deadline hands it over."""
    loop = _running_loop()
    if loop is None:
        raise RuntimeError(
            "durable jobs need an asyncio event loop (asyncio or uvloop): spawn them from a "
            "request handler or a coroutine, not under trio"
        )
    journal = journal_for(loop)
    settings = journal.settings
    record = NewRecord(
        uuid.uuid4().hex,
        call.function.name,
        call.encode(),
        call.function.max_attempts or settings.max_attempts,
    )
    written: list[asyncio.Future[None]] = []  # filled below, before the job first runs
    task = registry.spawn(
        journal.run_new(record, call, written), name=name or record.name, loop=loop
    )
    written.append(journal.record(record))
    if journal.recovery is None:
        journal.start_recovery()  # spawned before any adapter's startup: keep the lease alive
    registry.hands_over.add(task)
    task.add_done_callback(registry.hands_over.discard)
    return task


async def recorded() -> None:
    """Wait until every durable job spawned so far on this loop is recorded; raises
    ``StoreUnavailable`` when their write failed (they were not accepted and will not run)."""
    loop = _running_loop()
    journal = None if loop is None else journals.get(loop)
    if journal is not None:
        await journal.barrier()


async def start() -> None:
    """At the server's startup: open the store, take this process's lease, and from now on
    run what others handed over or left behind. Nothing at all without durable jobs."""
    if not active():
        return
    loop = _running_loop()
    if loop is None:
        logger.warning(
            "durable jobs need an asyncio event loop (asyncio or uvloop), and this server runs "
            "trio: none will be recovered or accepted here"
        )
        return
    await journal_for(loop).start()


async def stop() -> None:
    """After the drain: give up the lease and close the store."""
    loop = _running_loop()
    journal = None if loop is None else journals.get(loop)
    if journal is not None:
        await journal.stop()


class _Batches(Generic[T]):
    """Items added in one turn of the loop share one ``write``; the next batch waits for the
    one in flight, so writes leave in the order they were made."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        write: Callable[[list[T]], Awaitable[None]],
        context: contextvars.Context,
    ) -> None:
        self._loop = loop
        self._write = write
        self._context = context
        self._items: list[T] = []
        self._next: asyncio.Future[None] | None = None
        self.in_flight: asyncio.Future[None] | None = None

    def add(self, item: T) -> asyncio.Future[None]:
        self._items.append(item)
        future = self._next
        if future is None:
            future = self._next = self._loop.create_future()
            if self.in_flight is None:
                self._loop.call_soon(self._start, context=self._context)
        return future

    def latest(self) -> asyncio.Future[None] | None:
        return self._next or self.in_flight

    def _start(self) -> None:
        if self.in_flight is not None or self._next is None:
            return
        items, future = self._items, self._next
        self._items, self._next = [], None
        self.in_flight = future
        # In a context of its own: under run() the signal cancels no task started here.
        self._loop.create_task(self._flush(items, future), context=self._context)

    async def _flush(self, items: list[T], future: asyncio.Future[None]) -> None:
        try:
            await self._write(items)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: not every batch has a waiter left
        except BaseException:
            future.set_exception(StoreUnavailable("the write was interrupted"))
            future.exception()
            raise
        else:
            future.set_result(None)
        finally:
            self.in_flight = None
            if self._next is not None:
                self._start()


class Journal:
    """The durable jobs of one event loop and the lease of the process that runs them."""

    def __init__(self, settings: _settings.Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.store: Store = open_store(settings.url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # Its own tasks (writes, the lease) run marked as protected work's follow-ups, so
        # run() leaves them alone at the signal; they are not work the drain waits for.
        self._context = contextvars.copy_context()
        self._context.run(inside_protected.set, True)
        self._inserts: _Batches[NewRecord] = _Batches(loop, self._insert, self._context)
        self._completions: _Batches[str] = _Batches(loop, self._complete, self._context)
        self._opened: asyncio.Future[None] | None = None
        self._leased = False  # this process's lease is in the store
        self.recovery: asyncio.Task[None] | None = None
        self._store_down = False

    # -- the store -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store once; every caller shares that one attempt (and, after a failure,
        the next one)."""
        opened = self._opened
        if opened is None or (opened.done() and opened.exception() is not None):
            opened = self._opened = self.loop.create_future()
            try:
                await self.store.open()
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else StoreUnavailable(repr(exc))
                opened.set_exception(error)
                opened.exception()
                raise
            opened.set_result(None)
            return
        await asyncio.shield(opened)

    async def _insert(self, records: list[NewRecord]) -> None:
        try:
            await self.open()
            if not self._leased:
                # Owned by a process with no lease, a record would look abandoned at once.
                await self.store.heartbeat(self.owner, self.settings.lease)
                self._leased = True
            await self.store.insert(self.owner, records)
        except Exception as exc:
            counts["refused"] += len(records)
            logger.error(
                "%d durable jobs could not be recorded (%s): they were not accepted and will "
                "not run; their requests are answered 503",
                len(records),
                exc,
            )
            raise
        finally:
            state.unwritten -= len(records)
        counts["recorded"] += len(records)

    async def _complete(self, ids: list[str]) -> None:
        await self._retrying(lambda: self.store.complete(ids), "forget finished durable jobs")
        counts["completed"] += len(ids)

    async def _retrying(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """A write that must not be lost: tried again until it succeeds. (Cancelled at the
        deadline, the record stays and the job may run again: at least once, never lost.)"""
        pause = 0.05
        while True:
            try:
                await self.open()
                result = await write()
            except (StoreUnavailable, OSError) as exc:
                if not self._store_down:
                    self._store_down = True
                    logger.warning("could not %s (%s): trying again", what, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_AT_MOST)
                continue
            if self._store_down:
                self._store_down = False
                logger.info("the durable job store answers again")
            return result

    # -- recording and running -----------------------------------------------------------

    def record(self, record: NewRecord) -> asyncio.Future[None]:
        state.unwritten += 1
        return self._inserts.add(record)

    async def barrier(self) -> None:
        """Wait for every record made so far on this loop."""
        latest = self._inserts.latest()
        if latest is not None:
            await asyncio.shield(latest)

    async def run_new(
        self, record: NewRecord, call: DurableCall[Any], written: list[asyncio.Future[None]]
    ) -> None:
        try:
            await asyncio.shield(written[0])
        except Exception:
            return  # not recorded, so not accepted: said once, for the whole batch
        await self._run(
            record.id, record.name, 1, call.function.function, call.args, call.kwargs
        )

    async def _run(
        self,
        job_id: str,
        name: str,
        attempt: int,
        function: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: Any,
    ) -> None:
        current_job.set(JobInfo(job_id, name, attempt))
        try:
            await function(*args, **kwargs)
        except asyncio.CancelledError:
            counts["handed_over"] += 1
            try:
                await asyncio.wait_for(self.store.hand_over(self.owner, [job_id]), HAND_OVER_TIME)
            except Exception as exc:
                logger.warning(
                    "durable job %r (%s) could not be handed over (%r): another process runs "
                    "it once this one's lease runs out",
                    name,
                    job_id,
                    exc,
                )
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            dead = await self._retrying(
                lambda: self.store.fail(self.owner, job_id, error, self.settings.retry_delay),
                "record a durable job's failure",
            )
            counts["failed"] += 1
            if dead:
                counts["dead"] += 1
                logger.error(
                    "durable job %r (%s) failed on attempt %d and is kept as dead: it will not "
                    "run again (graceful_web.durable.dead_jobs() lists it)",
                    name,
                    job_id,
                    attempt,
                    extra={"graceful_job_id": job_id, "graceful_attempt": attempt},
                )
            raise
        await asyncio.shield(self._completions.add(job_id))

    # -- recovery ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.open()
            await self.store.heartbeat(self.owner, self.settings.lease)
            self._leased = True
            unknown = await self.store.waiting_unknown(list(functions))
        except StoreCorrupt:
            raise
        except StoreUnavailable as exc:
            logger.warning(
                "the durable job store is unreachable at startup (%s): durable jobs are refused "
                "(503) until it answers",
                exc,
            )
        else:
            for name, waiting in unknown.items():
                logger.warning(
                    "%d durable jobs wait in the store for a function this process does not "
                    "have, %r: register it (@durable.job(name=%r)) where it now lives, or they "
                    "wait for a process that has it",
                    waiting,
                    name,
                    name,
                )
        self.start_recovery()

    def start_recovery(self) -> None:
        if self.recovery is None:
            self.recovery = self.loop.create_task(
                self._recover(), name="graceful_web durable recovery", context=self._context
            )

    async def stop(self) -> None:
        recovery, self.recovery = self.recovery, None
        if recovery is not None:
            recovery.cancel()
            await asyncio.wait([recovery], timeout=1)
        pending = [f for f in (self._inserts.latest(), self._completions.latest()) if f]
        if pending:
            await asyncio.wait(pending, timeout=1)
        try:
            await asyncio.wait_for(self.store.forget_owner(self.owner), 1)
        except Exception as exc:
            logger.debug("could not give up the durable lease: %r", exc)
        await self.store.close()
        journals.pop(self.loop, None)

    async def _recover(self) -> None:
        settings = self.settings
        drain = current_drain()
        next_beat = self.loop.time() + settings.lease / 3
        while True:
            if self.loop.time() >= next_beat:
                try:
                    await self.open()
                    await self.store.heartbeat(self.owner, settings.lease)
                    self._leased = True
                    next_beat = self.loop.time() + settings.lease / 3
                except StoreUnavailable as exc:
                    logger.warning("could not renew the durable lease (%s): trying again", exc)
                    next_beat = self.loop.time() + settings.poll_interval
            if not drain.draining:
                try:
                    await self._claim()
                except StoreUnavailable as exc:
                    logger.debug("could not look for durable jobs to run: %s", exc)
            await asyncio.sleep(min(settings.poll_interval, max(0.0, next_beat - self.loop.time())))

    async def _claim(self) -> None:
        await self.open()
        claimed, dead = await self.store.claim(self.owner, list(functions), CLAIM_LIMIT)
        for gone in dead:
            counts["dead"] += 1
            _log_dead(gone)
        if not claimed:
            return
        drain = current_drain()
        if drain.draining:
            # The drain began while the claim was on its way: these are for another process.
            await self.store.hand_over(self.owner, [job.id for job in claimed])
            return
        counts["recovered"] += len(claimed)
        logger.info(
            "running %d durable jobs from the store (retries, or handed over or left behind by "
            "other processes): %s",
            len(claimed),
            ", ".join(sorted({job.name for job in claimed})),
            extra={"graceful_recovered": len(claimed)},
        )
        for job in claimed:
            self._start_claimed(job, drain.work)

    def _start_claimed(self, job: Claimed, registry: Registry) -> None:
        function = functions[job.name]
        decoded = json.loads(job.args)
        coro = self._run(
            job.id, job.name, job.attempt, function.function, decoded["args"], decoded["kwargs"]
        )
        # Started in a plain context: not a follow-up of this recovery's own tasks.
        task = contextvars.Context().run(
            registry.spawn, coro, name=job.name, loop=self.loop
        )
        registry.hands_over.add(task)
        task.add_done_callback(registry.hands_over.discard)


def _log_dead(job: DeadJob) -> None:
    logger.error(
        "durable job %r (%s) failed %d times and is kept as dead (%s): it will not run again "
        "(graceful_web.durable.dead_jobs() lists it)",
        job.name,
        job.id,
        job.failures,
        job.error,
        extra={"graceful_job_id": job.id},
    )


async def dead_jobs() -> list[DeadJob]:
    """Jobs that failed their every attempt, oldest first, from the store of this process."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    return await journal.store.dead_jobs()


async def retry_dead(*job_ids: str) -> int:
    """Make dead jobs ready to run again, their failures forgotten; how many were."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    return await journal.store.retry_dead(job_ids)
