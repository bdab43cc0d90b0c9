"""The records a durable store keeps and what it raises: the words the journal, the policy and
every store share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class StoreUnavailable(RuntimeError):
    """The durable store could not be reached or written: the jobs at stake were not
    recorded, so they were not accepted (answer 503 and let the client retry)."""


class StoreCorrupt(RuntimeError):
    """The durable store is not a store graceful_web can use (a damaged or foreign file)."""


class KeyConflict(ValueError):
    """An idempotency key already names a job of another function or with other arguments:
    nothing was started (answer 409 or 422)."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(
            f"the idempotency key {key!r} already names job {job_id} with another function or "
            f"other arguments: nothing was started; use a new key for new work"
        )
        self.key = key
        self.job_id = job_id


@dataclass(frozen=True)
class Record:
    """One job as its store keeps it: new (its first attempt, no failure yet) or claimed."""

    id: str
    name: str
    args: str  # JSON: {"args": [...], "kwargs": {...}}
    max_attempts: int
    attempt: int = 1  # counts every run, handed over or not
    failures: int = 0  # counts the runs that raised or whose process ended


@dataclass(frozen=True)
class Stored:
    """What a store keeps of one job, as ``status`` reads it (times in seconds since the
    epoch)."""

    state: str  # ready | dead | succeeded | cancelled
    owner: str | None
    attempt: int
    failures: int
    started: float  # when its latest attempt began
    run_after: float
    finished: float | None
    error: str | None


@dataclass(frozen=True)
class Failure:
    """What a failure makes of a record, as the policy decided it."""

    failures: int  # counted with this one
    error: str
    dead: bool  # out of attempts: kept, never run again
    delay: float  # the wait before it may be claimed again


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


def dead_job(job_id: str, name: str, args: str, failures: int, error: str | None) -> DeadJob:
    decoded = json.loads(args)
    return DeadJob(job_id, name, decoded["args"], decoded["kwargs"], failures, error or "")
