"""What every durable store promises (``graceful_web.durable._store.Store``), proven the same
way on SQLite and on a real PostgreSQL. Two stores on one database stand for two processes:
``a`` records and runs, ``b`` is another replica looking for work."""

from __future__ import annotations

import asyncio
import sqlite3
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


async def lease_runs_out(opened: Callable[[], Awaitable[Store]], b: Store, record: Record) -> Store:
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


async def test_a_keyed_record_is_written_once_and_found_after(a: Store, b: Store) -> None:
    record = new(n=1)
    assert await a.insert_keyed(A, [record]) == {}
    again = Record(record.id, JOB, '{"args":[2],"kwargs":{}}', 3)
    assert await b.insert_keyed(B, [again, new(n=3)]) == {record.id: (JOB, record.args)}
    await a.hand_over(A, [record.id])
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(record)]  # the first, unchanged


async def test_many_writing_one_key_at_once_make_one_record(
    opened: Callable[[], Awaitable[Store]],
) -> None:
    stores = [await opened() for _ in range(4)]
    for n, store in enumerate(stores):
        await store.heartbeat(f"host:{n}:k", 30)
    job_id = uuid.uuid4().hex
    answers = await asyncio.gather(
        *(
            store.insert_keyed(f"host:{n % 4}:k", [Record(job_id, JOB, f'{{"n":{n}}}', 3)])
            for n, store in enumerate(stores * 5)
        )
    )
    assert sum(answer == {} for answer in answers) == 1
    [first] = [n for n, answer in enumerate(answers) if answer == {}]
    assert all(
        answer == {job_id: (JOB, f'{{"n":{first}}}')}
        for n, answer in enumerate(answers)
        if n != first
    )


async def test_a_completed_job_is_kept_succeeded_and_never_claimed(a: Store, b: Store) -> None:
    done, kept = new(), new()
    await a.insert(A, [done, kept])
    await a.complete([done.id])
    stored = await b.status(done.id)
    assert stored is not None and (stored.state, stored.owner) == ("succeeded", None)
    assert stored.finished is not None and abs(stored.finished - time.time()) < 5
    await a.hand_over(A, [done.id, kept.id])
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(kept)]


async def test_status_follows_a_job_from_running_through_a_failure(a: Store, b: Store) -> None:
    record = new()
    assert await a.status(record.id) is None
    await a.insert(A, [record])
    running = await b.status(record.id)
    assert running is not None
    assert (running.state, running.owner, running.attempt, running.failures) == ("ready", A, 1, 0)
    assert abs(running.started - time.time()) < 5
    assert await a.fail(A, record, _policy.raised(record, "ValueError: x", first_delay=30))
    failed = await b.status(record.id)
    assert failed is not None
    assert (failed.state, failed.owner, failed.failures, failed.error) == (
        "ready",
        None,
        1,
        "ValueError: x",
    )
    assert 20 < failed.run_after - time.time() < 40


async def test_a_step_keeps_its_first_result(a: Store, b: Store) -> None:
    record, other = new(), new()
    await a.insert(A, [record, other])
    assert await b.steps(record.id) == {}
    await a.record_steps([(record.id, "fetch", "[1,2]"), (other.id, "fetch", "3")])
    await b.record_steps([(record.id, "fetch", "[9]"), (record.id, "send", '"ok"')])
    assert await b.steps(record.id) == {"fetch": "[1,2]", "send": '"ok"'}
    assert await a.steps(other.id) == {"fetch": "3"}


