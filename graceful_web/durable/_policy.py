"""What a failure makes of a durable job, decided here once for every store: when it runs
again, and when it is dead. The stores only write what was decided.

A job fails when it raises, or when its process ended while running it (its lease ran out).
Each failure counts; the job is dead once it failed ``max_attempts`` times. After it raised,
it waits ``retry_delay`` before the next attempt, doubled with each further failure, up to
``MAX_RETRY_DELAY``; after its process ended, it may run again at once.
"""

from __future__ import annotations

import math

from ._records import Failure, Record

#: The longest wait before a failed job is retried, however often it failed.
MAX_RETRY_DELAY = 60.0


def retry_delay(failures: int, first: float) -> float:
    """The wait after the ``failures``-th failure: ``first``, doubled with each further one,
    at most ``MAX_RETRY_DELAY``."""
    doublings = failures - 1
    if doublings >= math.log2(MAX_RETRY_DELAY / first):
        return MAX_RETRY_DELAY  # (and no float overflow however many failures)
    return min(MAX_RETRY_DELAY, first * 2.0**doublings)


def is_dead(failures: int, max_attempts: int) -> bool:
    """A job that failed its every attempt runs no more."""
    return failures >= max_attempts


def raised(record: Record, error: str, first_delay: float) -> Failure:
    """``record``'s run raised ``error``."""
    failures = record.failures + 1
    return Failure(
        failures, error, is_dead(failures, record.max_attempts), retry_delay(failures, first_delay)
    )


def lost(record: Record) -> Failure:
    """``record``'s process ended while running it: its lease ran out."""
    failures = record.failures + 1
    error = f"its process ended while running attempt {record.attempt}"
    return Failure(failures, error, is_dead(failures, record.max_attempts), 0.0)
