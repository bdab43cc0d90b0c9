"""Durable jobs that resume instead of restart, seen from outside: steps survive SIGKILL, the
deadline's hand-over and restart after restart; one idempotency key makes one job under 50
concurrent POSTs across processes; a job's status and cancel by its id, from another process
and during a drain. On SQLite and on a real PostgreSQL.

tests/apps/steps_app.py notes each step's side effect (``step <run> <i> <pid> <attempt>``) and
each job's result in JOBS_FILE; the store is read through ``graceful_web.durable`` from this
process, as any other process would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from graceful_web import durable
from graceful_web.durable import _journal
from tests.support.polling import poll, wait_until
from tests.support.servers import Server, StartServer, whole_lines

T = TypeVar("T")
LOOP = os.environ.get("LOOP", "asyncio")
SQUARES = [i * i for i in range(1, 11)]


def uvicorn(*options: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "tests.apps.steps_app:app", "--host", "127.0.0.1",
            "--port", "{port}", "--loop", LOOP, *options]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    url = (
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    monkeypatch.setenv("GRACEFUL_DURABLE_URL", url)  # for ask(): this process reads it too
    return url


def steps_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {
        "GRACEFUL_DURABLE_URL": url,
        "GRACEFUL_DURABLE_LEASE": "1",
        "GRACEFUL_DURABLE_POLL": "0.1",
        "JOBS_FILE": str(tmp_path / "runs.log"),
        **extra,
    }


def ask(question: Callable[[], Awaitable[T]]) -> T:
    """``question`` asked of the store from this process (GRACEFUL_DURABLE_URL)."""

    async def asking() -> T:
        try:
            return await question()
        finally:
            await durable.shutdown()

    return asyncio.run(asking())


async def recorded_steps(job_id: str) -> dict[str, str]:
    journal = _journal.journal_for(asyncio.get_running_loop())
    await journal.open()
    return await journal.store.steps(job_id)


def post(url: str, path: str, **headers: str) -> str:
    answer = httpx.post(f"{url}{path}", headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    assert answer.headers["location"] == f"/jobs/{job_id}"
    return job_id


def notes(jobs_file: Path, kind: str, run: str) -> list[list[str]]:
    """The words after ``<kind> <run>`` of each such line."""
    return [line.split()[2:] for line in whole_lines(jobs_file) if line.split()[:2] == [kind, run]]


def result(jobs_file: Path, run: str) -> list[int] | None:
    found = notes(jobs_file, "result", run)
    return json.loads(found[0][0]) if found else None


def step_pids(jobs_file: Path, run: str) -> dict[int, list[int]]:
    """Each step's side effects: the pid of every run of it."""
    pids: dict[int, list[int]] = {}
    for i, pid, _attempt in notes(jobs_file, "step", run):
        pids.setdefault(int(i), []).append(int(pid))
    return pids


def handed_over(
    start_server: StartServer,
    env: dict[str, str],
    path: str,
    until: Callable[[], object] = lambda: True,
) -> tuple[Server, str]:
    """A job posted to a process stopped (SIGTERM, once ``until()`` holds) before it ends: at
    the drain's deadline it hands the job over. That process and the job's id."""
    first = start_server(uvicorn(), env=env, name="first")
    job_id = post(first.url, path)
    wait_until(until, 15, "the moment to stop")
    first.send(signal.SIGTERM)
    assert first.wait_exit(10) == 0
    return first, job_id


