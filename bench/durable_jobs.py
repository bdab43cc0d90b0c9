"""Figure 7: durable jobs. ``graceful_web.durable`` side by side with the peers people use for
work that must outlive the process, each on the same stores, in one run:

- ``spawn``: plain ``graceful_web.spawn`` of the same job, not durable: the reference;
- graceful_web durable on SQLite (a file in a fresh temporary directory) and on PostgreSQL:
  ``graceful_web.spawn(job(i))`` then ``await durable.recorded()``;
- DBOS on the same two stores (its SQLite system database, a database of its own on the same
  PostgreSQL server): ``await DBOS.start_workflow_async(workflow, i)``, which returns once the
  workflow's row is written (it then runs the workflow on this process's loop, as spawn does);
- arq on Redis: ``await pool.enqueue_job("job", i)``, which returns once Redis holds the job
  (no worker runs: the job is only queued);
- steps and keys, on both stores: graceful_web's job of STEPS steps (``durable.step``, each
  recorded before the next runs) and DBOS's workflow of STEPS ``DBOS.step`` calls, each beside
  its own job without steps: a step's cost is the difference of their *ran* over the jobs'
  steps, run by run; and graceful_web's keyed spawn (a job declaring its idempotency key,
  ``graceful_web.spawn`` then ``await durable.recorded()``) beside the plain one.

Each run is a fresh interpreter (``python -m bench.durable_jobs PEER STORE URL N SAMPLES``)
on the server's core, the stores on the other one; the rows alternate run by run and every
run has a store of its own (a new SQLite file, a new PostgreSQL database). In each run, after
a warm-up:

- *burst*: N jobs from one process, wall time from the first start until every job is
  recorded. graceful_web: N spawns, then one ``await durable.recorded()`` (what a script or a
  handler starting many jobs does). DBOS and arq have no call for many jobs at once: 64 starts
  in flight at a time, each awaited (one at a time they would be bound by the latency below);
- *64 requests*: the same N jobs as 64 concurrent requests, each starting one job and awaiting
  its own record before it answers (graceful_web: ``spawn`` then ``await recorded()``). For
  DBOS and arq this is the burst itself;
- *one request*: one job at a time, idle between them (2 ms): the time from the start call to
  the job being recorded, which is what the job adds to a response (the adapter awaits the
  record before the response leaves). The median and the 90th percentile of SAMPLES jobs;
- *ran*: for the rows that run their jobs in this process (spawn, graceful_web, DBOS), the
  wall time from the first start of the burst until every job's body has run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._harness import OUT, PY, Spread, child_json, on_server_cpu

#: (peer, store): the rows, in the order they run and are shown.
ROWS = (
    ("spawn", "memory"),
    ("graceful", "sqlite"),
    ("graceful", "postgres"),
    ("dbos", "sqlite"),
    ("dbos", "postgres"),
    ("arq", "redis"),
    ("graceful-steps", "sqlite"),
    ("graceful-steps", "postgres"),
    ("graceful-keyed", "sqlite"),
    ("graceful-keyed", "postgres"),
    ("dbos-steps", "sqlite"),
    ("dbos-steps", "postgres"),
)
#: Only these peers when set (``BENCH_DURABLE_PEERS=graceful,graceful-steps python -m bench
#: durable --quick``): a part of the figure alone, beside the rows it is compared with.
PEERS = [peer for peer in os.environ.get("BENCH_DURABLE_PEERS", "").split(",") if peer]
#: The steps of each job of the steps rows.
STEPS = 10
JOBS = 1_000
SAMPLES = 200
WARMUP_JOBS = 200
IN_FLIGHT = int(os.environ.get("BENCH_DURABLE_IN_FLIGHT", "64"))
IDLE_S = 0.002
RAN_TIMEOUT = 120.0
CHILD_TIMEOUT = 300.0

# -- the child --------------------------------------------------------------------------------


class _Ran:
    """Counts the jobs whose body has run, and wakes whoever waits for a count."""

    def __init__(self) -> None:
        self.count = 0
        self.wanted = 0
        self.reached: asyncio.Event | None = None

    def one(self) -> None:
        self.count += 1
        if self.reached is not None and self.count >= self.wanted:
            self.reached.set()

    async def until(self, total: int) -> None:
        if self.count >= total:
            return
        self.wanted = total
        self.reached = asyncio.Event()
        try:
            await asyncio.wait_for(self.reached.wait(), RAN_TIMEOUT)
        finally:
            self.reached = None


RAN = _Ran()


async def _in_flight(start: Callable[[int], Awaitable[Any]], first: int, n: int) -> None:
    """``start(i)`` for every i of first..first+n, IN_FLIGHT awaited at a time."""
    numbers = iter(range(first, first + n))

    async def worker() -> None:
        for number in numbers:
            await start(number)

    await asyncio.gather(*(worker() for _ in range(min(IN_FLIGHT, n))))


@dataclass
class _Peer:
    """How one row starts a job and waits for it to be recorded."""

    #: One job, returned once it is recorded (awaitable).
    start_one: Callable[[int], Awaitable[Any]]
    #: n jobs from first, returned once all of them are recorded.
    burst: Callable[[int, int], Awaitable[Any]]
    #: Whether the job runs in this process (its body counts in RAN).
    runs_here: bool = True
    #: Whether the 64-requests shape differs from the burst.
    own_requests_shape: bool = False
    #: Awaited after each phase: the work a finished job leaves (rows to update) is done.
    settle: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None


async def _spawn_peer() -> _Peer:
    import graceful_web

    async def job(number: int) -> None:
        RAN.one()

    async def start_one(number: int) -> None:
        graceful_web.spawn(job(number))

    async def burst(first: int, n: int) -> None:
        for number in range(first, first + n):
            graceful_web.spawn(job(number))

    return _Peer(start_one, burst, own_requests_shape=True)


async def _graceful_peer(kind: str = "graceful") -> _Peer:
    import graceful_web
    from graceful_web import durable

    def same(number: int) -> int:
        return number

    if kind == "graceful-steps":

        @durable.job(name="bench.durable_jobs.steps")
        async def noop(number: int) -> None:
            for _ in range(STEPS):
                await durable.step("same", same, number)
            RAN.one()

    elif kind == "graceful-keyed":

        @durable.job(name="bench.durable_jobs.keyed", key=lambda number: f"bench-{number}")
        async def noop(number: int) -> None:
            RAN.one()

    else:

        @durable.job(name="bench.durable_jobs.noop")
        async def noop(number: int) -> None:
            RAN.one()

    async def start_one(number: int) -> None:
        graceful_web.spawn(noop(number))
        await durable.recorded()

    async def burst(first: int, n: int) -> None:
        for number in range(first, first + n):
            graceful_web.spawn(noop(number))
        await durable.recorded()

    async def settle() -> None:
        await asyncio.sleep(0.2)  # the records of finished jobs are deleted

    return _Peer(start_one, burst, own_requests_shape=True, settle=settle)


async def _dbos_peer(url: str, steps: bool = False) -> _Peer:
    from dbos import DBOS

    handles: list[Any] = []

    @DBOS.step(name="bench_same")
    async def same(number: int) -> int:
        return number

    async def noop(number: int) -> None:
        if steps:
            for _ in range(STEPS):
                await same(number)
        RAN.one()

    workflow = DBOS.workflow(name="bench_steps" if steps else "bench_noop")(noop)

    async def start_one(number: int) -> None:
        handles.append(await DBOS.start_workflow_async(workflow, number))

    async def burst(first: int, n: int) -> None:
        await _in_flight(start_one, first, n)

    async def settle() -> None:
        # Each workflow writes its outcome once its body has run: wait for all of them.
        waiting = list(handles)
        handles.clear()
        await asyncio.wait_for(
            asyncio.gather(*(handle.get_result() for handle in waiting)), RAN_TIMEOUT
        )

    return _Peer(start_one, burst, settle=settle)


def _dbos_launch(url: str) -> None:
    from dbos import DBOS, DBOSConfig

    config: dict[str, Any] = {
        "name": "graceful-bench",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    if "run_admin_server" in DBOSConfig.__annotations__:
        config["run_admin_server"] = False  # older DBOS: no admin server on port 3001
    DBOS(config=config)  # type: ignore[arg-type]


async def _arq_peer(url: str) -> _Peer:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))

    async def start_one(number: int) -> None:
        await pool.enqueue_job("noop", number)

    async def burst(first: int, n: int) -> None:
        await _in_flight(start_one, first, n)

    async def close() -> None:
        await pool.aclose()

    return _Peer(start_one, burst, runs_here=False, close=close)


async def _measure(peer: _Peer, n: int, samples: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    number = 0

    async def settle() -> None:
        if peer.runs_here:
            await RAN.until(number)
        if peer.settle is not None:
            await peer.settle()
        gc.collect()

    # Warm-up: the connections, the tables, the first statements prepared.
    await peer.burst(number, WARMUP_JOBS)
    number += WARMUP_JOBS
    for _ in range(20):
        await peer.start_one(number)
        number += 1
    await settle()

    began = time.perf_counter()
    cpu = time.process_time()
    await peer.burst(number, n)
    recorded = time.perf_counter()
    figures["burst_cpu_s"] = time.process_time() - cpu
    number += n
    if peer.runs_here:
        await RAN.until(number)
        figures["ran_s"] = time.perf_counter() - began
    figures["burst_s"] = recorded - began
    await settle()

    if peer.own_requests_shape:
        began = time.perf_counter()
        await _in_flight(peer.start_one, number, n)
        figures["requests_s"] = time.perf_counter() - began
        number += n
        await settle()

    latencies = []
    for _ in range(samples):
        began_ns = time.perf_counter_ns()
        await peer.start_one(number)
        latencies.append((time.perf_counter_ns() - began_ns) / 1000)
        number += 1
        await asyncio.sleep(IDLE_S)
    latencies.sort()
    figures["one_us"] = statistics.median(latencies)
    figures["one_p90_us"] = latencies[int(0.9 * (len(latencies) - 1))]
    await settle()
    return figures


def child(peer_name: str, store: str, url: str, n: int, samples: int) -> dict[str, Any]:
    if peer_name.startswith("graceful"):
        os.environ["GRACEFUL_DURABLE_URL"] = url
    if peer_name.startswith("dbos"):
        _dbos_launch(url)

    async def main() -> dict[str, Any]:
        if peer_name == "spawn":
            peer = await _spawn_peer()
        elif peer_name.startswith("graceful"):
            peer = await _graceful_peer(peer_name)
        elif peer_name.startswith("dbos"):
            from dbos import DBOS

            peer = await _dbos_peer(url, steps=peer_name == "dbos-steps")
            DBOS.launch()
        elif peer_name == "arq":
            peer = await _arq_peer(url)
        else:
            raise ValueError(f"unknown peer {peer_name!r}")
        try:
            return await _measure(peer, n, samples)
        finally:
            if peer.close is not None:
                await peer.close()

    try:
        return asyncio.run(main())
    finally:
        if peer_name.startswith("dbos"):
            from dbos import DBOS

            DBOS.destroy()


# -- the runner -------------------------------------------------------------------------------


def graceful_durable_missing() -> str | None:
    """Why the graceful_web rows cannot run here, or None when they can."""
    try:
        from graceful_web import durable

        for name in ("job", "recorded", "step"):
            if not hasattr(durable, name):
                return f"graceful_web.durable has no {name}()"
    except ImportError as error:
        return f"graceful_web.durable is not importable ({error})"
    return None


@dataclass
class DurableFigures:
    n: int
    samples: int
    in_flight: int = IN_FLIGHT
    rows: list[tuple[str, str]] = field(default_factory=list)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    not_measured: dict[tuple[str, str], str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    #: Set when the figure was measured by itself (``python -m bench durable``): when, and
    #: the load average around it.
    measured_alone: str = ""

    def measured(self, row: tuple[str, str]) -> bool:
        return bool(self.runs.get(row))

    def spread(self, row: tuple[str, str], key: str) -> Spread | None:
        values = [run[key] for run in self.runs.get(row, []) if key in run]
        return Spread.of(values) if values else None

    def per_job_us(self, row: tuple[str, str], key: str = "burst_s") -> Spread | None:
        values = [run[key] / self.n * 1e6 for run in self.runs.get(row, []) if key in run]
        return Spread.of(values) if values else None

    def per_second(self, row: tuple[str, str], key: str = "burst_s") -> Spread | None:
        values = [self.n / run[key] for run in self.runs.get(row, []) if key in run]
        return Spread.of(values) if values else None

    def step_us(self, row: tuple[str, str]) -> Spread | None:
        """A step's cost: the steps row's *ran* over its own peer's without steps, per step,
        run by run (the runs alternate)."""
        base = self.runs.get((row[0].removesuffix("-steps"), row[1]), [])
        pairs = list(zip(base, self.runs.get(row, []), strict=False))
        if not pairs:
            return None
        return Spread.of(
            [(mine["ran_s"] - plain["ran_s"]) / (self.n * STEPS) * 1e6 for plain, mine in pairs]
        )

    def added_us(self, row: tuple[str, str]) -> Spread | None:
        """One request's latency over plain spawn's, run by run (the runs alternate)."""
        base = self.runs.get(("spawn", "memory"), [])
        mine = self.runs.get(row, [])
        pairs = list(zip(base, mine, strict=False))
        if not pairs:
            return None
        return Spread.of([other["one_us"] - spawn["one_us"] for spawn, other in pairs])


def _versions() -> dict[str, str]:
    import importlib.metadata

    from ._stores import postgres_version, redis_version

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "dbos": version("dbos"),
        "arq": version("arq"),
        "asyncpg": version("asyncpg"),
        "redis (client)": version("redis"),
        "postgres": postgres_version(),
        "redis-server": redis_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
    }


def _run_child(peer: str, store: str, url: str, n: int, samples: int) -> dict[str, Any]:
    argv = on_server_cpu([PY, "-m", "bench.durable_jobs", peer, store, url, str(n), str(samples)])
    return dict(child_json(argv, timeout=CHILD_TIMEOUT))


def measure(runs: int, n: int = JOBS, samples: int = SAMPLES) -> DurableFigures:
    """Every row ``runs`` times, the rows alternating (spawn, graceful SQLite, …, arq, spawn,
    …); PostgreSQL and Redis run for the whole figure and are stopped by PID at its end."""
    from . import _stores

    figures = DurableFigures(n, samples, rows=list(ROWS))
    missing = graceful_durable_missing()
    rows = []
    for row in ROWS:
        if PEERS and row[0] not in PEERS:
            continue
        if row[0].startswith("graceful") and missing is not None:
            figures.not_measured[row] = missing
        else:
            rows.append(row)
    figures.rows = [row for row in figures.rows if not PEERS or row[0] in PEERS]
    figures.versions = _versions()
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="durable-", dir=OUT))
    try:
        with _stores.running_stores() as (postgres, redis):
            for run in range(runs):
                for peer, store in rows:
                    if (peer, store) in figures.failed:
                        continue
                    if store == "sqlite":
                        url = f"sqlite:///{scratch / f'{peer}-{run}.sqlite3'}"
                    elif store == "postgres":
                        url = _stores.fresh_database(postgres, f"bench_{peer}")
                    elif store == "redis":
                        url = _stores.redis_url(redis)
                        _flush_redis(redis.port)
                    else:
                        url = ""
                    try:
                        figures.runs.setdefault((peer, store), []).append(
                            _run_child(peer, store, url, n, samples)
                        )
                    except (RuntimeError, ValueError, OSError) as error:
                        figures.failed[(peer, store)] = _first_lines(str(error))
                    except subprocess.TimeoutExpired:
                        figures.failed[(peer, store)] = f"no result within {CHILD_TIMEOUT:.0f} s"
                    finally:
                        for path in scratch.glob(f"{peer}-{run}.sqlite3*"):
                            path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return figures


def _flush_redis(port: int) -> None:
    import socket

    from ._harness import HOST

    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(64)


def _first_lines(text: str, count: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


LABELS = {
    ("spawn", "memory"): "`graceful_web.spawn`, not durable (the reference)",
    ("graceful", "sqlite"): "graceful_web durable, SQLite",
    ("graceful", "postgres"): "graceful_web durable, PostgreSQL",
    ("dbos", "sqlite"): "DBOS `start_workflow_async`, SQLite",
    ("dbos", "postgres"): "DBOS `start_workflow_async`, PostgreSQL",
    ("arq", "redis"): "arq `enqueue_job`, Redis (in memory)",
    ("graceful-steps", "sqlite"): f"graceful_web durable, {STEPS} steps a job, SQLite",
    ("graceful-steps", "postgres"): f"graceful_web durable, {STEPS} steps a job, PostgreSQL",
    ("graceful-keyed", "sqlite"): "graceful_web durable with an idempotency key, SQLite",
    ("graceful-keyed", "postgres"): "graceful_web durable with an idempotency key, PostgreSQL",
    ("dbos-steps", "sqlite"): f"DBOS, {STEPS} `DBOS.step` a workflow, SQLite",
    ("dbos-steps", "postgres"): f"DBOS, {STEPS} `DBOS.step` a workflow, PostgreSQL",
}


def show(figures: DurableFigures) -> str:
    lines = [f"{figures.n} durable jobs a burst, {figures.samples} one at a time"]
    for row in figures.rows:
        name = f"{row[0]} {row[1]}"
        if row in figures.not_measured:
            lines.append(f"  {name:17s} not measured: {figures.not_measured[row]}")
            continue
        if row in figures.failed:
            lines.append(f"  {name:17s} FAILED: {figures.failed[row]}")
            continue
        if not figures.measured(row):
            continue
        burst = figures.per_job_us(row)
        rate = figures.per_second(row)
        one = figures.spread(row, "one_us")
        p90 = figures.spread(row, "one_p90_us")
        parts = [
            f"burst {burst.show(1) if burst else 'n/a'} µs/job",
            f"{rate.show(0) if rate else 'n/a'} jobs/s",
        ]
        requests = figures.per_job_us(row, "requests_s")
        if requests is not None:
            parts.append(f"64 requests {requests.show(1)} µs/job")
        parts.append(f"one request {one.show(1) if one else 'n/a'} µs")
        parts.append(f"p90 {p90.median:.1f} µs" if p90 else "p90 n/a")
        ran = figures.per_job_us(row, "ran_s")
        if ran is not None:
            parts.append(f"all ran {ran.show(1)} µs/job")
        step = figures.step_us(row) if row[0].endswith("-steps") else None
        if step is not None:
            parts.append(f"a step {step.show(1)} µs")
        lines.append(f"  {name:17s} " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 6:
        try:
            peer_arg, store_arg, url_arg, n_arg, samples_arg = sys.argv[1:]
            result = child(peer_arg, store_arg, url_arg, int(n_arg), int(samples_arg))
        except BaseException:
            traceback.print_exc()
            sys.exit(1)
        print(json.dumps(result), flush=True)
    else:
        print("python -m bench durable [--quick]: this figure alone, written into the results")
        sys.exit(2)
