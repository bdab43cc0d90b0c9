"""What every durable store promises (``graceful_web.durable._store.Store``), proven the same
way on SQLite and on a real PostgreSQL. Two stores on one database stand for two processes:
``a`` records and runs, ``b`` is another replica looking for work."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from graceful_web.durable import _policy
from graceful_web.durable._records import DeadJob, Record
from graceful_web.durable._store import Store, open_store

A, B = "host:1:a", "host:2:b"
JOB, OTHER = "contract.job", "contract.other"
NAMES = [JOB]
LIMIT = 100


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def opened(store_url: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Opens another store on the same database, as another process would."""
    stores: list[Store] = []

    async def another() -> Store:
        store = open_store(store_url)
        await store.open()
        stores.append(store)
        return store

    yield another
    for store in stores:
        await store.close()


@pytest.fixture
async def a(opened: Callable[[], Awaitable[Store]]) -> Store:
    store = await opened()
    await store.heartbeat(A, 30)
    return store


@pytest.fixture
async def b(opened: Callable[[], Awaitable[Store]]) -> Store:
    store = await opened()
    await store.heartbeat(B, 30)
    return store


def new(name: str = JOB, max_attempts: int = 3, n: int = 0) -> Record:
    return Record(uuid.uuid4().hex, name, f'{{"args":[{n}],"kwargs":{{"k":"v"}}}}', max_attempts)


def next_attempt(record: Record, failures: int = 0) -> Record:
    return Record(
        record.id, record.name, record.args, record.max_attempts, record.attempt + 1, failures
    )


async def claimed_within(store: Store, owner: str, seconds: float) -> list[Record]:
    deadline = time.monotonic() + seconds
    while True:
        claimed = await store.claim(owner, NAMES, LIMIT)
        if claimed or time.monotonic() > deadline:
            return claimed
        await asyncio.sleep(0.02)


async def test_a_recorded_job_is_its_owners_while_its_lease_lives(a: Store, b: Store) -> None:
    await a.insert(A, [new(), new()])
    assert await b.claim(B, NAMES, LIMIT) == []
    assert await b.lost(NAMES, LIMIT) == []


async def test_a_handed_over_job_is_claimed_at_once_whole_on_its_next_attempt(
    a: Store, b: Store
) -> None:
    record = new(max_attempts=4)
    await a.insert(A, [record])
    await a.hand_over(A, [record.id])
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(record)]
    assert await a.claim(A, NAMES, LIMIT) == []  # b holds it now


async def test_only_its_owner_hands_a_job_over(a: Store, b: Store) -> None:
    record = new()
    await a.insert(A, [record])
    await b.hand_over(B, [record.id])
    assert await b.claim(B, NAMES, LIMIT) == []


async def test_a_completed_job_is_forgotten(a: Store, b: Store) -> None:
    done, kept = new(), new()
    await a.insert(A, [done, kept])
    await a.complete([done.id])
    await a.hand_over(A, [done.id, kept.id])
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(kept)]


async def test_a_failed_job_waits_its_back_off_then_runs_again(a: Store, b: Store) -> None:
    record = new()
    await a.insert(A, [record])
    failure = _policy.raised(record, "ValueError: once", first_delay=0.4)
    assert (failure.failures, failure.dead, failure.delay) == (1, False, 0.4)
    started = time.monotonic()
    assert await a.fail(A, record, failure)
    assert await b.claim(B, NAMES, LIMIT) == []
    assert await claimed_within(b, B, 5) == [next_attempt(record, failures=1)]
    assert time.monotonic() - started >= 0.3


async def test_the_last_failure_makes_a_job_dead_kept_until_retried(a: Store, b: Store) -> None:
    record = new(max_attempts=2)
    await a.insert(A, [record])
    first = _policy.raised(record, "ValueError: first", first_delay=0.01)
    assert await a.fail(A, record, first)
    [again] = await claimed_within(b, B, 5)
    assert again == next_attempt(record, failures=1)
    last = _policy.raised(again, "ValueError: last", first_delay=0.01)
    assert last.dead
    assert await b.fail(B, again, last)
    await asyncio.sleep(0.05)
    assert await b.claim(B, NAMES, LIMIT) == []
    assert await a.dead_jobs() == [DeadJob(record.id, JOB, [0], {"k": "v"}, 2, "ValueError: last")]
    assert await a.waiting_unknown([]) == {}  # dead is not waiting

    assert await a.retry_dead([record.id, "no-such-job"]) == 1
    assert await a.retry_dead([record.id]) == 0
    assert await a.dead_jobs() == []
    assert await b.claim(B, NAMES, LIMIT) == [
        Record(record.id, JOB, record.args, 2, attempt=3, failures=0)
    ]


