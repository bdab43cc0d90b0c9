"""The one way a durable job starts and runs, whether new (spawned here, recorded first) or
claimed from the store: as a protected job whose cancellation at the deadline hands it over,
whose failure the policy settles, and whose record is forgotten once it is done."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from .._config import HAND_OVER_TIME
from . import _policy
from ._accept import request_records
from ._functions import JobFunction, JobInfo, Registered, current_job, functions
from ._journal import Journal, counts, journal_for
from ._records import Record
from ._steps import Run, current_run

if TYPE_CHECKING:
    from .._registry import Registry

logger = logging.getLogger("graceful_web")

_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop


class Spawned(NamedTuple):
    """A durable call just spawned: its task, its record, and (when it has an idempotency
    key) what the key named already, once written."""

    task: asyncio.Task[None]
    record: Record
    written: asyncio.Future[None]
    found: asyncio.Future[tuple[str, str] | None] | None


def key_id(key: str) -> str:
    """The id of the job an idempotency key names: the same in every process."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:31]


def spawn(
    registry: Registry,
    job: Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    encoded: str,
    name: str | None,
    key: str | None = None,
) -> Spawned:
    """Record a call of ``job`` (written before the response that accepted it leaves) and run
    it once it is recorded: unless its ``key`` names a job kept already."""
    loop = _running_loop()
    if loop is None:
        raise RuntimeError(
            "durable jobs need an asyncio event loop (asyncio or uvloop): spawn them from a "
            "request handler or a coroutine, not under trio"
        )
    journal = journal_for(loop)
    attempts = job.max_attempts or journal.settings.max_attempts
    job_id = uuid.uuid4().hex if key is None else key_id(key)
    record = Record(job_id, job.name, encoded, attempts)
    recorded: list[asyncio.Future[Any]] = []  # filled below, before the job first runs
    # Started first: a drain that has begun refuses it (ShutdownInProgress) unrecorded.
    task = _start(journal, registry, record, job.function, args, kwargs, name, recorded)
    found = None
    if key is None:
        future = journal.record(record)
    else:
        future, found = journal.record_keyed(record)
        recorded.append(found)
    recorded.insert(0, future)
    records = request_records.get()
    if records is not None:
        records.append(future)
    journal.keep_lease()  # (spawned before any adapter's startup, there is none yet)
    return Spawned(task, record, future, found)


def start_claimed(journal: Journal, registry: Registry, record: Record) -> None:
    """Run a record claimed from the store (recorded already)."""
    decoded = json.loads(record.args)
    function = functions[record.name].function
    # Started in a plain context: not a follow-up of the recovery's own task.
    contextvars.Context().run(
        _start, journal, registry, record, function, decoded["args"], decoded["kwargs"], None, []
    )


def _start(
    journal: Journal,
    registry: Registry,
    record: Record,
    function: JobFunction,
    args: Any,
    kwargs: Any,
    name: str | None,
    recorded: list[asyncio.Future[Any]],
) -> asyncio.Task[None]:
    run = _run(journal, record, function, args, kwargs, recorded)
    task = registry.spawn(run, name=name or record.name, loop=journal.loop)
    registry.hands_over_when_cut(task)
    return task


async def _run(
    journal: Journal,
    record: Record,
    function: JobFunction,
    args: Any,
    kwargs: Any,
    recorded: list[asyncio.Future[Any]],
) -> None:
    """``recorded``: for a new record, the future of its write, then (with a key) what the key
    named already; empty for a record claimed from the store."""
    if recorded:
        try:
            await asyncio.shield(recorded[0])
        except Exception:
            return  # not recorded, so not accepted: said once, for the whole batch
        if len(recorded) > 1 and recorded[1].result() is not None:
            return  # its key names a job kept already: that one runs, or ran
    # Known as running here from now on: a cancel by its id finds this task.
    task = journal.running[record.id] = cast("asyncio.Task[None]", asyncio.current_task())
    current_job.set(JobInfo(record.id, record.name, record.attempt))
    current_run.set(Run(journal, record.id, record.attempt == 1))
    try:
        await function(*args, **kwargs)
    except asyncio.CancelledError:
        if record.id in journal.cancelling:
            counts["cancelled"] += 1
            raise
        counts["handed_over"] += 1
        await _hand_over(journal, record)
        raise
    except Exception as exc:
        await _failed(journal, record, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        if journal.running.get(record.id) is task:
            del journal.running[record.id]
        journal.cancelling.discard(record.id)
    await asyncio.shield(journal.completed(record.id))


def log_conflict(record: Record, found: asyncio.Future[tuple[str, str] | None]) -> None:
    """Say so when a keyed record was not started because its key names a job of another
    function or other arguments (for a spawn that has no caller to raise ``KeyConflict`` to)."""
    if found.cancelled() or found.exception() is not None:
        return
    kept = found.result()
    if kept is not None and kept != (record.name, record.args):
        logger.error(
            "durable job %r was not started: its idempotency key names job %s, of %r with "
            "other arguments",
            record.name,
            record.id,
            kept[0],
        )


async def _hand_over(journal: Journal, record: Record) -> None:
    steps = journal.steps_written()
    try:
        if steps is not None:
            # Its steps written first: a successor then runs none of them again.
            await asyncio.wait([steps], timeout=HAND_OVER_TIME)
        await asyncio.wait_for(journal.store.hand_over(journal.owner, [record.id]), HAND_OVER_TIME)
    except Exception as exc:
        logger.warning(
            "durable job %r (%s) could not be handed over (%r): another process runs it once "
            "this one's lease runs out",
            record.name,
            record.id,
            exc,
        )


async def _failed(journal: Journal, record: Record, error: str) -> None:
    failure = _policy.raised(record, error, journal.settings.retry_delay)
    written = await journal.retrying(
        lambda: journal.store.fail(journal.owner, record, failure),
        "record a durable job's failure",
    )
    counts["failed"] += 1
    if written and failure.dead:
        counts["dead"] += 1
        logger.error(
            "durable job %r (%s) failed on attempt %d and is kept as dead: it will not run again "
            "(graceful_web.durable.dead_jobs() lists it)",
            record.name,
            record.id,
            record.attempt,
            extra={"graceful_job_id": record.id, "graceful_attempt": record.attempt},
        )
