"""What a durable store does, whatever it is: the one protocol every store follows, and the
store a URL names.

A record is a job's function name and JSON arguments. Its ``owner`` is the process running
it, which keeps its lease alive in the store; a record with no owner is free for any process
to claim, and one whose owner's lease ran out is lost: another process counts its failure and
takes it over.
A finished record (succeeded or cancelled) is kept, owned by no one, for the retention
period, then purged;
a dead one is kept until retried. A step's result is kept with its job's record.
A store only runs queries: what a failure makes of a record is decided by ``_policy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._records import DeadJob, Failure, Record, Stored


class Store(Protocol):
    async def open(self) -> None:
        """Reach the store and make its tables; raises StoreUnavailable or StoreCorrupt."""

    async def close(self) -> None: ...

    async def insert(self, owner: str, records: Sequence[Record]) -> None:
        """Record new jobs, owned by ``owner`` and on their first attempt, in one write."""

    async def insert_keyed(
        self, owner: str, records: Sequence[Record]
    ) -> dict[str, tuple[str, str]]:
        """Record new jobs whose ids stand for idempotency keys (no two alike), in one atomic
        write: a record whose id is kept already is not written; the answer has those, each
        with the name and arguments the store keeps for it."""

    async def complete(self, ids: Sequence[str]) -> None:
        """Mark running jobs succeeded, in one write (a cancelled one stays cancelled)."""

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        """Release ``owner``'s records for any process to claim at once."""

    async def fail(self, owner: str, record: Record, failure: Failure) -> bool:
        """Write ``failure`` of a run of ``owner``'s: the record, released, counts it, keeps its
        error and waits ``failure.delay``, or is dead. Only while ``owner`` holds it with
        ``record.failures`` counted: else False, and nothing was written."""

    async def take_over(
        self, owner: str, lost_owner: str, record: Record, failure: Failure
    ) -> bool:
        """Write ``failure`` of a lost record and take it for ``owner`` on its next attempt
        (or, dead, leave it to no one). Only while ``lost_owner``'s lease is still out and it
        holds the record with ``record.failures`` counted: else False, and nothing was written."""

    async def heartbeat(self, owner: str, lease: float) -> None:
        """``owner`` is alive: its records stay its own for ``lease`` seconds more."""

    async def forget_owner(self, owner: str) -> None:
        """``owner`` stopped: what it still holds is lost at once."""

    async def lost(self, names: Sequence[str], limit: int) -> list[tuple[str, Record]]:
        """Up to ``limit`` records of the functions ``names`` whose owner's lease ran out,
        oldest first, each with its owner."""

    async def claim(self, owner: str, names: Sequence[str], limit: int) -> list[Record]:
        """Take up to ``limit`` free records of the functions ``names`` that are due, oldest
        first, for ``owner``: each on its next attempt. Two owners never take the same."""

    async def dead_jobs(self) -> list[DeadJob]: ...

    async def steps(self, job_id: str) -> dict[str, str]:
        """The JSON results of the job's recorded steps, by step name."""

    async def record_steps(self, steps: Sequence[tuple[str, str, str]]) -> None:
        """Record steps' results, ``(job id, step name, JSON)``, in one write; a step recorded
        already keeps its first result."""

    async def status(self, job_id: str) -> Stored | None:
        """What the store keeps of a job; None when it does not know it."""

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that is queued, running or waiting for a retry; False, and nothing
        written, when it is in no such state."""

    async def cancelled(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that were cancelled."""

    async def purge(self, retention: float) -> int:
        """Forget jobs finished (succeeded or cancelled) ``retention`` seconds ago or more, with
        their steps; how many."""

    async def retry_dead(self, ids: Sequence[str]) -> int:
        """Make dead jobs ready again, their failures forgotten; how many were."""

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        """Ready records of functions not among ``names``, by name: jobs no one here can run."""


def open_store(url: str) -> Store:
    """The store a URL names (checked by the settings); its driver is imported only now."""
    if url.startswith("sqlite:///"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    from ._postgres import PostgresStore

    return PostgresStore(url)
