"""The drain's progress lines in process (graceful_web/_report.py): interval, pace, fields."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import time

import anyio
import pytest
import structlog

from graceful_web._config import Config
from graceful_web._current import current_drain
from tests.support.clients import FIELDS


def test_progress_interval_comes_from_code_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRACEFUL_PROGRESS_INTERVAL", raising=False)
    assert Config.build().progress_interval == 1.0
    monkeypatch.setenv("GRACEFUL_PROGRESS_INTERVAL", "0.5")
    assert Config.build().progress_interval == 0.5
    assert Config.build(progress_interval=0).progress_interval == 0.0  # code wins; 0 is off


def test_bad_progress_interval_is_refused_at_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="progress_interval must be zero or more seconds"):
        Config.build(progress_interval=-1)
    monkeypatch.setenv("GRACEFUL_PROGRESS_INTERVAL", "often")
    with pytest.raises(ValueError, match="GRACEFUL_PROGRESS_INTERVAL='often' is not a number"):
        Config.build()


async def test_nothing_watches_the_drain_while_serving() -> None:
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=5, progress_interval=0.05))
    before = asyncio.all_tasks()
    await asyncio.sleep(0.2)
    assert asyncio.all_tasks() == before  # serving: no reporter exists
    drain.begin("test")
    watchers = asyncio.all_tasks() - before
    # The progress lines, and the end of long-lived connections once their grace is over.
    assert [task.get_name() for task in watchers] == ["graceful_web drain watcher"] * 2
    await drain.wait("test")
    await asyncio.wait(watchers, timeout=1)
    assert all(task.done() for task in watchers)  # and it ends with the drain


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_progress_is_reported_under_asyncio_and_trio(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def drain_one_request() -> None:
        drain = current_drain()
        drain.configure(Config.build(drain_timeout=5, progress_interval=0.05))
        work = drain.request_started("GET /report", lambda: None)

        async def finish_later() -> None:
            await anyio.sleep(0.3)
            drain.discard(work)

        async with anyio.create_task_group() as group:
            group.start_soon(finish_later)
            await drain.wait("test")

    with caplog.at_level(logging.INFO, logger="graceful_web"):
        anyio.run(drain_one_request, backend=backend)
    progress = [r for r in caplog.records if r.getMessage().startswith("draining:")]
    assert len(progress) >= 2
    assert {getattr(r, "graceful_oldest_name", None) for r in progress} == {"GET /report"}


def test_a_blocked_loop_delays_a_progress_line_but_brings_no_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    interval = 0.1

    async def drain_with_a_blocked_loop() -> None:
        drain = current_drain()
        drain.configure(Config.build(drain_timeout=5, progress_interval=interval))
        work = drain.request_started("GET /blocking", lambda: None)
        drain.begin("test")
        await asyncio.sleep(0.15)
        time.sleep(0.35)  # a handler blocks the event loop for three beats
        await asyncio.sleep(0.5)
        drain.discard(work)
        await drain.wait("test")

    with caplog.at_level(logging.INFO, logger="graceful_web"):
        asyncio.run(drain_with_a_blocked_loop())
    remaining = [
        r.__dict__["graceful_remaining_s"]
        for r in caplog.records
        if r.getMessage().startswith("draining:")
    ]
    assert len(remaining) >= 3, remaining
    # The beats missed while the loop was blocked are skipped, not caught up with lines in a
    # row: whatever the machine's load, two lines are at least half an interval apart
    # (remaining_s is rounded to the millisecond).
    gaps = [round(earlier - later, 3) for earlier, later in itertools.pairwise(remaining)]
    assert min(gaps) >= interval / 2 - 0.002, gaps


def test_structlogs_stdlib_bridge_writes_the_fields_as_json_fields() -> None:
    # The set-up the README gives for structlog: ExtraAdder copies a record's extra fields.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    log = logging.getLogger("graceful_web")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)

    async def drain_one_request() -> None:
        drain = current_drain()
        drain.configure(Config.build(drain_timeout=5, progress_interval=0.05))
        work = drain.request_started("GET /report", lambda: None)
        drain.begin("SIGTERM")
        await asyncio.sleep(0.2)
        drain.discard(work)
        await drain.wait()

    try:
        asyncio.run(drain_one_request())
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    started, finished = events[0], events[-1]
    progress = [e for e in events if e["event"].startswith("draining:")]
    assert (started["graceful_reason"], started["graceful_requests"]) == ("SIGTERM", 1)
    assert progress and all(e.keys() >= FIELDS for e in progress), events
    assert progress[0]["graceful_oldest_name"] == "GET /report"
    assert (finished["graceful_drained_requests"], finished["graceful_abandoned"]) == (1, 0)


def test_no_progress_line_once_the_rest_is_abandoned(caplog: pytest.LogCaptureFixture) -> None:
    async def slow_to_unwind() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(0.2))  # a rollback still runs after the cancel
            raise

    async def drain_past_the_deadline() -> None:
        drain = current_drain()
        drain.configure(Config.build(drain_timeout=0.3, progress_interval=0.05))
        drain.spawn(slow_to_unwind(), name="rollback")
        await drain.wait("test")

    with caplog.at_level(logging.INFO, logger="graceful_web"):
        asyncio.run(drain_past_the_deadline())
    messages = [r.getMessage() for r in caplog.records]
    abandoned_at = messages.index("abandoned job 'rollback' after 0.3 s")
    assert any(m.startswith("draining:") for m in messages[:abandoned_at]), messages
    # What is left after the deadline is being cancelled, not drained: no line counts it.
    assert not [m for m in messages[abandoned_at:] if m.startswith("draining:")], messages
