"""Figure 4: 100 000 jobs, ``graceful_web.spawn`` against bare ``asyncio.create_task``, against
``create_task`` kept in a set until done (the idiom asyncio's documentation gives, as the loop
holds only weak references to tasks) and against aiojobs' ``Scheduler.spawn``, what aiohttp
apps use for background jobs today.

Each run is a fresh interpreter (``python -m bench.jobs MODE MEASURE N``) that starts N jobs
waiting on one gate, lets them all reach it, opens the gate and waits until every job is
done. ``time`` reports CPU time per job for starting them and for the whole life of a job;
``time-nogc`` the same with the garbage collector paused, which tells the library's own work
from the collections that every object still alive makes longer; ``memory`` (a separate run,
as tracemalloc slows allocation) reports the bytes held per pending job and what is still
held once every job is done, against the baseline taken before the first job. The loop is a
plain ``asyncio.run``, as under a web server: no drain runs, so what is held at the end is
what a long-running server keeps.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._harness import PY, Spread, child_json

MODES = ("task", "kept", "spawn", "aiojobs")
MEASURES = ("time", "time-nogc", "memory")
JOBS = 100_000
WARMUP_JOBS = 10_000


async def _one_round(mode: str, n: int, memory: bool) -> dict[str, float]:
    gate = asyncio.Event()
    all_done = asyncio.Event()
    left = n

    async def job() -> None:
        nonlocal left
        await gate.wait()
        left -= 1
        if left == 0:
            all_done.set()

    start: Callable[[], Any]
    scheduler = None
    if mode == "spawn":
        import graceful_web

        def start() -> Any:
            return graceful_web.spawn(job())
    elif mode == "aiojobs":
        import aiojobs

        # No limit: every job runs at once, as with create_task and spawn (the default, 100
        # at a time, would queue the rest).
        scheduler = aiojobs.Scheduler(limit=None)
    elif mode == "kept":
        background: set[asyncio.Task[None]] = set()

        def start() -> Any:
            task = asyncio.create_task(job())
            background.add(task)
            task.add_done_callback(background.discard)
            return task
    else:

        def start() -> Any:
            return asyncio.create_task(job())

    gc.collect()
    baseline = tracemalloc.get_traced_memory()[0] if memory else 0
    began = time.process_time()
    if scheduler is not None:
        for _ in range(n):
            await scheduler.spawn(job())
    else:
        for _ in range(n):
            start()
    created = time.process_time()
    await asyncio.sleep(0)  # every job runs up to the gate
    pending = tracemalloc.get_traced_memory()[0] if memory else 0
    gate.set()
    await all_done.wait()
    finished = time.process_time()
    for _ in range(3):
        await asyncio.sleep(0)  # done callbacks of the last jobs
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if memory else 0
    if scheduler is not None:
        await scheduler.close()
    return {
        "start_us": (created - began) / n * 1e6,
        "total_us": (finished - began) / n * 1e6,
        "pending_bytes_per_job": (pending - baseline) / n,
        "after_drain_bytes": float(after - baseline),
    }


def child(mode: str, measure: str, n: int) -> dict[str, float]:
    memory = measure == "memory"

    if mode == "spawn":
        import graceful_web  # imported before the baseline, as an app would have it

        _ = graceful_web
    elif mode == "aiojobs":
        import aiojobs

        _ = aiojobs
    # A warm-up round on a loop of its own (the drain is per loop and ends with the round).
    asyncio.run(_one_round(mode, WARMUP_JOBS, memory=False))
    if memory:
        tracemalloc.start()
    if measure == "time-nogc":
        gc.collect()
        gc.disable()
    return asyncio.run(_one_round(mode, n, memory))


def _run_child(mode: str, measure: str, n: int) -> dict[str, float]:
    return dict(child_json([PY, "-m", "bench.jobs", mode, measure, str(n)], timeout=120))


@dataclass
class JobFigures:
    n: int
    runs: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)

    def spread(self, mode: str, measure: str, key: str) -> Spread:
        return Spread.of([run[key] for run in self.runs[(mode, measure)]])

    def extra_us(self, measure: str = "time", mode: str = "spawn", over: str = "task") -> Spread:
        """Per job, ``mode``'s whole-life time minus ``over``'s (create_task's), pair by pair."""
        pairs = zip(self.runs[(over, measure)], self.runs[(mode, measure)], strict=True)
        return Spread.of([other["total_us"] - base["total_us"] for base, other in pairs])

    def extra_bytes(self, mode: str = "spawn") -> Spread:
        """Per pending job, ``mode``'s bytes minus create_task's, pair by pair."""
        pairs = zip(self.runs[("task", "memory")], self.runs[(mode, "memory")], strict=True)
        key = "pending_bytes_per_job"
        return Spread.of([other[key] - task[key] for task, other in pairs])


def measure(pairs: int, n: int = JOBS) -> JobFigures:
    """Runs of each mode alternate (task, kept, spawn, aiojobs, task, …), each measure in
    turn."""
    figures = JobFigures(n)
    for measure_kind in MEASURES:
        for _ in range(pairs):
            for mode in MODES:
                figures.runs.setdefault((mode, measure_kind), []).append(
                    _run_child(mode, measure_kind, n)
                )
    return figures


def show(figures: JobFigures) -> str:
    lines = [f"{figures.n} jobs"]
    for mode in MODES:
        lines.append(
            f"  {mode:6s} start {figures.spread(mode, 'time', 'start_us').show(2)} µs/job, "
            f"whole life {figures.spread(mode, 'time', 'total_us').show(2)} µs/job, "
            f"pending {figures.spread(mode, 'memory', 'pending_bytes_per_job').show(0)} B/job, "
            f"held once done {figures.spread(mode, 'memory', 'after_drain_bytes').show(0)} B"
        )
    for mode in MODES[1:]:
        if mode == "kept":
            continue
        lines.append(
            f"  {mode} extra {figures.extra_us(mode=mode).show(2)} µs/job, "
            f"with the collector paused {figures.extra_us('time-nogc', mode).show(2)} µs/job, "
            f"{figures.extra_bytes(mode).show(0)} B per pending job"
        )
    lines.append(
        f"  spawn over kept {figures.extra_us(mode='spawn', over='kept').show(2)} µs/job, "
        f"with the collector paused "
        f"{figures.extra_us('time-nogc', 'spawn', over='kept').show(2)} µs/job"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(child(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
    else:
        print(show(measure(pairs=int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
