"""A plain asyncio worker under graceful_web.run(), run in a real process by the tests.

It starts PROTECTED jobs (spawn) and UNPROTECTED tasks (create_task) of JOB_MS each, prints
"worker ready", then does what MAIN says:
  forever    wait until stopped (a worker or queue consumer)
  return     return "main result" at once
  await-job  await one more protected job of JOB_MS directly, then record main-resumed
  raise      raise RuntimeError("main failed")
  exit       sys.exit(3)
  fan-out    spawn one more job that gathers two child tasks, then wait until stopped
  stubborn   spawn one more job that swallows every cancellation, then wait until stopped
Finished jobs append their id to JOBS_FILE; cancellations go to JOBS_FILE.events. With
CHECKPOINT_MS set, each task also records "running:ID" that far into its work.
"""

from __future__ import annotations

import asyncio
import os
import sys

import graceful_web
from demo_services._contract import append_job_record, configure_logging, jobs_file


def record_event(line: str) -> None:
    with open(jobs_file() + ".events", "a") as events:
        events.write(line + "\n")


async def work(job_id: str, ms: int) -> None:
    checkpoint = min(ms, int(os.environ.get("CHECKPOINT_MS", "0")))
    try:
        if checkpoint:
            await asyncio.sleep(checkpoint / 1000)
            record_event(f"running:{job_id}")
        await asyncio.sleep((ms - checkpoint) / 1000)
    except asyncio.CancelledError:
        record_event(f"cancelled:{job_id}")
        raise
    append_job_record(job_id)


async def fan_out(ms: int) -> None:
    # gather makes a task of each child, from inside the protected job.
    await asyncio.gather(work("child-1", ms), work("child-2", ms))
    append_job_record("fan-out")


async def stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record_event("stubborn-ignored-cancel")


async def main() -> str:
    ms = int(os.environ.get("JOB_MS", "2000"))
    mode = os.environ.get("MAIN", "forever")
    protected = [
        graceful_web.spawn(work(f"protected-{n}", ms), name=f"protected-{n}")
        for n in range(1, int(os.environ.get("PROTECTED", "3")) + 1)
    ]
    unprotected = [
        asyncio.create_task(work(f"unprotected-{n}", ms))
        for n in range(1, int(os.environ.get("UNPROTECTED", "3")) + 1)
    ]
    await asyncio.sleep(0)  # every task has started
    print(f"worker ready: {len(protected)} protected, {len(unprotected)} unprotected", flush=True)
    try:
        if mode == "return":
            return "main result"
        if mode == "await-job":
            await graceful_web.spawn(work("awaited", ms), name="awaited")
            record_event("main-resumed")
            await asyncio.Event().wait()
        if mode == "raise":
            raise RuntimeError("main failed")
        if mode == "exit":
            sys.exit(3)
        if mode == "fan-out":
            graceful_web.spawn(fan_out(ms), name="fan-out")
        if mode == "stubborn":
            graceful_web.spawn(stubborn(), name="stubborn")
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        record_event("main-cancelled")
        raise
    return "unreachable"


if __name__ == "__main__":
    configure_logging()
    loop_factory = None
    if os.environ.get("LOOP") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    result = graceful_web.run(main(), loop_factory=loop_factory)
    print(f"run returned {result!r}", flush=True)
