"""What a durable store does, whatever it is: the records it keeps, the one protocol every
store follows, and the store chosen by a URL.

A record is a job's function name and JSON arguments. Its ``owner`` is the process running
it, which keeps its lease alive in the store; a record with no owner, or whose owner's lease
ran out, is free for any process to claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: The longest wait before a failed job is retried, however often it failed.
MAX_RETRY_DELAY = 60.0


class StoreUnavailable(RuntimeError):
    """The durable store could not be reached or written: the jobs at stake were not
    recorded, so they were not accepted (answer 503 and let the client retry)."""


class StoreCorrupt(RuntimeError):
    """The durable store is not a store graceful_web can use (a damaged or foreign file)."""


@dataclass(frozen=True)
class NewRecord:
    id: str
    name: str
    args: str  # JSON: {"args": [...], "kwargs": {...}}
    max_attempts: int


@dataclass(frozen=True)
class Claimed:
    """A record this process now owns and runs."""

    id: str
    name: str
    args: str
    attempt: int


@dataclass(frozen=True)
class DeadJob:
    """A job that failed ``max_attempts`` times (it raised, or its process ended while
    running it): kept in the store, never run again unless retried by hand."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    failures: int
    error: str


class Store(Protocol):
    async def open(self) -> None:
        """Reach the store and make its tables; raises StoreUnavailable or StoreCorrupt."""

    async def close(self) -> None: ...

    async def insert(self, owner: str, records: Sequence[NewRecord]) -> None:
        """Record new jobs, owned by ``owner`` and on their first attempt, in one write."""

    async def complete(self, ids: Sequence[str]) -> None:
        """Forget finished jobs, in one write."""

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        """Release ``owner``'s records for any process to claim at once."""

    async def fail(self, owner: str, job_id: str, error: str, retry_delay: float) -> bool:
        """Count a failure; the job is retried after a growing delay, or is dead once it
        failed ``max_attempts`` times: then True."""

    async def heartbeat(self, owner: str, lease: float) -> None:
        """``owner`` is alive: its records stay its own for ``lease`` seconds more."""

    async def forget_owner(self, owner: str) -> None:
        """``owner`` stopped: what it still holds is free at once."""

    async def claim(
        self, owner: str, names: Sequence[str], limit: int
    ) -> tuple[list[Claimed], list[DeadJob]]:
        """Take up to ``limit`` free records of the functions ``names`` for ``owner``. A record
        whose owner's lease ran out counts a failure; one that reaches its attempts is marked
        dead instead, and returned apart."""

    async def dead_jobs(self) -> list[DeadJob]: ...

    async def retry_dead(self, ids: Sequence[str]) -> int:
        """Make dead jobs ready again, their failures forgotten; how many were."""

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        """Ready records of functions not among ``names``, by name: jobs no one here can run."""


def dead_job(
    job_id: str, name: str, args: str, failures: int, error: str | None
) -> DeadJob:
    import json

    decoded = json.loads(args)
    return DeadJob(job_id, name, decoded["args"], decoded["kwargs"], failures, error or "")
