"""A durable job by its id: its status, read from the store, and its cancellation, written
there compare-and-set (only a job queued, running or waiting for a retry is cancelled) and
carried out by whichever process runs it within one poll interval, draining or not."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

from ._journal import Journal, journal_for
from ._records import Stored

logger = logging.getLogger("graceful_web")

#: Finished records are purged this often at most (sooner when the retention is shorter).
PURGE_EVERY = 60.0

State = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled", "unknown"]


@dataclass(frozen=True)
class JobStatus:
    """Where a durable job stands. ``attempt`` counts its runs so far; ``since`` is when its
    running attempt began; ``finished`` when it succeeded or was cancelled; ``retry_at``
    when a failed job may run again; ``error`` is its last failure (failed, dead). Times are
    seconds since the epoch. ``unknown``: never recorded, or purged after the retention."""

    state: State
    attempt: int = 0
    since: float | None = None
    finished: float | None = None
    retry_at: float | None = None
    error: str | None = None


def job_status(stored: Stored | None) -> JobStatus:
    """What a stored record says of its job."""
    if stored is None:
        return JobStatus("unknown")
    if stored.state in ("succeeded", "cancelled"):
        state: State = "succeeded" if stored.state == "succeeded" else "cancelled"
        return JobStatus(state, stored.attempt, finished=stored.finished)
    if stored.state == "dead":
        return JobStatus("dead", stored.attempt, error=stored.error)
    if stored.owner is not None:
        return JobStatus("running", stored.attempt, since=stored.started)
    if stored.failures:
        return JobStatus("failed", stored.attempt, retry_at=stored.run_after, error=stored.error)
    return JobStatus("queued", stored.attempt)


async def status(job_id: str) -> JobStatus:
    """Where the durable job ``job_id`` stands, read from this process's store."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    return job_status(await journal.store.status(job_id))


async def cancel(job_id: str) -> bool:
    """Cancel the durable job ``job_id``: queued or waiting for a retry, it never runs;
    running, it is cancelled (``CancelledError`` inside it) within one poll interval on the
    process running it, and is neither retried nor handed over. False when it is in no such
    state (unknown, finished, dead or cancelled already)."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    if not await journal.store.cancel(job_id):
        return False
    _stop(journal, [job_id])  # here at once when this process runs it
    return True


async def stop_cancelled(journal: Journal) -> None:
    """Cancel the jobs this process runs whose records were cancelled (by any process)."""
    if journal.running:
        _stop(journal, await journal.store.cancelled(list(journal.running)))


def _stop(journal: Journal, ids: list[str]) -> None:
    for job_id in ids:
        task = journal.running.get(job_id)
        if task is not None and job_id not in journal.cancelling:
            journal.cancelling.add(job_id)
            logger.info("durable job %s was cancelled: it stops now", job_id)
            task.cancel()


class Purges:
    """Finished records purged once their retention is over, now and then."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._next = 0.0

    async def now_and_then(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        retention = self._journal.settings.retention
        self._next = now + min(PURGE_EVERY, retention)
        purged = await self._journal.store.purge(retention)
        if purged:
            logger.debug("purged %d finished durable jobs", purged)
