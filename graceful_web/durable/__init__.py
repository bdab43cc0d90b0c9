"""Durable jobs: work that outlives the process.

A durable job is recorded (its function's stable name and JSON arguments) before the client
is told it was accepted, forgotten once it has finished, handed over to a successor when the
drain's deadline cancels it, and run again by another process when its own died (its lease
ran out). It runs at least once: ``current()`` gives its id and attempt, to make it
idempotent, or split it in steps (``step``): a job run again resumes after its last
completed step. ::

    from graceful_web import durable, spawn

    @durable.job
    async def build_report(order_id: int) -> None:
        rows = await durable.step("fetch", fetch_rows, order_id)
        await durable.step("render", render, rows)

    spawn(build_report(42))  # in a handler: recorded before the response leaves
    job_id = await durable.spawn(build_report(42), key=idempotency_key)  # for a 202's Location
    await durable.status(job_id), await durable.cancel(job_id)

The store is one URL (``GRACEFUL_DURABLE_URL`` or ``configure(url=...)``): an SQLite file by
default, PostgreSQL (``pip install 'graceful-web[postgres]'``) for fleets.
"""

from ._accept import UNRECORDED_HEADERS as UNRECORDED_HEADERS
from ._accept import UNRECORDED_STATUS as UNRECORDED_STATUS
from ._accept import UNRECORDED_TEXT as UNRECORDED_TEXT
from ._accept import recorded
from ._accept import records_of_request as records_of_request
from ._accept import request_records as request_records
from ._accept import written as written
from ._functions import JobInfo, current
from ._functions import functions as functions
from ._job import DurableCall, DurableFunction, job
from ._journal import active as active
from ._journal import counts as counts
from ._records import DeadJob, KeyConflict, StoreCorrupt, StoreUnavailable
from ._recovery import dead_jobs, retry_dead
from ._recovery import shutdown as shutdown
from ._recovery import startup as startup
from ._settings import configure
from ._spawn import spawn
from ._status import JobStatus, cancel, status
from ._steps import step

# Also here for the adapters, the lifespans and the Prometheus collector, and kept out of
# __all__: ``functions`` (the durable functions of this process, empty without any),
# ``active``, ``startup`` (at the server's startup) and ``shutdown`` (after the drain), what a
# request's records are (``records_of_request``, ``request_records``, ``written``) and the
# answer when they cannot be written (``UNRECORDED_*``), and ``counts`` (by outcome).

__all__ = [
    "DeadJob",
    "DurableCall",
    "DurableFunction",
    "JobInfo",
    "JobStatus",
    "KeyConflict",
    "StoreCorrupt",
    "StoreUnavailable",
    "cancel",
    "configure",
    "current",
    "dead_jobs",
    "job",
    "recorded",
    "retry_dead",
    "spawn",
    "status",
    "step",
]
