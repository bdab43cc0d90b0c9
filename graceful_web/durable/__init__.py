"""Durable jobs: work that outlives the process.

A durable job is recorded (its function's stable name and JSON arguments) before the client
is told it was accepted, forgotten once it has finished, handed over to a successor when the
drain's deadline cancels it, and run again by another process when its own died (its lease
ran out). It runs at least once: ``current()`` gives its id and attempt, to make it
idempotent. ::

    from graceful_web import durable, spawn

    @durable.job
    async def build_report(order_id: int) -> None: ...

    spawn(build_report(42))  # in a handler: recorded before the response leaves

The store is one URL (``GRACEFUL_DURABLE_URL`` or ``configure(url=...)``): an SQLite file by
default, PostgreSQL (``pip install 'graceful-web[postgres]'``) for fleets.
"""

from ._functions import JobInfo, current
from ._job import DurableCall, DurableFunction, job
from ._journal import recorded
from ._recovery import dead_jobs, retry_dead
from ._settings import configure
from ._store import DeadJob, StoreCorrupt, StoreUnavailable

__all__ = [
    "DeadJob",
    "DurableCall",
    "DurableFunction",
    "JobInfo",
    "StoreCorrupt",
    "StoreUnavailable",
    "configure",
    "current",
    "dead_jobs",
    "job",
    "recorded",
    "retry_dead",
]
