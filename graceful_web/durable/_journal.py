"""The journal of durable jobs of one event loop: each job is recorded before it is accepted,
forgotten when it is done, handed over when the drain's deadline cancels it; and the lease
that keeps this process's records its own while it lives.

Records made in one turn of the loop share one write, and so do the jobs done in one turn.
Nothing here blocks the loop: the SQLite store writes from a thread of its own, PostgreSQL
through asyncpg.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._config import HAND_OVER_TIME
from .._work import inside_protected
from . import _settings
from ._functions import JobInfo, Registered, current_job, functions
from ._store import (
    NewRecord,
    Store,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .._registry import Registry

logger = logging.getLogger("graceful_web")

_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop

T = TypeVar("T")

#: The longest pause between two tries of a write that must not be lost (a job's completion).
RETRY_AT_MOST = 2.0


class _State:
    """Records made in this process and not yet written (what a stalled store holds back)."""

    __slots__ = ("unwritten",)

    def __init__(self) -> None:
        self.unwritten = 0


state = _State()

#: How many jobs each outcome met in this process (the Prometheus collector reads these).
counts = dict.fromkeys(
    ("recorded", "refused", "completed", "failed", "dead", "handed_over", "recovered"), 0
)

#: The records the current request made, set by the adapters as it starts (a list shared with
#: the tasks it starts): its response leaves once they are written.
request_records: contextvars.ContextVar[list[asyncio.Future[None]] | None] = (
    contextvars.ContextVar("graceful_web_request_records", default=None)
)


def records_of_request() -> list[asyncio.Future[None]]:
    """A new list of the records the calling request makes (the adapters ask only when this
    process has durable jobs)."""
    records: list[asyncio.Future[None]] = []
    request_records.set(records)
    return records


async def written(records: list[asyncio.Future[None]]) -> bool:
    """Wait for a request's records; False when any of them could not be written (those jobs
    were not accepted). The list is emptied: its records are settled."""
    pending, records[:] = list(records), []
    ok = True
    for future in pending:
        try:
            await asyncio.shield(future)
        except Exception:
            ok = False
    return ok


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


def open_store(url: str) -> Store:
    """The store a URL names (checked by the settings); its driver is imported only now."""
    if url.startswith("sqlite:///"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    from ._postgres import PostgresStore

    return PostgresStore(url)


def spawn(
    registry: Registry,
    job: Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    encoded: str,
    name: str | None,
) -> asyncio.Task[None]:
    """Record a call of ``job`` (written before the response that accepted it leaves) and run
    it as a protected job whose cancellation at the deadline hands it over."""
    loop = _running_loop()
    if loop is None:
        raise RuntimeError(
            "durable jobs need an asyncio event loop (asyncio or uvloop): spawn them from a "
            "request handler or a coroutine, not under trio"
        )
    journal = journal_for(loop)
    settings = journal.settings
    attempts = job.max_attempts or settings.max_attempts
    record = NewRecord(uuid.uuid4().hex, job.name, encoded, attempts)
    first: list[asyncio.Future[None]] = []  # filled below, before the job first runs
    task = registry.spawn(
        journal.run_new(record, job, args, kwargs, first), name=name or job.name, loop=loop
    )
    future = journal.record(record)
    first.append(future)
    records = request_records.get()
    if records is not None:
        records.append(future)
    journal.keep_lease()  # (spawned before any adapter's startup, there is none yet)
    registry.hands_over_when_cut(task)
    return task


async def recorded() -> None:
    """Wait until every durable job spawned so far on this loop is recorded; raises
    ``StoreUnavailable`` when their write failed (they were not accepted and will not run)."""
    loop = _running_loop()
    journal = None if loop is None else journals.get(loop)
    if journal is not None:
        await journal.barrier()


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
        self.context = context
        self._items: list[T] = []
        self._next: asyncio.Future[None] | None = None
        self.in_flight: asyncio.Future[None] | None = None

    def add(self, item: T) -> asyncio.Future[None]:
        self._items.append(item)
        future = self._next
        if future is None:
            future = self._next = self._loop.create_future()
            if self.in_flight is None:
                self._loop.call_soon(self._start, context=self.context)
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
        self._loop.create_task(self._flush(items, future), context=self.context)

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
        self.context = contextvars.copy_context()
        self.context.run(inside_protected.set, True)
        self._inserts: _Batches[NewRecord] = _Batches(loop, self._insert, self.context)
        self._completions: _Batches[str] = _Batches(loop, self._complete, self.context)
        self._opened: asyncio.Future[None] | None = None
        self._leased = False  # this process's lease is in the store
        self._lease: asyncio.Task[None] | None = None
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
        self,
        record: NewRecord,
        job: Registered,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        first: list[asyncio.Future[None]],
    ) -> None:
        try:
            await asyncio.shield(first[0])
        except Exception:
            return  # not recorded, so not accepted: said once, for the whole batch
        await self.run(record.id, record.name, 1, job.function, args, kwargs)

    async def run(
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

    # -- the lease -----------------------------------------------------------------------

    async def take_lease(self) -> None:
        """Write this process's lease now (raises StoreUnavailable) and keep it alive."""
        await self.open()
        await self.store.heartbeat(self.owner, self.settings.lease)
        self._leased = True
        self.keep_lease()

    def keep_lease(self) -> None:
        if self._lease is None:
            self._lease = self.loop.create_task(
                self._renew_lease(), name="graceful_web durable lease", context=self.context
            )

    async def _renew_lease(self) -> None:
        # Renewed until the journal closes, after the drain: a draining process still owns
        # what it runs.
        lease = self.settings.lease
        while True:
            await asyncio.sleep(lease / 3 if self._leased else self.settings.poll_interval)
            try:
                await self.open()
                await self.store.heartbeat(self.owner, lease)
                self._leased = True
            except StoreUnavailable as exc:
                logger.warning("could not renew the durable lease (%s): trying again", exc)

    async def close(self) -> None:
        """Give up the lease (what this process still holds is free at once) and the store."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.cancel()
            await asyncio.wait([lease], timeout=1)
        pending = [f for f in (self._inserts.latest(), self._completions.latest()) if f]
        if pending:
            await asyncio.wait(pending, timeout=1)
        try:
            await asyncio.wait_for(self.store.forget_owner(self.owner), 1)
        except Exception as exc:
            logger.debug("could not give up the durable lease: %r", exc)
        await self.store.close()
        journals.pop(self.loop, None)
