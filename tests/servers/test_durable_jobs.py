"""Durable jobs, seen from outside: real servers on 127.0.0.1 killed with SIGKILL, stopped with
SIGTERM before their jobs are done, and started again on the same store; what a client was told
is checked against what the jobs wrote (tests/apps/durable_app.py notes every run's start and
end in JOBS_FILE)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from graceful_web.durable._sqlite import SCHEMA
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.servers import Server, StartServer, whole_lines
from tests.support.stores import PostgresServer

LOOP = os.environ.get("LOOP", "asyncio")

SERVERS: dict[str, tuple[list[str] | str, dict[str, str]]] = {
    "uvicorn": (
        [sys.executable, "-m", "uvicorn", "tests.apps.durable_app:app", "--host", "127.0.0.1",
         "--port", "{port}", "--loop", LOOP],
        {},
    ),
    "aiohttp": ("tests.apps.durable_app", {"APP": "aiohttp", "LOOP": LOOP}),
}


@dataclass(frozen=True)
class Run:
    event: str
    job_id: str
    attempt: int
    pid: int
    at: float


def runs(jobs_file: Path) -> list[Run]:
    parsed = []
    for line in whole_lines(jobs_file):
        event, job_id, attempt, pid, at = line.split()
        parsed.append(Run(event, job_id, int(attempt), int(pid), float(at)))
    return parsed


def ended(jobs_file: Path) -> set[str]:
    return {run.job_id for run in runs(jobs_file) if run.event == "end"}


def started(jobs_file: Path) -> set[str]:
    return {run.job_id for run in runs(jobs_file) if run.event == "start"}


def starts_by_id(jobs_file: Path) -> dict[str, list[Run]]:
    by_id: dict[str, list[Run]] = defaultdict(list)
    for run in runs(jobs_file):
        if run.event == "start":
            by_id[run.job_id].append(run)
    return by_id


def post_jobs(url: str, ids: list[str], ms: int, *, fail: bool = False) -> dict[str, int]:
    """POST each job at once from 16 connections; the status each got."""

    def post(job_id: str) -> tuple[str, int]:
        query = f"id={job_id}&ms={ms}" + ("&fail=1" if fail else "")
        try:
            return job_id, httpx.post(f"{url}/jobs?{query}", timeout=10).status_code
        except httpx.HTTPError:
            return job_id, 0

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(post, ids))


def durable_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "GRACEFUL_DURABLE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "GRACEFUL_DURABLE_LEASE": "2",
        "GRACEFUL_DURABLE_POLL": "0.2",
        "GRACEFUL_DURABLE_RETRY_DELAY": "0.2",
        "JOBS_FILE": str(tmp_path / "runs.log"),
        **extra,
    }


def start(start_server: StartServer, kind: str, env: dict[str, str], name: str) -> Server:
    argv, server_env = SERVERS[kind]
    return start_server(argv, env={**server_env, **env}, name=name)


@pytest.mark.parametrize("kind", SERVERS)
def test_kill_9_with_100_jobs_in_flight_a_successor_completes_every_accepted_job(
    start_server: StartServer, tmp_path: Path, kind: str
) -> None:
    env = durable_env(tmp_path)
    jobs_file = Path(env["JOBS_FILE"])
    first = start(start_server, kind, env, "first")
    statuses = post_jobs(first.url, [f"job{n}" for n in range(100)], ms=3000)
    accepted = {job_id for job_id, status in statuses.items() if status == 202}
    assert len(accepted) == 100, statuses
    # Killed the moment the last client heard 202: what they were told must hold.
    first.send(signal.SIGKILL)
    first.wait_exit()
    killed_at = time.time()
    in_flight_at_kill = started(jobs_file) - ended(jobs_file)

    second = start(start_server, kind, env, "second")
    wait_until(
        lambda: ended(jobs_file) >= accepted, 30, f"every accepted job to end;\n{second.log()}"
    )
    by_id = starts_by_id(jobs_file)
    ran_twice = {job_id for job_id, starts in by_id.items() if len(starts) > 1}
    print(f"\n{kind}: 100 accepted, {len(in_flight_at_kill)} in flight at the kill, "
          f"{len(ran_twice)} ran twice, 0 lost")
    assert ran_twice <= in_flight_at_kill
    assert all(len(starts) <= 2 for starts in by_id.values())
    reruns = [run for starts in by_id.values() for run in starts if run.pid == second.pid]
    assert all(run.at >= killed_at and run.attempt == 2 for run in reruns)


@pytest.mark.parametrize("kind", SERVERS)
def test_jobs_longer_than_the_deadline_are_handed_over_and_finished_by_the_next_process(
    start_server: StartServer, tmp_path: Path, kind: str
) -> None:
    # A lease far longer than the test: only a hand-over lets the next process run them now.
    env = durable_env(tmp_path, GRACEFUL_DURABLE_LEASE="120", GRACEFUL_DRAIN_TIMEOUT="1")
    jobs_file = Path(env["JOBS_FILE"])
    first = start(start_server, kind, env, "first")
    ids = [f"long{n}" for n in range(10)]
    assert set(post_jobs(first.url, ids, ms=4000).values()) == {202}
    wait_until(lambda: started(jobs_file) >= set(ids), 10, "every job to start")
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0, first.log()  # handed over is not lost: a clean exit
    assert "handed over 10, abandoned 0" in first.log()
    assert first.log().count("handed over job") == 10
    assert not ended(jobs_file)

    second = start(start_server, kind, env, "second")
    wait_until(lambda: ended(jobs_file) >= set(ids), 15, f"the jobs to end;\n{second.log()}")
    for job_id in ids:
        attempts = [(run.pid, run.attempt) for run in starts_by_id(jobs_file)[job_id]]
        assert attempts == [(first.pid, 1), (second.pid, 2)]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_job_that_keeps_failing_is_kept_as_dead_after_its_attempts(
    start_server: StartServer, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    env = durable_env(tmp_path)
    if store == "postgresql":
        env["GRACEFUL_DURABLE_URL"] = request.getfixturevalue("postgres_url")
    jobs_file = Path(env["JOBS_FILE"])
    server = start(start_server, "uvicorn", env, "server")
    assert post_jobs(server.url, ["poison"], ms=0, fail=True) == {"poison": 202}

    def dead() -> list[dict[str, object]]:
        return list(httpx.get(f"{server.url}/dead", timeout=5).json())

    wait_until(dead, 15, "the job to be kept as dead")
    (job,) = dead()
    assert job["id"] and job["name"] == "tests.always_fails" and job["failures"] == 2
    assert "fails on purpose" in str(job["error"])
    assert [run.attempt for run in starts_by_id(jobs_file)["poison"]] == [1, 2]
    assert "is kept as dead" in server.log()
    assert "durable job 'tests.always_fails'" in server.log()


def test_a_job_that_keeps_killing_its_process_is_kept_as_dead(
    start_server: StartServer, tmp_path: Path
) -> None:
    env = durable_env(tmp_path, GRACEFUL_DURABLE_MAX_ATTEMPTS="2", GRACEFUL_DURABLE_LEASE="1")
    jobs_file = Path(env["JOBS_FILE"])
    first = start(start_server, "uvicorn", env, "first")
    assert post_jobs(first.url, ["killer"], ms=60_000) == {"killer": 202}
    wait_until(lambda: len(starts_by_id(jobs_file)["killer"]) == 1, 10, "the first run")
    first.send(signal.SIGKILL)
    first.wait_exit()
    second = start(start_server, "uvicorn", env, "second")
    wait_until(lambda: len(starts_by_id(jobs_file)["killer"]) == 2, 15, "the second run")
    second.send(signal.SIGKILL)
    second.wait_exit()

    third = start(start_server, "uvicorn", env, "third")
    wait_until(
        lambda: httpx.get(f"{third.url}/dead", timeout=5).json(), 15, "the job to be dead"
    )
    (job,) = httpx.get(f"{third.url}/dead", timeout=5).json()
    assert job["failures"] == 2
    assert job["error"] == "its process ended while running attempt 2"
    assert len(starts_by_id(jobs_file)["killer"]) == 2  # the third process never ran it
    assert "is kept as dead" in third.log()


def test_the_store_unreachable_at_spawn_is_answered_503_and_nothing_runs(
    start_server: StartServer, tmp_path: Path
) -> None:
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/jobs"
    env = durable_env(tmp_path, GRACEFUL_DURABLE_URL=nobody)
    jobs_file = Path(env["JOBS_FILE"])
    server = start(start_server, "uvicorn", env, "server")
    assert "the durable job store is unreachable at startup" in server.log()
    response = httpx.post(f"{server.url}/jobs?id=lost&ms=0", timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "could not be recorded" in response.text
    server.wait_for_log("1 durable jobs could not be recorded")
    assert httpx.get(f"{server.url}/_stats", timeout=5).json()["jobs"] == 0
    assert not runs(jobs_file)


def test_an_aiohttp_response_is_503_when_its_jobs_cannot_be_recorded(
    start_server: StartServer, tmp_path: Path
) -> None:
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/jobs"
    env = durable_env(tmp_path, GRACEFUL_DURABLE_URL=nobody)
    server = start(start_server, "aiohttp", env, "server")
    response = httpx.post(f"{server.url}/jobs?id=lost&ms=0", timeout=10)
    assert response.status_code == 503
    assert "could not be recorded" in response.text
    # A response the handler streams itself is held at its headers, and refused there.
    streamed = httpx.post(f"{server.url}/jobs-streamed?id=lost2&ms=0", timeout=10)
    assert streamed.status_code == 503
    assert "could not be recorded" in streamed.text
    assert not runs(Path(env["JOBS_FILE"]))


def test_a_corrupt_sqlite_file_stops_startup_saying_what_to_do(
    start_server: StartServer, tmp_path: Path
) -> None:
    env = durable_env(tmp_path)
    (tmp_path / "jobs.sqlite3").write_bytes(b"not a database at all\n" * 512)
    argv, server_env = SERVERS["uvicorn"]
    server = start_server(argv, env={**server_env, **env}, ready_path=None, name="server")
    assert server.wait_exit(20) != 0
    assert "is not a graceful_web job store or is damaged" in server.log()
    assert "move it aside" in server.log()


def test_a_job_whose_function_this_release_lacks_waits_and_is_named_at_startup(
    start_server: StartServer, tmp_path: Path
) -> None:
    env = durable_env(tmp_path)
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA)
        connection.execute(
            "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, run_after, "
            "created) VALUES ('renamed1', 'reports.old_name', '{\"args\":[],\"kwargs\":{}}', 1, "
            "5, 0, 0)"
        )
    server = start(start_server, "uvicorn", env, "server")
    assert (
        "1 durable jobs wait in the store for a function this process does not have, "
        "'reports.old_name'" in server.log()
    )
    # Polled several times since, and still there for a process that has the function.
    assert post_jobs(server.url, ["other"], ms=0) == {"other": 202}
    wait_until(lambda: "other" in ended(Path(env["JOBS_FILE"])), 10, "a job that can run")

    def rows() -> list[tuple[str, str, str | None]]:
        with sqlite3.connect(path) as connection:
            query = "SELECT id, state, owner FROM graceful_jobs"
            return connection.execute(query).fetchall()

    def waiting() -> list[tuple[str, str, str | None]]:
        return [row for row in rows() if row[1] != "succeeded"]

    wait_until(lambda: len(waiting()) == 1, 10, "the finished job's record to be marked so")
    assert waiting() == [("renamed1", "ready", None)]


def test_the_store_gone_when_a_job_completes_is_retried_and_the_job_kept(
    start_server: StartServer, tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    env = durable_env(tmp_path, GRACEFUL_DURABLE_URL=postgres_url)
    jobs_file = Path(env["JOBS_FILE"])
    server = start(start_server, "uvicorn", env, "server")
    assert post_jobs(server.url, ["survivor"], ms=1500) == {"survivor": 202}
    wait_until(lambda: "survivor" in started(jobs_file), 10, "the job to start")
    # The store goes away while the job runs: no new connection, every open one cut.
    postgres_server.sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    postgres_server.sql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    )
    try:
        wait_until(lambda: "survivor" in ended(jobs_file), 10, "the job to end")
        server.wait_for_log("could not forget finished durable jobs")
        assert "survivor" in ended(jobs_file)
    finally:
        postgres_server.sql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    server.wait_for_log("the durable job store answers again")

    def records() -> str:
        command = [str(postgres_server.bin_dir / "psql"), "-X", "-qAt", "-d", postgres_url, "-c",
                   "SELECT state FROM graceful_jobs"]
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout

    wait_until(
        lambda: records().strip() == "succeeded", 10, "the finished job's record to be marked so"
    )
    assert [run.attempt for run in starts_by_id(jobs_file)["survivor"]] == [1]


@pytest.mark.parametrize("kind", SERVERS)
def test_a_drain_that_begins_while_a_response_waits_for_its_records_waits_for_it(
    start_server: StartServer, tmp_path: Path, kind: str
) -> None:
    env = durable_env(tmp_path, GRACEFUL_DRAIN_TIMEOUT="5")
    jobs_file = Path(env["JOBS_FILE"])
    path = tmp_path / "jobs.sqlite3"
    server = start(start_server, kind, env, "server")
    # Another process holds the file's write lock: the record of the next job waits for it.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(
                httpx.post, f"{server.url}/jobs?id=waiting&ms=10", timeout=20
            )
            wait_until(
                lambda: httpx.get(f"{server.url}/_stats", timeout=5).json()["unwritten"] == 1,
                4,  # within the store's 5 s wait for a lock
                "the job's record to wait for the store",
            )
            server.send(signal.SIGTERM)
            server.wait_for_log("drain started")
            blocker.execute("COMMIT")
            assert answer.result().status_code == 202
    finally:
        blocker.close()
    assert server.wait_exit() == 0, server.log()
    assert "drained 1 requests and 1 jobs" in server.log()
    assert "waiting" in ended(jobs_file)


def test_a_sqlite_file_locked_longer_than_the_store_waits_is_answered_503(
    start_server: StartServer, tmp_path: Path
) -> None:
    env = durable_env(tmp_path)
    server = start(start_server, "uvicorn", env, "server")
    blocker = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # held past the store's 5 s wait for the lock
    try:
        response = httpx.post(f"{server.url}/jobs?id=locked&ms=0", timeout=20)
    finally:
        blocker.close()
    assert response.status_code == 503
    assert "database is locked" in server.log()
    assert not runs(Path(env["JOBS_FILE"]))
    # The lock gone, the next job is accepted.
    assert post_jobs(server.url, ["after"], ms=0) == {"after": 202}
