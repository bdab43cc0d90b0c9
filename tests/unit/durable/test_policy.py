"""The one place that decides what a failure makes of a durable job: its back-off and the
dead rule, the same for every store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graceful_web.durable import _policy
from graceful_web.durable._records import Failure, Record


def record(attempt: int = 1, failures: int = 0, max_attempts: int = 5) -> Record:
    return Record("id", "policy.job", '{"args":[],"kwargs":{}}', max_attempts, attempt, failures)


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0)]
)
def test_the_back_off_doubles_from_the_first_delay_up_to_a_minute(
    failures: int, delay: float
) -> None:
    assert _policy.retry_delay(failures, 1.0) == delay


def test_a_first_delay_above_the_longest_is_cut_to_it() -> None:
    assert _policy.retry_delay(1, 100.0) == _policy.MAX_RETRY_DELAY == 60.0


def test_however_many_failures_the_back_off_is_a_minute_not_an_overflow() -> None:
    assert _policy.retry_delay(100_000, 1e-300) == 60.0


@given(
    failures=st.integers(min_value=1, max_value=2000),
    first=st.floats(min_value=1e-6, max_value=120, allow_nan=False, allow_infinity=False),
)
def test_the_back_off_is_the_first_delay_doubled_per_further_failure_at_most_a_minute(
    failures: int, first: float
) -> None:
    exact = min(_policy.MAX_RETRY_DELAY, first * 2 ** min(failures - 1, 64))
    assert _policy.retry_delay(failures, first) == exact


@pytest.mark.parametrize(
    ("failures", "max_attempts", "dead"), [(0, 1, False), (1, 1, True), (4, 5, False), (5, 5, True)]
)
def test_a_job_is_dead_once_it_failed_its_every_attempt(
    failures: int, max_attempts: int, dead: bool
) -> None:
    assert _policy.is_dead(failures, max_attempts) is dead


def test_a_job_that_raised_counts_a_failure_and_waits_its_back_off() -> None:
    assert _policy.raised(record(attempt=3, failures=2), "ValueError: x", 0.5) == Failure(
        3, "ValueError: x", dead=False, delay=2.0
    )


def test_a_job_that_raised_on_its_last_attempt_is_dead() -> None:
    failure = _policy.raised(record(attempt=5, failures=4), "ValueError: x", 1.0)
    assert (failure.failures, failure.dead) == (5, True)


def test_a_job_whose_process_ended_counts_a_failure_and_may_run_again_at_once() -> None:
    assert _policy.lost(record(attempt=2, failures=0)) == Failure(
        1, "its process ended while running attempt 2", dead=False, delay=0.0
    )


def test_a_job_whose_process_ended_on_its_last_attempt_is_dead() -> None:
    assert _policy.lost(record(attempt=7, failures=4, max_attempts=5)).dead


def test_a_handed_over_job_is_no_failure_so_its_attempts_may_outnumber_its_failures() -> None:
    # Attempt 9 after 8 hand-overs: still its first failure, not dead at max_attempts 5.
    assert not _policy.lost(record(attempt=9, failures=0)).dead
