"""Durable jobs in a fleet: several processes share one store while they are reloaded, stopped
and killed under load, and every job a client was told was accepted ends, no job runs in two
processes at once, and a job runs again only when its run was cut short.

tests/apps/durable_app.py notes each run's start and end (``start <id> <attempt> <pid> <time>``)
in one JOBS_FILE shared by every process. A run with no ``end`` was cut short: it lasted at most
until its process handed the record over (the test's trigger on the SQLite file notes when each
record was released and by which process) or until its process died (watched from a thread), so
a run is never taken to end sooner than it did. The single-process cases (kill -9 with 100 jobs,
hand-over to the next process, poison jobs, store errors) are in tests/servers/test_durable_jobs.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from graceful_web.durable._sqlite import SCHEMA
from tests.reload._workers import Workers
from tests.support.polling import wait_until
from tests.support.servers import StartServer, whole_lines

PY = sys.executable
LOOP = os.environ.get("LOOP", "asyncio")
UVLOOP = LOOP == "uvloop"
ASGI = "tests.apps.durable_app:app"


def _uvicorn(*options: str) -> list[str]:
    return [PY, "-m", "uvicorn", ASGI, "--host", "127.0.0.1", "--port", "{port}",
            "--loop", LOOP, *options]  # fmt: skip


def _gunicorn(worker: str, app: str) -> list[str]:
    return [PY, "-m", "gunicorn", "-k", worker, "-b", "127.0.0.1:{port}", "--workers", "2",
            "--graceful-timeout", "30", app]  # fmt: skip


# Each server with two workers, on LOOP (uvicorn_worker's UvicornWorker runs uvloop, its
# UvicornH11Worker asyncio; aiohttp's GunicornWebWorker asyncio, GunicornUVLoopWebWorker uvloop).
RELOADING: dict[str, tuple[list[str], dict[str, str]]] = {
    "uvicorn --workers 2": (_uvicorn("--workers", "2"), {}),
    "gunicorn UvicornWorker": (
        _gunicorn(f"uvicorn_worker.{'UvicornWorker' if UVLOOP else 'UvicornH11Worker'}", ASGI),
        {},
    ),
    "gunicorn GunicornWebWorker": (
        _gunicorn(
            f"aiohttp.{'GunicornUVLoopWebWorker' if UVLOOP else 'GunicornWebWorker'}",
            "tests.apps.durable_app:aiohttp_app()",
        ),
        {"APP": "aiohttp"},
    ),
}
# One plain process of the same kind, started on the same store once the server is gone.
PLAIN: dict[str, tuple[list[str] | str, dict[str, str]]] = {
    "uvicorn --workers 2": (_uvicorn(), {}),
    "gunicorn UvicornWorker": (_uvicorn(), {}),
    "gunicorn GunicornWebWorker": ("tests.apps.durable_app", {"APP": "aiohttp", "LOOP": LOOP}),
}

JOB_MS = 1500
RUNNING = re.compile(r"running (\d+) durable jobs from the store")

# Notes every release of a record (owner → NULL: a hand-over) with its arguments (the test's
# job id first), the releasing owner, whose name holds its pid, and the time; and every record
# taken from an owner whose lease ran out. The store's own CREATE ... IF NOT EXISTS keeps them.
RELEASES = """
CREATE TABLE fleet_releases (args TEXT NOT NULL, owner TEXT NOT NULL, at REAL NOT NULL);
CREATE TRIGGER fleet_release AFTER UPDATE OF owner ON graceful_jobs
WHEN OLD.owner IS NOT NULL AND NEW.owner IS NULL
BEGIN
    INSERT INTO fleet_releases
    VALUES (OLD.args, OLD.owner, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TABLE fleet_claims (args TEXT NOT NULL, owner TEXT NOT NULL, at REAL NOT NULL);
CREATE TRIGGER fleet_taken AFTER UPDATE OF owner ON graceful_jobs
WHEN OLD.owner IS NOT NULL AND NEW.owner IS NOT NULL AND OLD.owner != NEW.owner
BEGIN
    INSERT INTO fleet_claims
    VALUES (OLD.args, OLD.owner, (julianday('now') - 2440587.5) * 86400.0);
END;
"""


# -- what the jobs wrote -----------------------------------------------------------------------


@dataclass
class Run:
    job_id: str
    attempt: int
    pid: int
    start: float
    end: float | None = None  # its ``end`` line, if it has one
    cut: float = math.inf  # when it was cut short at the latest: release or death


def read_runs(jobs_file: Path) -> list[Run]:
    runs: dict[tuple[str, int, int], Run] = {}
    if jobs_file.exists():
        for line in whole_lines(jobs_file):
            event, job_id, attempt, pid, at = line.split()
            key = (job_id, int(attempt), int(pid))
            if event == "start":
                runs[key] = Run(job_id, int(attempt), int(pid), float(at))
            elif event == "end":
                runs[key].end = float(at)
    return sorted(runs.values(), key=lambda run: run.start)


def ended(jobs_file: Path) -> set[str]:
    return {run.job_id for run in read_runs(jobs_file) if run.end is not None}


def by_job(runs: Iterable[Run]) -> dict[str, list[Run]]:
    jobs: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        jobs[run.job_id].append(run)
    return jobs


def finish(run: Run) -> float:
    return run.end if run.end is not None else run.cut


def overlaps(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one job where the later one started before the earlier one was over."""
    found = []
    for job_runs in by_job(runs).values():
        for n, later in enumerate(job_runs):
            found += [(earlier, later) for earlier in job_runs[:n] if later.start < finish(earlier)]
    return found


def check_runs_of_each_job(runs: list[Run]) -> None:
    """Each job ended once, in its last run; every earlier run was cut short; attempts grow."""
    for job_id, job_runs in by_job(runs).items():
        assert [run.end is not None for run in job_runs].count(True) <= 1, job_runs
        assert all(run.end is None for run in job_runs[:-1]), f"{job_id} ran after it ended"
        attempts = [run.attempt for run in job_runs]
        assert attempts == sorted(set(attempts)) and attempts[0] == 1, (job_id, job_runs)


# -- the client --------------------------------------------------------------------------------


class Load(threading.Thread):
    """Posts one job every ``interval`` s until stopped (at most ``limit``); the status of each
    (0: no answer)."""

    def __init__(self, url: str, interval: float = 0.12, limit: int = 120) -> None:
        super().__init__(daemon=True)
        self.url, self.interval, self.limit = url, interval, limit
        self.statuses: dict[str, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        # A connection per job, so that every worker accepting on the socket gets some.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=10, limits=no_keepalive) as client:
            for n in range(self.limit):
                if self.stopped.wait(max(0.0, next_at - time.monotonic())):
                    return
                next_at += self.interval
                job_id = f"j{n:03d}"
                try:
                    response = client.post(f"{self.url}/jobs?id={job_id}&ms={JOB_MS}")
                    self.statuses[job_id] = response.status_code
                except httpx.HTTPError:
                    self.statuses[job_id] = 0

    def stop(self) -> None:
        self.stopped.set()
        self.join(15)
        assert not self.is_alive(), "the client is still posting"

    @property
    def accepted(self) -> set[str]:
        return {job_id for job_id, status in dict(self.statuses).items() if status == 202}


@dataclass
class Accepted:
    """Polled: the client has been told 202 this many times."""

    load: Load
    count: int

    def __call__(self) -> bool:
        return len(self.load.accepted) >= self.count


def post_all(url: str, ids: list[str], ms: int) -> dict[str, int]:
    def post(job_id: str) -> tuple[str, int]:
        try:
            return job_id, httpx.post(f"{url}/jobs?id={job_id}&ms={ms}", timeout=10).status_code
        except httpx.HTTPError:
            return job_id, 0

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(post, ids))


# -- the server's workers ----------------------------------------------------------------------


@dataclass
class Stop:
    """A signal to the parent and the workers it retires."""

    at: float
    retiring: set[int]


@dataclass
class Store:
    path: Path
    releases: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    lease_claims: int = 0

    def prepare(self) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.executescript(SCHEMA + RELEASES)
        connection.close()

    def read(self) -> None:
        with sqlite3.connect(self.path) as connection:
            releases = connection.execute("SELECT args, owner, at FROM fleet_releases").fetchall()
            (self.lease_claims,) = connection.execute(
                "SELECT count(*) FROM fleet_claims"
            ).fetchone()
        connection.close()
        self.releases = defaultdict(list)
        for args, owner, at in releases:
            job_id = json.loads(args)["args"][0]
            self.releases[(job_id, int(owner.split(":")[-2]))].append(at)


def cut_short_runs(runs: list[Run], store: Store, died: dict[int, float]) -> None:
    """A run with no end was over when its process released its record, or died."""
    for run in runs:
        if run.end is None:
            bounds = [at for at in store.releases.get((run.job_id, run.pid), []) if at >= run.start]
            if run.pid in died:
                bounds.append(died[run.pid])
            run.cut = min(bounds, default=math.inf)


def in_flight_at(stops: list[Stop], runs: list[Run]) -> set[str]:
    """Jobs a retired worker was running when it was told to go, or started after that."""
    return {
        run.job_id
        for stop in stops
        for run in runs
        if run.pid in stop.retiring and finish(run) > stop.at
    }


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", RELOADING, ids=lambda kind: kind.replace(" --", "-").replace(" ", "-")
)
def test_workers_sharing_the_sqlite_file_reloaded_under_load_lose_no_job_and_never_overlap(
    start_server: StartServer, tmp_path: Path, kind: str
) -> None:
    store = Store(tmp_path / "jobs.sqlite3")
    store.prepare()
    jobs_file = tmp_path / "runs.log"
    env = {
        "GRACEFUL_DURABLE_URL": f"sqlite:///{store.path}",
        "GRACEFUL_DURABLE_LEASE": "3",
        "GRACEFUL_DURABLE_POLL": "0.2",
        # Shorter than a job: what a retired worker still runs 1 s after its signal is handed
        # over to the workers that stay (or come).
        "GRACEFUL_DRAIN_TIMEOUT": "1",
        "JOBS_FILE": str(jobs_file),
    }
    argv, server_env = RELOADING[kind]
    server = start_server(argv, env={**env, **server_env}, name="fleet")
    workers = Workers(server.pid, clock=time.time)
    workers.start()
    load = Load(server.url)
    stops: list[Stop] = []
    try:
        wait_until(lambda: len(workers.alive()) == 2, 10, f"two workers;\n{server.log()}")
        load.start()
        for reload in range(2):
            # Each generation of workers takes jobs before it is told to go.
            wait_until(Accepted(load, 10 * (reload + 1)), 15, "jobs accepted")
            retiring = workers.alive()
            server.send(signal.SIGHUP)
            stops.append(Stop(time.time(), retiring))

            def reloaded(retiring: set[int] = retiring) -> bool:
                alive = workers.alive()
                return not alive & retiring and len(alive) == 2

            wait_until(reloaded, 20, f"reload {reload + 1};\n{server.log()}")
        wait_until(Accepted(load, 30), 15, "jobs accepted by the last workers")
        stops.append(Stop(time.time(), workers.alive()))
        server.send(signal.SIGTERM)
        assert server.wait_exit(20) == 0, server.log()
        wait_until(lambda: not workers.alive(), 5, "the workers to be gone")
    finally:
        load.stop()
        workers.stop()
    accepted = load.accepted

    plain_argv, plain_env = PLAIN[kind]
    plain = start_server(plain_argv, env={**env, **plain_env}, name="plain")
    wait_until(
        lambda: accepted <= ended(jobs_file),
        20,
        f"every accepted job to end;\n{server.log()}\n{plain.log()}",
    )

    store.read()
    runs = read_runs(jobs_file)
    cut_short_runs(runs, store, workers.gone)
    jobs = by_job(runs)
    lost = accepted - ended(jobs_file)
    ran_twice = {job_id for job_id, job_runs in jobs.items() if len(job_runs) > 1}
    in_flight = in_flight_at(stops, runs)
    overlapping = overlaps(runs)
    handed_over = sum(len(times) for times in store.releases.values())
    print(
        f"\n{kind} ({LOOP}): {len(accepted)} accepted of {len(load.statuses)} posted, "
        f"{len(lost)} lost, {len(ran_twice)} ran twice "
        f"(max {max(len(r) for r in jobs.values())} runs; {len(in_flight)} in flight at the "
        f"reloads and the stop), {len(overlapping)} overlapping, {handed_over} handed over, "
        f"{store.lease_claims} claimed after a lease ran out"
    )
    assert not lost
    assert not overlapping, overlapping
    check_runs_of_each_job(runs)
    assert ran_twice <= in_flight
    assert handed_over > 0, "no job was in flight at a deadline: the reloads tested nothing"
    # No process died: every job still running at a deadline was handed over by its process,
    # none waited for a lease to run out.
    log = server.log()
    assert log.count("drain finished in") == log.count("drain started ("), log
    assert store.lease_claims == 0, log
    # Every run cut short was over by a release or its process's end, before anyone ran it again.
    assert all(run.cut < math.inf for run in runs if run.end is None)