def status(server: Server, job_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
    return answer


def test_a_job_killed_right_after_its_sixth_step_is_recorded_resumes_at_its_seventh(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    env = steps_env(tmp_path, store_url)
    jobs_file = Path(env["JOBS_FILE"])
    first = start_server(uvicorn(), env=env, name="first")
    job_id = post(first.url, "/steps?run=cut&n=10&ms=300")

    async def kill_after_six() -> None:
        while len(await recorded_steps(job_id)) < 6:
            await asyncio.sleep(0.01)
        first.send(signal.SIGKILL)

    ask(lambda: asyncio.wait_for(kill_after_six(), 15))
    first.wait_exit()
    second = start_server(uvicorn(), env=env, name="second")
    wait_until(lambda: result(jobs_file, "cut"), 20, f"the job to finish;\n{second.log()}")
    post(second.url, "/steps?run=whole&n=10&ms=1")
    wait_until(lambda: result(jobs_file, "whole"), 10, "the uninterrupted job to finish")

    pids = step_pids(jobs_file, "cut")
    assert pids == {i: [first.pid if i <= 6 else second.pid] for i in range(1, 11)}
    assert result(jobs_file, "cut") == result(jobs_file, "whole") == SQUARES


def test_at_the_deadlines_hand_over_no_completed_step_runs_again(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    # A lease far longer than the test: only the hand-over lets the next process resume it.
    env = steps_env(tmp_path, store_url, GRACEFUL_DURABLE_LEASE="120", GRACEFUL_DRAIN_TIMEOUT="0.5")
    jobs_file = Path(env["JOBS_FILE"])
    first, job_id = handed_over(
        start_server,
        env,
        "/steps?run=cut&n=10&ms=300",
        until=lambda: len(step_pids(jobs_file, "cut")) >= 3,
    )
    done_by_first = ask(lambda: recorded_steps(job_id))
    second = start_server(uvicorn(), env=env, name="second")
    wait_until(lambda: result(jobs_file, "cut"), 20, f"the job to finish;\n{second.log()}")

    pids = step_pids(jobs_file, "cut")
    cut_at = len(done_by_first)
    assert cut_at >= 3
    assert pids == {i: [first.pid if i <= cut_at else second.pid] for i in range(1, 11)}
    assert result(jobs_file, "cut") == SQUARES


def test_a_job_longer_than_the_time_between_restarts_finishes_only_with_steps(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    # SQLite: one process restarted again and again; PostgreSQL: two replicas restarted in
    # turn. Each lives about 1.5 s of serving (a 0.3 s deadline), the jobs need 4.8 s.
    replicas = 1 if store_url.startswith("sqlite") else 2
    env = steps_env(tmp_path, store_url, GRACEFUL_DURABLE_LEASE="30", GRACEFUL_DRAIN_TIMEOUT="0.3")
    jobs_file = Path(env["JOBS_FILE"])
    servers = [start_server(uvicorn(), env=env, name=f"r{n}-0") for n in range(replicas)]
    post(servers[0].url, "/steps?run=stepped&n=12&ms=400")
    post(servers[-1].url, "/plain?run=plain&n=12&ms=400")
    restarts = 0
    started = time.monotonic()
    while result(jobs_file, "stepped") is None:
        assert restarts < 30, f"not finished after {restarts} restarts"
        time.sleep(1.5)
        slot = restarts % replicas
        servers[slot].send(signal.SIGTERM)
        assert servers[slot].wait_exit(10) == 0
        restarts += 1
        servers[slot] = start_server(uvicorn(), env=env, name=f"r{slot}-{restarts}")

    stepped = step_pids(jobs_file, "stepped")
    rerun = sum(len(pids) - 1 for pids in stepped.values())
    plain_starts = len(notes(jobs_file, "start", "plain"))
    print(
        f"\n{replicas} replicas: 12 steps finished after {restarts} restarts in "
        f"{time.monotonic() - started:.1f} s, {rerun} steps run again; the same job without "
        f"steps started {plain_starts} times, never finished"
    )
    assert result(jobs_file, "stepped") == [i * i for i in range(1, 13)]
    assert sorted(stepped) == list(range(1, 13)) and rerun == 0
    assert result(jobs_file, "plain") is None
    assert plain_starts >= 2


def count_jobs(url: str) -> int:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
            count: int = connection.execute("SELECT count(*) FROM graceful_jobs").fetchone()[0]
            return count

    async def counted() -> int:
        import asyncpg  # type: ignore[import-untyped]

        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM graceful_jobs"))
        finally:
            await connection.close()

    return asyncio.run(counted())


def test_50_concurrent_posts_with_one_key_across_two_processes_make_one_job(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    env = steps_env(tmp_path, store_url)
    jobs_file = Path(env["JOBS_FILE"])
    if store_url.startswith("sqlite"):  # two workers of one server
        urls = [start_server(uvicorn("--workers", "2"), env=env, name="workers").url]
    else:  # two replicas
        urls = [start_server(uvicorn(), env=env, name=f"replica{n}").url for n in range(2)]

    def keyed(n: int) -> tuple[int, str, int]:
        answer = httpx.post(
            f"{urls[n % len(urls)]}/keyed?payload=order-1",
            headers={"Idempotency-Key": "order-1"},
            timeout=10,
        )
        return answer.status_code, answer.json()["id"], answer.json()["pid"]

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(keyed, range(50)))
    assert {status for status, _, _ in answers} == {202}
    [job_id] = {job_id for _, job_id, _ in answers}
    answering = {pid for _, _, pid in answers}
    if len(urls) == 2:
        assert len(answering) == 2
    assert ask(lambda: durable.status(job_id)).state in ("running", "succeeded")
    wait_until(lambda: ask(lambda: durable.status(job_id)).state == "succeeded", 10, "its end")
    other = httpx.post(
        f"{urls[0]}/keyed?payload=order-2", headers={"Idempotency-Key": "order-1"}, timeout=10
    )
    assert other.status_code == 409, other.text
    ran = [line for line in whole_lines(jobs_file) if line.startswith("keyed ")]
    pids = {line.split()[2] for line in ran}
    print(f"\n50 POSTs with one key: {len(ran)} run (by {sorted(pids)}), 1 id, answered by "
          f"{len(answering)} processes")
    assert [line.split()[1] for line in ran] == ["order-1"]
    assert count_jobs(store_url) == 1


def test_status_through_a_whole_life(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    env = steps_env(
        tmp_path,
        store_url,
        GRACEFUL_DURABLE_LEASE="120",
        GRACEFUL_DRAIN_TIMEOUT="0.3",
        GRACEFUL_DURABLE_RETRY_DELAY="1",
    )
    first = start_server(uvicorn(), env=env, name="first")
    assert status(first, "no-such-job")["state"] == "unknown"
    job_id = post(first.url, "/long?run=life&ms=1500")
    running = status(first, job_id)
    assert (running["state"], running["attempt"]) == ("running", 1)
    assert abs(running["since"] - time.time()) < 5
    first.send(signal.SIGTERM)  # cut at the deadline: handed over, queued for the next
    assert first.wait_exit(10) == 0
    assert ask(lambda: durable.status(job_id)) == durable.JobStatus("queued", 1)

    second = start_server(uvicorn(), env=env, name="second")
    wait_until(lambda: status(second, job_id)["state"] == "running", 5, "it to run again")
    assert status(second, job_id)["attempt"] == 2
    wait_until(lambda: status(second, job_id)["state"] == "succeeded", 10, "its success")
    assert status(second, job_id)["finished"] <= time.time()

    failing = post(second.url, "/fails?run=bad")
    wait_until(lambda: status(second, failing)["state"] == "failed", 5, "its first failure")
    failed = status(second, failing)
    assert failed["error"] == "RuntimeError: bad fails on purpose"
    assert failed["retry_at"] > time.time()
    wait_until(lambda: status(second, failing)["state"] == "dead", 10, "its death")
    assert status(second, failing)["attempt"] == 2
    assert ask(lambda: durable.retry_dead(failing)) == 1
    wait_until(lambda: status(second, failing)["attempt"] == 3, 5, "its retry")
    wait_until(lambda: status(second, failing)["state"] == "failed", 5, "it to fail again")


def test_a_cancelled_queued_job_never_runs(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    env = steps_env(tmp_path, store_url, GRACEFUL_DURABLE_LEASE="120", GRACEFUL_DRAIN_TIMEOUT="0.2")
    jobs_file = Path(env["JOBS_FILE"])
    _, job_id = handed_over(start_server, env, "/long?run=queued&ms=3000")  # queued, no one runs it
    assert ask(lambda: durable.cancel(job_id)) is True
    assert ask(lambda: durable.cancel(job_id)) is False  # once
    second = start_server(uvicorn(), env=env, name="second")
    assert not poll(lambda: len(notes(jobs_file, "start", "queued")) > 1, 1.0)
    assert status(second, job_id)["state"] == "cancelled"


def test_a_job_running_on_another_process_is_cancelled_within_a_poll_and_never_runs_again(
    start_server: StartServer, tmp_path: Path, postgres_url: str
) -> None:
    env = steps_env(tmp_path, postgres_url, GRACEFUL_DURABLE_POLL="0.2")
    jobs_file = Path(env["JOBS_FILE"])
    runner, other = (start_server(uvicorn(), env=env, name=name) for name in ("runner", "other"))
    job_id = post(runner.url, "/long?run=victim&ms=20000")
    wait_until(lambda: notes(jobs_file, "start", "victim"), 5, "the job to start")
    asked = time.time()
    cancelled = httpx.delete(f"{other.url}/jobs/{job_id}", timeout=10).json()
    assert cancelled == {"cancelled": True}
    wait_until(lambda: notes(jobs_file, "cancelled", "victim"), 2, "the job to be cancelled")
    [[pid]] = notes(jobs_file, "cancelled", "victim")
    assert int(pid) == runner.pid
    when = os.stat(jobs_file).st_mtime
    print(f"\ncancelled on the other replica {when - asked:.2f} s after it was asked")
    assert status(other, job_id)["state"] == "cancelled"
    # Neither retried nor handed over, nor taken over once its process is gone.
    runner.send(signal.SIGKILL)
    runner.wait_exit()
    assert not poll(lambda: len(notes(jobs_file, "start", "victim")) > 1, 2.0)


def test_a_job_cancelled_during_the_drain_stops_and_the_drain_ends(
    start_server: StartServer, tmp_path: Path, store_url: str
) -> None:
    env = steps_env(tmp_path, store_url, GRACEFUL_DURABLE_LEASE="120", GRACEFUL_DRAIN_TIMEOUT="30")
    jobs_file = Path(env["JOBS_FILE"])
    server = start_server(uvicorn(), env=env, name="draining")
    job_id = post(server.url, "/long?run=drained&ms=20000")
    wait_until(lambda: notes(jobs_file, "start", "drained"), 5, "the job to start")
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started")
    assert ask(lambda: durable.cancel(job_id)) is True
    assert server.wait_exit(5) == 0  # long before the deadline
    assert notes(jobs_file, "cancelled", "drained")
    assert ask(lambda: durable.status(job_id)).state == "cancelled"