async def test_a_cancelled_job_is_never_claimed_nor_settled(a: Store, b: Store) -> None:
    queued, running = new(n=1), new(n=2)
    await a.insert(A, [queued, running])
    await a.hand_over(A, [queued.id])
    assert await b.cancel(queued.id)
    assert await b.cancel(running.id)
    assert not await b.cancel(running.id)  # once
    assert not await b.cancel("no-such-job")
    assert sorted(await a.cancelled([queued.id, running.id, "no-such-job"])) == sorted(
        [queued.id, running.id]
    )
    assert await b.claim(B, NAMES, LIMIT) == []
    assert not await a.fail(A, running, _policy.raised(running, "ValueError: x", 0.01))
    await a.complete([running.id])
    await a.hand_over(A, [running.id])
    for job_id in (queued.id, running.id):
        stored = await b.status(job_id)
        assert stored is not None and (stored.state, stored.owner) == ("cancelled", None)
        assert stored.finished


async def test_a_lost_job_cancelled_meanwhile_is_not_taken_over(
    opened: Callable[[], Awaitable[Store]], b: Store
) -> None:
    record = new()
    await lease_runs_out(opened, b, record)
    assert await b.cancel(record.id)
    assert not await b.take_over(B, A, record, _policy.lost(record))


async def test_a_finished_job_is_purged_after_its_retention_with_its_steps(
    a: Store, b: Store
) -> None:
    done, cancelled, dead, running = new(n=1), new(n=2), new(n=3, max_attempts=1), new(n=4)
    await a.insert(A, [done, cancelled, dead, running])
    await a.record_steps([(done.id, "s", "1"), (running.id, "s", "2")])
    await a.complete([done.id])
    await a.cancel(cancelled.id)
    assert await a.fail(A, dead, _policy.raised(dead, "ValueError: x", 0.01))
    assert await b.purge(3600) == 0
    await asyncio.sleep(0.05)
    assert await b.purge(0.01) == 2
    assert await a.status(done.id) is None and await a.status(cancelled.id) is None
    assert await a.steps(done.id) == {}
    assert await a.steps(running.id) == {"s": "2"}
    assert [job.id for job in await a.dead_jobs()] == [dead.id]


async def make_first_release_store(url: str, record: Record) -> None:
    """The tables the first release made (before steps, status and retention), one job in."""
    if url.startswith("sqlite:///"):
        from graceful_web.durable import _sqlite

        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            first = _sqlite.SCHEMA.split("CREATE TABLE IF NOT EXISTS graceful_steps")[0]
            connection.executescript(first)
            connection.execute(
                "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner, "
                "run_after, created) VALUES (?, ?, ?, 1, 3, NULL, ?, ?)",
                (record.id, record.name, record.args, time.time(), time.time()),
            )
        return
    import asyncpg  # type: ignore[import-untyped]

    from graceful_web.durable import _postgres

    connection = await asyncpg.connect(url)
    try:
        first = _postgres.SCHEMA.split("CREATE TABLE IF NOT EXISTS graceful_steps")[0]
        await connection.execute(first)
        await connection.execute(
            "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts) "
            "VALUES ($1, $2, $3, 1, 3)",
            record.id,
            record.name,
            record.args,
        )
    finally:
        await connection.close()


async def test_a_store_made_by_the_first_release_is_brought_up_to_date(
    store_url: str, opened: Callable[[], Awaitable[Store]]
) -> None:
    record = new()
    await make_first_release_store(store_url, record)
    a, b = await asyncio.gather(opened(), opened())  # two processes starting at once
    await b.heartbeat(B, 30)
    assert await b.claim(B, NAMES, LIMIT) == [next_attempt(record)]
    await b.record_steps([(record.id, "s", "1")])
    await b.complete([record.id])
    stored = await a.status(record.id)
    assert stored is not None and stored.state == "succeeded" and stored.attempt == 2
    assert await a.steps(record.id) == {"s": "1"}


async def test_cancelled_ones_are_found_among_many_running(a: Store) -> None:
    records = [new(n=n) for n in range(1200)]
    await a.insert(A, records)
    for record in records[::400]:
        assert await a.cancel(record.id)
    found = await a.cancelled([record.id for record in records])
    assert sorted(found) == sorted(record.id for record in records[::400])