def test_a_replica_killed_with_jobs_in_flight_has_them_run_by_the_other_once_its_lease_ran_out(
    start_server: StartServer, tmp_path: Path, postgres_url: str
) -> None:
    lease = 2.0
    jobs_file = tmp_path / "runs.log"
    env = {
        "GRACEFUL_DURABLE_URL": postgres_url,
        "GRACEFUL_DURABLE_LEASE": str(lease),
        "GRACEFUL_DURABLE_POLL": "0.2",
        "JOBS_FILE": str(jobs_file),
    }
    doomed = start_server(_uvicorn(), env=env, name="doomed")
    survivor = start_server(_uvicorn(), env=env, name="survivor")
    loads = [(doomed.url, [f"d{n:02d}" for n in range(20)]),
             (survivor.url, [f"s{n:02d}" for n in range(20)])]  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        statuses = {
            job_id: status
            for result in pool.map(lambda load: post_all(load[0], load[1], 3000), loads)
            for job_id, status in result.items()
        }
    accepted = {job_id for job_id, status in statuses.items() if status == 202}
    assert len(accepted) == 40, statuses
    wait_until(
        lambda: {run.job_id for run in read_runs(jobs_file)} >= accepted, 10, "every job to start"
    )

    doomed.send(signal.SIGKILL)
    doomed.wait_exit(10)
    killed_at = time.time()  # it was dead by then
    in_flight = {run.job_id for run in read_runs(jobs_file) if run.pid == doomed.pid}
    in_flight -= ended(jobs_file)

    wait_until(
        lambda: accepted <= ended(jobs_file), 20, f"every accepted job to end;\n{survivor.log()}"
    )
    runs = read_runs(jobs_file)
    for run in runs:
        if run.pid == doomed.pid and run.end is None:
            run.cut = killed_at
    jobs = by_job(runs)
    lost = accepted - ended(jobs_file)
    ran_twice = {job_id for job_id, job_runs in jobs.items() if len(job_runs) > 1}
    overlapping = overlaps(runs)
    reruns = [run for run in runs if run.attempt > 1]
    print(
        f"\nPostgreSQL replicas ({LOOP}): {len(accepted)} accepted, {len(lost)} lost, "
        f"{len(in_flight)} in flight at the kill, {len(ran_twice)} ran twice, "
        f"{len(overlapping)} overlapping, first rerun "
        f"{min(run.start for run in reruns) - killed_at:.2f} s after the kill"
    )
    assert not lost
    assert not overlapping, overlapping
    check_runs_of_each_job(runs)
    assert ran_twice <= in_flight
    assert all(run.pid == survivor.pid and run.attempt == 2 for run in reruns), reruns
    # Not before the lease ran out: the doomed replica's last heartbeat came at most lease/3
    # before the kill.
    assert min(run.start for run in reruns) >= killed_at + lease * 2 / 3 - 0.3
    recovered = [int(n) for n in RUNNING.findall(survivor.log())]
    assert sum(recovered) == len(in_flight), survivor.log()
