"""Work the test apps of both adapters run the same way: recorded events, unprotected tasks,
misbehaving jobs, the outsider that spawns too late, and the abandoned-work callback.

What the tests check besides finished jobs goes to ``JOBS_FILE.events``, one line each.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio

import graceful_web
from demo_services._contract import append_job_record, jobs_file
from graceful_web import AbandonedWork, ShutdownInProgress, spawn

_unprotected: set[asyncio.Task[Any]] = set()


def record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


async def record_after(ms: int, job_id: str) -> None:
    await anyio.sleep(ms / 1000)
    append_job_record(job_id)


def keep_unprotected(task: asyncio.Task[Any]) -> None:
    """Hold a task made with plain asyncio.create_task, as an app would."""
    _unprotected.add(task)
    task.add_done_callback(_unprotected.discard)


def start_unprotected(ms: int, job_id: str) -> None:
    """A background task made the usual way: cancelled at shutdown, which it records."""

    async def work() -> None:
        try:
            await asyncio.sleep(ms / 1000)
        except asyncio.CancelledError:
            record_event(f"cancelled:{job_id}")
            raise
        append_job_record(job_id)

    keep_unprotected(asyncio.create_task(work()))


async def stubborn(job_id: str) -> None:
    """Swallows every cancellation and keeps going."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record_event(f"ignored-cancel:{job_id}")


async def blocking(job_id: str, ms: int) -> None:
    """Blocks the event loop for ``ms`` once the drain has started."""
    await graceful_web.shutting_down().wait()
    record_event(f"blocking:{job_id}")
    time.sleep(ms / 1000)
    append_job_record(job_id)


async def fan_out(job_id: str, child_ms: list[int]) -> None:
    """Once the drain has started, spawns one more job for each entry of ``child_ms``."""
    await graceful_web.shutting_down().wait()
    for n, ms in enumerate(child_ms, start=1):
        spawn(record_after(ms, f"{job_id}-child-{n}"), name=f"{job_id}-child-{n}")
    append_job_record(job_id)


MISBEHAVING_KINDS = ("stubborn", "block", "fan-out")


def spawn_misbehaving(kind: str, job_id: str, ms: list[int]) -> None:
    """The job behind POST /misbehaving?kind=stubborn|block|fan-out&id=X&ms=N[,N...]."""
    if kind == "stubborn":
        spawn(stubborn(job_id), name=job_id)
    elif kind == "block":
        spawn(blocking(job_id, ms[0]), name=job_id)
    elif kind == "fan-out":
        spawn(fan_out(job_id, ms), name=job_id)
    else:
        raise ValueError(f"unknown kind {kind!r}")


async def outsider() -> None:
    """An unprotected background loop that tries to spawn once the drain has started."""
    await graceful_web.shutting_down().wait()
    try:
        spawn(record_after(0, "outsider-accepted"), name="outsider")
    except ShutdownInProgress as exc:
        record_event(f"outsider-refused: {exc}")


def on_abandoned(abandoned: tuple[AbandonedWork, ...]) -> None:
    for work in abandoned:
        record_event(f"abandoned:{work.kind}:{work.name}")