async def test_a_failure_is_written_only_by_the_owner_it_was_decided_for(
    a: Store, b: Store
) -> None:
    record = new()
    await a.insert(A, [record])
    failure = _policy.raised(record, "ValueError: x", first_delay=0.01)
    assert not await b.fail(B, record, failure)  # not b's
    stale = Record(record.id, record.name, record.args, record.max_attempts, 1, failures=1)
    assert not await a.fail(A, stale, _policy.raised(stale, "ValueError: x", 0.01))
    assert await b.claim(B, NAMES, LIMIT) == []  # still a's, unchanged
    assert await a.fail(A, record, failure)
    assert not await a.fail(A, record, failure)  # written once: it is no longer a's


async def lease_runs_out(
    opened: Callable[[], Awaitable[Store]], b: Store, record: Record
) -> Store:
    """``record`` is recorded by a process whose lease then runs out; that process's store."""
    a = await opened()
    await a.heartbeat(A, 0.2)
    await a.insert(A, [record])
    assert await b.lost(NAMES, LIMIT) == []
    await asyncio.sleep(0.3)
    assert await b.lost(NAMES, LIMIT) == [(A, record)]
    return a


async def test_a_job_whose_owners_lease_ran_out_is_lost_and_taken_over_counting_a_failure(
    opened: Callable[[], Awaitable[Store]], b: Store
) -> None:
    record = new()
    await lease_runs_out(opened, b, record)
    failure = _policy.lost(record)
    assert failure.delay == 0 and not failure.dead
    assert await b.take_over(B, A, record, failure)
    assert not await b.take_over(B, A, record, failure)  # taken once
    assert await b.lost(NAMES, LIMIT) == []
    assert await b.claim(B, NAMES, LIMIT) == []  # b's now, on its second attempt
    await b.hand_over(B, [record.id])
    assert await b.claim(B, NAMES, LIMIT) == [
        Record(record.id, JOB, record.args, 3, attempt=3, failures=1)
    ]


async def test_a_lost_job_on_its_last_attempt_is_dead_saying_its_process_ended(
    opened: Callable[[], Awaitable[Store]], b: Store
) -> None:
    record = new(max_attempts=1)
    await lease_runs_out(opened, b, record)
    failure = _policy.lost(record)
    assert failure.dead
    assert await b.take_over(B, A, record, failure)
    assert await b.lost(NAMES, LIMIT) == []
    assert await b.claim(B, NAMES, LIMIT) == []
    [dead] = await b.dead_jobs()
    assert (dead.id, dead.failures) == (record.id, 1)
    assert dead.error == "its process ended while running attempt 1"


async def test_a_lease_renewed_in_time_keeps_a_job_its_owners(
    opened: Callable[[], Awaitable[Store]], b: Store
) -> None:
    record = new()
    a = await lease_runs_out(opened, b, record)
    await a.heartbeat(A, 30)  # back before b took it over
    assert not await b.take_over(B, A, record, _policy.lost(record))
    await a.hand_over(A, [record.id])  # still a's to hand over, unchanged
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(record)]


async def test_what_a_stopped_owner_still_held_is_lost_at_once(a: Store, b: Store) -> None:
    record = new()
    await a.insert(A, [record])
    await a.forget_owner(A)
    assert await b.lost(NAMES, LIMIT) == [(A, record)]


async def test_a_claim_takes_due_jobs_of_its_functions_oldest_first_up_to_its_limit(
    a: Store, b: Store
) -> None:
    older, newer, other = new(n=1), new(n=2), new(OTHER, n=3)
    for record in (older, newer, other):
        await a.insert(A, [record])
    await a.hand_over(A, [older.id, newer.id, other.id])
    assert await b.claim(B, [], LIMIT) == []
    assert await b.claim(B, NAMES, 1) == [next_attempt(older)]
    assert await b.waiting_unknown(NAMES) == {OTHER: 1}
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(newer)]
    assert await b.claim(B, NAMES, LIMIT) == []
    assert await b.claim(B, [JOB, OTHER], LIMIT) == [next_attempt(other)]


async def test_two_claiming_at_once_never_take_the_same_job(
    opened: Callable[[], Awaitable[Store]], a: Store
) -> None:
    records = [new(n=n) for n in range(40)]
    await a.insert(A, records)
    await a.hand_over(A, [record.id for record in records])
    others = [await opened() for _ in range(3)]
    owners = [f"host:{n}:c" for n in range(3)]
    for store, owner in zip(others, owners, strict=True):
        await store.heartbeat(owner, 30)
    taken: list[list[Record]] = []
    for _ in range(4):
        taken += await asyncio.gather(
            *(store.claim(owner, NAMES, 7) for store, owner in zip(others, owners, strict=True))
        )
    ids = [record.id for batch in taken for record in batch]
    assert sorted(ids) == sorted(record.id for record in records)
