"""Steps, idempotency keys, status and cancel in process: what is refused and with what message,
how steps are named and what they give back, one key making one job. (What survives kills,
deadlines and restarts is proven on real servers in tests/servers/test_durable_steps.py.)"""

from __future__ import annotations

import asyncio

import pytest

import graceful_web
from graceful_web import durable
from graceful_web.durable import _journal

ran: list[str] = []


@durable.job(name="unit.steps")
async def in_steps(items: list[str]) -> list[object]:
    return [await durable.step("item", str.upper, item) for item in items]


@durable.job(name="unit.keyed", key=lambda order, note="": f"order:{order}")
async def keyed(order: int, note: str = "") -> None:
    ran.append(f"{order}{note}")


@durable.job(name="unit.sleeps")
async def sleeps(seconds: float) -> None:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        ran.append("cancelled")
        raise


@pytest.fixture(autouse=True)
def nothing_ran_yet() -> None:
    ran.clear()


async def cancelled_here() -> None:
    """Wait (up to a second) for the job ``sleeps`` to note its cancellation."""
    for _ in range(100):
        if ran == ["cancelled"]:
            return
        await asyncio.sleep(0.01)
    assert ran == ["cancelled"]


async def recorded_steps(job_id: str) -> dict[str, str]:
    journal = _journal.journal_for(asyncio.get_running_loop())
    return await journal.store.steps(job_id)


async def test_steps_of_one_name_are_recorded_by_their_call_order() -> None:
    job_id = await durable.spawn(in_steps(["a", "b", "c"]))
    while (await durable.status(job_id)).state != "succeeded":
        await asyncio.sleep(0.01)
    assert await recorded_steps(job_id) == {"item": '"A"', "item#2": '"B"', "item#3": '"C"'}
    await durable.shutdown()


async def test_outside_a_durable_job_a_step_runs_and_gives_back_what_json_gives() -> None:
    assert await in_steps(["x"]) == ["X"]

    async def pair() -> tuple[int, int]:
        return (1, 2)

    given: object = await durable.step("pair", pair)
    assert given == [1, 2]
    assert await durable.step("sum", sum, [1, 2]) == 3


async def test_a_step_result_that_is_not_json_is_a_type_error_naming_the_step() -> None:
    with pytest.raises(TypeError, match="durable step 'objects' returned object"):
        await durable.step("objects", object)


async def test_a_step_needs_a_name() -> None:
    with pytest.raises(ValueError, match="a step's name must be a non-empty string"):
        await durable.step("", int)


async def test_one_key_makes_one_job_and_gives_its_id_again() -> None:
    first = await durable.spawn(keyed(7))
    again = await durable.spawn(keyed(7))
    graceful_web.spawn(keyed(7))  # the declared key, through the plain spawn
    await durable.recorded()
    explicit = await durable.spawn(keyed(8), key="mine")
    assert first == again and explicit != first
    while (await durable.status(first)).state != "succeeded":
        await asyncio.sleep(0.01)
    assert ran.count("7") == 1
    await durable.shutdown()


async def test_a_key_kept_with_other_arguments_is_a_key_conflict() -> None:
    job_id = await durable.spawn(keyed(9))
    with pytest.raises(durable.KeyConflict, match="'order:9' already names job") as caught:
        await durable.spawn(keyed(9, note="!"))
    assert caught.value.job_id == job_id and caught.value.key == "order:9"
    await durable.shutdown()


async def test_what_durable_spawn_refuses() -> None:
    async def plain() -> None: ...

    coroutine = plain()
    with pytest.raises(TypeError, match="spawn other coroutines with graceful_web"):
        await durable.spawn(coroutine)  # type: ignore[arg-type]
    coroutine.close()
    with pytest.raises(ValueError, match="an idempotency key must be a non-empty string"):
        await durable.spawn(keyed(1), key="")


async def test_a_job_cancelled_here_stops_at_once_and_stays_cancelled() -> None:
    assert (await durable.status("no-such-job")).state == "unknown"
    job_id = await durable.spawn(sleeps(30))
    running = await durable.status(job_id)
    assert (running.state, running.attempt) == ("running", 1)
    assert await durable.cancel(job_id)
    await cancelled_here()
    assert not await durable.cancel(job_id)
    assert (await durable.status(job_id)).state == "cancelled"
    await durable.shutdown()


def test_a_wrong_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="durable retention must be a number of seconds"):
        durable.configure(retention=0)


async def test_a_conflict_is_raised_to_durable_spawn_and_logged_for_plain_spawn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await durable.spawn(keyed(5))
    with pytest.raises(durable.KeyConflict):
        await durable.spawn(keyed(5, note="?"))
    assert "was not started" not in caplog.text
    graceful_web.spawn(keyed(5, note="!"))
    await durable.recorded()
    await asyncio.sleep(0)
    assert "durable job 'unit.keyed' was not started: its idempotency key names job" in caplog.text
    await asyncio.sleep(0.05)
    assert ran == ["5"]
    await durable.shutdown()


async def test_a_keyed_job_spawned_again_here_is_still_the_one_cancelled() -> None:
    job_id = await durable.spawn(sleeps(30), key="nap")
    assert await durable.spawn(sleeps(30), key="nap") == job_id
    await asyncio.sleep(0.05)  # the second call's task has ended, the first still runs
    assert await durable.cancel(job_id)
    await cancelled_here()
    await durable.shutdown()
