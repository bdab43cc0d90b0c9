"""Durable jobs in process: what is refused at setup and at spawn, and with what message; the
store's record of a job from spawn to completion. (What survives kills and deadlines is proven
on real servers in test_durable_jobs.py and test_durable_fleet.py.)"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import graceful_web
from graceful_web import ShutdownInProgress, durable
from graceful_web._current import current_drain
from graceful_web.durable import _settings

ran: list[tuple[str, int]] = []


@durable.job(name="unit.note")
async def note(text: str, times: int = 1) -> str:
    ran.append((text, durable.current().attempt))
    return text * times


@durable.job(name="unit.shout")
async def shout(text: str) -> str:
    return text.upper()


@pytest.fixture(autouse=True)
def nothing_ran_yet() -> None:
    ran.clear()


def rows(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT name, args, state FROM graceful_jobs").fetchall()


async def test_a_spawned_job_is_recorded_then_marked_succeeded_once_done(store: Path) -> None:
    task = graceful_web.spawn(note("a", times=2))
    await durable.recorded()
    assert rows(store) == [("unit.note", '{"args":["a"],"kwargs":{"times":2}}', "ready")]
    await task
    succeeded = [("unit.note", '{"args":["a"],"kwargs":{"times":2}}', "succeeded")]
    for _ in range(100):  # the completion's write follows the job's end
        if rows(store) == succeeded:
            break
        await asyncio.sleep(0.02)
    assert rows(store) == succeeded
    assert ran == [("a", 1)]
    await durable.shutdown()


async def test_awaiting_a_durable_call_runs_it_inline_unrecorded(store: Path) -> None:
    assert await shout("b") == "B"
    assert not store.exists()


async def test_arguments_that_are_not_json_are_refused_at_spawn_and_nothing_starts() -> None:
    with pytest.raises(TypeError, match=r"cannot be recorded as JSON .*Nothing was started"):
        graceful_web.spawn(note(object()))  # type: ignore[arg-type]
    assert current_drain().jobs_in_flight == 0


async def test_arguments_the_function_does_not_take_are_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match=r"durable job 'unit\.note'"):
        note("x", colour="red")  # type: ignore[call-arg]


async def test_a_durable_job_is_refused_once_the_drain_has_begun(store: Path) -> None:
    current_drain().begin("test")
    with pytest.raises(ShutdownInProgress):
        graceful_web.spawn(note("late"))
    assert not store.exists() or rows(store) == []


def test_a_plain_function_cannot_be_a_durable_job() -> None:
    def plain() -> None: ...

    with pytest.raises(TypeError, match="takes an async function"):
        durable.job(plain)  # type: ignore[arg-type]


def test_a_function_defined_inside_another_needs_a_stable_name() -> None:
    async def inner() -> None: ...

    with pytest.raises(ValueError, match="not stable across processes"):
        durable.job(inner)


def test_two_functions_under_one_name_are_refused() -> None:
    async def other() -> None: ...

    with pytest.raises(ValueError, match=r"two durable jobs are registered under 'unit\.note'"):
        durable.job(name="unit.note")(other)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "mysql://db/jobs"}, "is not one graceful_web knows"),
        ({"lease": 0}, "lease must be a number of seconds above zero"),
        ({"lease": 1, "poll_interval": 5}, "must not be longer than the lease"),
        ({"max_attempts": 0}, "max_attempts must be a whole number"),
    ],
)
def test_wrong_settings_are_refused_saying_what_to_do(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        durable.configure(**settings)  # type: ignore[arg-type]


def test_a_wrong_setting_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRACEFUL_DURABLE_LEASE", "soon")
    with pytest.raises(ValueError, match="GRACEFUL_DURABLE_LEASE='soon' is not a number"):
        _settings.current_settings()


def test_current_outside_a_durable_job_says_where_it_is_known() -> None:
    with pytest.raises(RuntimeError, match="only known inside a durable job"):
        durable.current()


async def test_a_store_in_a_missing_folder_refuses_the_job_when_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRACEFUL_DURABLE_URL", f"sqlite:///{tmp_path}/missing/jobs.sqlite3")
    task = graceful_web.spawn(note("never"))
    with pytest.raises(durable.StoreUnavailable, match="does not exist"):
        await durable.recorded()
    await task
    assert ran == []  # not recorded, so not accepted: never run
    await durable.shutdown()


@durable.job(name="unit.fails", max_attempts=1)
async def fails() -> None:
    raise RuntimeError("on purpose")


async def test_prometheus_counts_durable_jobs_by_outcome(store: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import graceful_web.prometheus

    def count(outcome: str) -> float:
        text = generate_latest(registry).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "graceful_durable_jobs_total" and sample.labels == {
                    "outcome": outcome
                }:
                    return sample.value
        raise AssertionError(f"no graceful_durable_jobs_total{{outcome={outcome!r}}}")

    registry = CollectorRegistry()
    graceful_web.prometheus.register(registry)
    before = {outcome: count(outcome) for outcome in ("recorded", "completed", "dead")}
    done = graceful_web.spawn(note("m"))
    failed = graceful_web.spawn(fails())
    await asyncio.wait([done, failed])
    for _ in range(100):
        if count("completed") > before["completed"]:
            break
        await asyncio.sleep(0.02)
    assert count("recorded") == before["recorded"] + 2
    assert count("completed") == before["completed"] + 1
    assert count("dead") == before["dead"] + 1
    assert [job.name for job in await durable.dead_jobs()] == ["unit.fails"]
    await durable.shutdown()


def test_importing_the_adapters_imports_no_store_driver() -> None:
    import subprocess
    import sys

    code = (
        "import sys, graceful_web, graceful_web.aiohttp, graceful_web.asgi; "
        "print(sorted(m for m in ('asyncpg', 'sqlite3') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
