"""Recovery: from startup on, and every ``poll_interval`` while serving, a process claims and
runs the records no live process owns: handed over at a deadline, left by a process whose lease
ran out (a failure, the policy says), or failed and due for a retry. A job out of attempts is
kept as dead instead. The same poll, draining too, stops the jobs cancelled by their id, and
now and then purges finished records whose retention is over."""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import replace

from .._current import current_drain
from . import _policy
from ._functions import functions
from ._journal import Journal, active, counts, journal_for, journals
from ._records import DeadJob, Record, StoreCorrupt, StoreUnavailable
from ._runner import start_claimed
from ._status import Purges, stop_cancelled

logger = logging.getLogger("graceful_web")

_running_loop = asyncio.events._get_running_loop  # None, not an exception, without a loop

#: At most this many records are claimed at a time.
CLAIM_LIMIT = 100

_claiming: weakref.WeakKeyDictionary[Journal, asyncio.Task[None]] = weakref.WeakKeyDictionary()


async def startup() -> None:
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
    journal = journal_for(loop)
    try:
        await journal.take_lease()
        unknown = await journal.store.waiting_unknown(list(functions))
    except StoreCorrupt:
        raise
    except StoreUnavailable as exc:
        journal.keep_lease()
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
    if journal not in _claiming:
        # In the journal's context: under run() the signal cancels no task started there.
        _claiming[journal] = loop.create_task(
            _claim_while_serving(journal),
            name="graceful_web durable recovery",
            context=journal.context,
        )


async def shutdown() -> None:
    """After the drain: stop claiming, give up the lease and close the store."""
    loop = _running_loop()
    journal = None if loop is None else journals.get(loop)
    if journal is None:
        return
    claiming = _claiming.pop(journal, None)
    if claiming is not None:
        claiming.cancel()
        await asyncio.wait([claiming], timeout=1)
    await journal.close()


async def _claim_while_serving(journal: Journal) -> None:
    # Until shutdown: the drain ends the claims, not the watch for cancelled jobs.
    drain = current_drain()
    purges = Purges(journal)
    while True:
        try:
            if not drain.draining:
                await _claim(journal)
                await purges.now_and_then()
            await stop_cancelled(journal)
        except StoreUnavailable as exc:
            logger.debug("could not look for durable jobs to run or cancel: %s", exc)
        await asyncio.sleep(journal.settings.poll_interval)


async def _claim(journal: Journal) -> None:
    await journal.open()
    names = list(functions)
    claimed = await journal.store.claim(journal.owner, names, CLAIM_LIMIT)
    try:
        await _take_over_lost(journal, names, claimed)
    except StoreUnavailable as exc:
        # What was taken over before runs all the same: it is this process's now.
        logger.debug("could not take over durable jobs whose process ended: %s", exc)
    if not claimed:
        return
    drain = current_drain()
    if drain.draining:
        # The drain began while the claim was on its way: these are for another process.
        await journal.store.hand_over(journal.owner, [record.id for record in claimed])
        return
    counts["recovered"] += len(claimed)
    logger.info(
        "running %d durable jobs from the store (retries, or handed over or left behind by "
        "other processes): %s",
        len(claimed),
        ", ".join(sorted({record.name for record in claimed})),
        extra={"graceful_recovered": len(claimed)},
    )
    for record in claimed:
        start_claimed(journal, drain.work, record)


async def _take_over_lost(journal: Journal, names: list[str], claimed: list[Record]) -> None:
    """Take over, into ``claimed``, the records of processes whose lease ran out: a failure
    each, after which a job out of attempts is kept as dead instead."""
    for lost_owner, record in await journal.store.lost(names, CLAIM_LIMIT - len(claimed)):
        failure = _policy.lost(record)
        if not await journal.store.take_over(journal.owner, lost_owner, record, failure):
            continue  # renewed, or taken over by another process meanwhile
        if not failure.dead:
            claimed.append(replace(record, attempt=record.attempt + 1, failures=failure.failures))
            continue
        counts["dead"] += 1
        logger.error(
            "durable job %r (%s) failed %d times and is kept as dead (%s): it will not run "
            "again (graceful_web.durable.dead_jobs() lists it)",
            record.name,
            record.id,
            failure.failures,
            failure.error,
            extra={"graceful_job_id": record.id},
        )


async def dead_jobs() -> list[DeadJob]:
    """Jobs that failed their every attempt, oldest first, from this process's store."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    return await journal.store.dead_jobs()


async def retry_dead(*job_ids: str) -> int:
    """Make dead jobs ready to run again, their failures forgotten; how many were."""
    journal = journal_for(asyncio.get_running_loop())
    await journal.open()
    return await journal.store.retry_dead(job_ids)
