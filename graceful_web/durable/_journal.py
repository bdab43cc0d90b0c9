"""The journal of durable jobs of one event loop: it writes their records (made before they
are accepted, forgotten once they are done) and keeps the lease that makes this process's
records its own while it lives; with what befell the jobs of this process, counted.

Records made in one turn of the loop share one write, and so do the jobs done in one turn and
the steps completed in one turn.
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
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._work import inside_protected
from . import _settings
from ._batches import Batches
from ._functions import functions
from ._records import Record, StoreUnavailable
from ._store import Store, open_store

logger = logging.getLogger("graceful_web")

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
    (
        "recorded",
        "refused",
        "completed",
        "failed",
        "dead",
        "handed_over",
        "recovered",
        "cancelled",
    ),
    0,
)

journals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Journal] = (
    weakref.WeakKeyDictionary()
)


def active() -> bool:
    """Whether this process uses durable jobs at all: a job is registered, or a store set."""
    return bool(functions or _settings._configured or os.environ.get(_settings.URL_ENV))


def journal_for(loop: asyncio.AbstractEventLoop) -> Journal:
    """The journal of ``loop``, made (not yet opened) the first time it is asked for."""
    journal = journals.get(loop)
    if journal is None:
        journal = journals[loop] = Journal(_settings.current_settings(), loop)
    return journal


class Keyed:
    """A record whose id stands for an idempotency key, on its way to the store."""

    __slots__ = ("found", "record")

    def __init__(self, record: Record, loop: asyncio.AbstractEventLoop) -> None:
        self.record = record
        #: Once written: the name and arguments of the job the key named already, else None.
        self.found: asyncio.Future[tuple[str, str] | None] = loop.create_future()


class Journal:
    """The records of the durable jobs of one event loop and the lease of their process."""

    def __init__(self, settings: _settings.Settings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.store: Store = open_store(settings.url)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        # Its own tasks (writes, the lease) run marked as protected work's follow-ups, so
        # run() leaves them alone at the signal; they are not work the drain waits for.
        self.context = contextvars.copy_context()
        self.context.run(inside_protected.set, True)
        self._inserts: Batches[Record] = Batches(loop, self._insert, self.context)
        self._completions: Batches[str] = Batches(loop, self._complete, self.context)
        self._keyed: Batches[Keyed] = Batches(loop, self._insert_keyed, self.context)
        self._steps: Batches[tuple[str, str, str]] = Batches(
            loop, self._record_steps, self.context
        )
        #: The jobs this process runs, by id, and those of them being cancelled.
        self.running: dict[str, asyncio.Task[None]] = {}
        self.cancelling: set[str] = set()
        self._opened: asyncio.Future[None] | None = None
        self._leased = False  # this process's lease is in the store
        self._lease: asyncio.Task[None] | None = None
        self._store_down = False

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

    # -- writes ------------------------------------------------------------------------

    def record(self, record: Record) -> asyncio.Future[None]:
        """Record a new job with the others of this turn; the future says whether it was."""
        state.unwritten += 1
        return self._inserts.add(record)

    def record_keyed(
        self, record: Record
    ) -> tuple[asyncio.Future[None], asyncio.Future[tuple[str, str] | None]]:
        """Record a new job whose id stands for an idempotency key, with the others of this
        turn: the future of the write, and what the key named already (else None)."""
        state.unwritten += 1
        keyed = Keyed(record, self.loop)
        return self._keyed.add(keyed), keyed.found

    def step_done(self, job_id: str, name: str, result: str) -> asyncio.Future[None]:
        """Record a step's result with the others of this turn."""
        return self._steps.add((job_id, name, result))

    def steps_written(self) -> asyncio.Future[None] | None:
        """The future of the last step's write, if any is in flight."""
        return self._steps.latest()

    async def barrier(self) -> None:
        """Wait for every record made so far on this loop."""
        for batches in (self._inserts, self._keyed):
            latest = batches.latest()
            if latest is not None:
                await asyncio.shield(latest)

    def completed(self, job_id: str) -> asyncio.Future[None]:
        """Forget a finished job with the others of this turn (tried until it is)."""
        return self._completions.add(job_id)

    async def _insert(self, records: list[Record]) -> None:
        await self._new(records, lambda: self.store.insert(self.owner, records))

    async def _insert_keyed(self, batch: list[Keyed]) -> None:
        first = {keyed.record.id: keyed.record for keyed in reversed(batch)}
        kept: dict[str, tuple[str, str]] = {}

        async def insert() -> None:
            kept.update(await self.store.insert_keyed(self.owner, list(first.values())))

        try:
            await self._new([keyed.record for keyed in batch], insert)
        except Exception as exc:
            for keyed in batch:
                keyed.found.set_exception(exc)
                keyed.found.exception()
            raise
        for keyed in batch:
            record = first[keyed.record.id]
            if keyed.record is not record:  # the same key twice in this turn
                keyed.found.set_result(kept.get(record.id, (record.name, record.args)))
            else:
                keyed.found.set_result(kept.get(record.id))

    async def _new(self, records: list[Record], write: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.open()
            if not self._leased:
                # Owned by a process with no lease, a record would look abandoned at once.
                await self.store.heartbeat(self.owner, self.settings.lease)
                self._leased = True
            await write()
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
        await self.retrying(lambda: self.store.complete(ids), "forget finished durable jobs")
        counts["completed"] += len(ids)

    async def _record_steps(self, steps: list[tuple[str, str, str]]) -> None:
        await self.open()
        await self.store.record_steps(steps)

    async def retrying(self, write: Callable[[], Awaitable[T]], what: str) -> T:
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

    # -- the lease ---------------------------------------------------------------------

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
        batches = (self._inserts, self._keyed, self._completions, self._steps)
        pending = [f for f in (batch.latest() for batch in batches) if f]
        if pending:
            await asyncio.wait(pending, timeout=1)
        try:
            await asyncio.wait_for(self.store.forget_owner(self.owner), 1)
        except Exception as exc:
            logger.debug("could not give up the durable lease: %r", exc)
        await self.store.close()
        journals.pop(self.loop, None)
