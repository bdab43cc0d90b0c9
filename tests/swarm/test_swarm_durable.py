"""Durable jobs through a rolling update whose drain deadline is shorter than the jobs.

The demo services (docker-stack.yml's aiohttp and ASGI ones, 2 replicas each) run with a
PostgreSQL store (GRACEFUL_DURABLE_URL) on a real server on this machine, reached at 127.0.0.1
through host networking. Clients post durable jobs of 6 s (POST /reports, demo_services/_reports.py)
straight to the replicas before and during `docker service update --force` of both services,
while each replica's drain deadline is 2 s: every old task reaches its deadline with jobs still
running, hands them over and exits 0, and the other replicas (the new tasks among them) run them
again. Each run that finishes writes a row to the table ``completed`` of the same database.

Asserted: every job answered 202 is in ``completed`` (0 lost), every old task exited 0 on SIGTERM
alone and handed jobs over. Counted and reported: jobs run twice (allowed: at least once),
the hand-overs logged, the update's duration.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from demo_services._contract import COMPLETED_TABLE
from tests.support.load import ThreadedLoad
from tests.support.polling import wait_until

from .conftest import (
    DEMO_IMAGE,
    PREFIX_VARIABLES,
    SERVICES,
    Events,
    Stack,
    docker_time,
    free_prefixes,
    grace_period,
    stack_file,
)
from .test_swarm_update import UPDATE_TIMEOUT, Replacement, container_log, fmt, replacements

DURABLE_REPLICAS = 2
DRAIN_TIMEOUT = 2.0  # GRACEFUL_DRAIN_TIMEOUT of every replica
JOB_MS = 6000  # each durable job sleeps this long: three drain deadlines
LEASE = 5.0  # GRACEFUL_DURABLE_LEASE
CLIENTS = 2  # per service
PAUSE = 0.25  # between a client's requests
MAX_SECONDS = 150.0  # the load stops by itself after this long
REQUEST_TIMEOUT = 15.0
#: After the update and the load are over: how long every accepted job has to be completed
#: (a job handed over at the last stop runs again for 6 s; one left by a process that died
#: waits for its lease to run out).
SETTLE_TIMEOUT = 90.0
HANDED_OVER = re.compile(r"handed over job '[^']*' after")
#: What a replica logs when it takes up records of others (report only: not in the contract).
TAKEN_UP = re.compile(r"running (\d+) durable jobs? (?:from the store|handed over)")


def write_durable_stack(path: Path, url: str) -> None:
    """docker-stack.yml's two demo services (no nginx), 2 replicas each, with the durable
    store, a drain deadline shorter than the jobs and a short lease."""
    spec = stack_file()
    services: dict[str, Any] = {}
    for service in SERVICES:
        one = copy.deepcopy(spec["services"][service])
        one["deploy"]["replicas"] = DURABLE_REPLICAS
        one["environment"].update(
            {
                "GRACEFUL_DRAIN_TIMEOUT": f"{DRAIN_TIMEOUT:g}",
                "GRACEFUL_DURABLE_URL": url,
                "GRACEFUL_DURABLE_LEASE": f"{LEASE:g}",
                # Which task ran a job, in the rows of `completed`.
                "REPLICA": "{{.Task.Name}}",
            }
        )
        services[service] = one
    durable = {"version": spec["version"], "services": services, "networks": spec["networks"]}
    path.write_text(yaml.safe_dump(durable, sort_keys=False))


def run_sql(url: str, statement: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(statement)
            return rows
        finally:
            await conn.close()

    return asyncio.run(go())


@dataclass(frozen=True)
class Row:
    report_id: str
    attempt: int
    replica: str


def completed_rows(url: str) -> list[Row]:
    return [
        Row(r["report_id"], r["attempt"], r["replica"])
        for r in run_sql(url, "SELECT report_id, attempt, replica FROM completed")
    ]


@dataclass(kw_only=True)
class JobLoad(ThreadedLoad):
    """Clients posting durable jobs of JOB_MS straight to one service's replicas, in turn.

    A post a replica refuses (stopped: connection refused; draining: 503) is not accepted and
    not tried again: only the ids answered 202 are the service's promise."""

    stack: Stack
    service: str
    clients: int = CLIENTS
    pause: float = PAUSE
    max_seconds: float = MAX_SECONDS
    request_timeout: float = REQUEST_TIMEOUT
    accepted: list[str] = field(default_factory=list)
    accepted_by: collections.Counter[int] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    unanswered: dict[str, str] = field(default_factory=dict)  # id: what the client saw

    @property
    def tag(self) -> str:
        return self.name

    @property
    def ports(self) -> list[int]:
        return [
            self.stack.replica_port(self.service, slot)
            for slot in range(1, self.stack.replicas + 1)
        ]

    def accepted_on(self, port: int) -> int:
        with self.lock:
            return self.accepted_by[port]

    def send(self, client: httpx.Client, n: int) -> None:
        job_id = f"{self.tag}-{n}"
        port = self.ports[n % len(self.ports)]
        url = f"http://127.0.0.1:{port}/reports"
        try:
            response = client.post(url, params={"id": job_id, "ms": JOB_MS})
        except httpx.ConnectError:
            with self.lock:
                self.refused["connection refused"] += 1
            return
        except httpx.HTTPError as exc:  # sent, maybe recorded, never answered
            with self.lock:
                self.unanswered[job_id] = repr(exc)
            return
        with self.lock:
            if response.status_code == 202 and response.json().get("id") == job_id:
                self.accepted.append(job_id)
                self.accepted_by[port] += 1
            else:
                self.refused[str(response.status_code)] += 1


@dataclass
class DurableRun:
    loads: dict[str, JobLoad]
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    replacements: list[Replacement] = field(default_factory=list)
    handed_over_lines: dict[str, int] = field(default_factory=dict)  # by old task id
    taken_up: dict[str, int] = field(default_factory=dict)  # by service, from every task's log
    odd_logs: dict[str, str] = field(default_factory=dict)  # the end of an old task's log, by
    # task id, when it did not exit 0 after a drain finished line
    rows: list[Row] = field(default_factory=list)
    settled_in: float | None = None

    def ids(self, service: str) -> collections.Counter[str]:
        tag = self.loads[service].tag + "-"
        return collections.Counter(r.report_id for r in self.rows if r.report_id.startswith(tag))

    def unacknowledged(self, service: str) -> list[str]:
        """Completed, though the client never saw a 202 (sent, the answer lost)."""
        return sorted(set(self.ids(service)) - set(self.loads[service].accepted))

    def lost(self, service: str) -> list[str]:
        return sorted(set(self.loads[service].accepted) - set(self.ids(service)))

    def twice(self, service: str) -> list[str]:
        return sorted(job for job, n in self.ids(service).items() if n > 1)

    def handed_over(self, service: str) -> int:
        return sum(
            self.handed_over_lines.get(r.old.id, 0)
            for r in self.replacements
            if r.service == service
        )

    def update_seconds(self, service: str) -> float:
        status = self.statuses[service]
        return docker_time(str(status["CompletedAt"])) - docker_time(str(status["StartedAt"]))


@pytest.fixture
def durable_stack(
    swarm: None, images: None, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """The durable stack deployed and converged, with its database's URL; removed after."""
    run_sql(postgres_url, COMPLETED_TABLE)
    work = tmp_path_factory.mktemp("swarm-durable")
    file = work / "durable-stack.yml"
    write_durable_stack(file, postgres_url)
    jobs_dir = work / "jobs"
    jobs_dir.mkdir()
    prefixes = dict(zip(SERVICES, free_prefixes(len(SERVICES)), strict=True))
    env = {
        **os.environ,
        "DEMO_IMAGE": DEMO_IMAGE,
        "JOBS_DIR": str(jobs_dir),
        "GRACEFUL": "1",
        **{PREFIX_VARIABLES[s]: str(p) for s, p in prefixes.items()},
    }
    name = f"gwtest-durable-{secrets.token_hex(2)}"
    stack = Stack(name, env, prefixes, jobs_dir, file=file, replicas=DURABLE_REPLICAS, nginx=False)
    try:
        stack.deploy()
        stack.wait_converged()
        yield stack, postgres_url
    finally:
        stack.remove()


def settle(run: DurableRun, url: str) -> None:
    """Wait (bounded) until every accepted job is in `completed`; what is missing after that
    is reported and asserted on by the caller."""
    accepted = {job for load in run.loads.values() for job in load.accepted}
    began = time.monotonic()

    def done() -> bool:
        run.rows = completed_rows(url)
        if accepted <= {r.report_id for r in run.rows}:
            return True
        time.sleep(0.5)
        return False

    try:
        wait_until(done, SETTLE_TIMEOUT, "every accepted durable job to be completed")
        run.settled_in = time.monotonic() - began
    except AssertionError:
        pass
    # A job handed over while its first run was writing its row may finish a second time:
    # give such stragglers a moment, then take the rows as they are.
    time.sleep(2)
    run.rows = completed_rows(url)


def report(run: DurableRun) -> str:
    lines = [
        "",
        f"swarm rolling update with durable jobs: docker service update --force, "
        f"{DURABLE_REPLICAS} replicas each, PostgreSQL store, drain deadline {DRAIN_TIMEOUT:g} s, "
        f"jobs {JOB_MS / 1000:g} s, lease {LEASE:g} s, {CLIENTS} clients per service pausing "
        f"{PAUSE} s",
    ]
    for service, load in run.loads.items():
        ids = run.ids(service)
        attempts = collections.Counter(
            r.attempt for r in run.rows if r.report_id.startswith(load.tag + "-")
        )
        refused = ", ".join(f"{why} {n}" for why, n in sorted(load.refused.items())) or "none"
        lines += [
            f"  {service}: {sum(load.refused.values()) + len(load.accepted)} posts in "
            f"{load.finished - load.started:.1f} s; accepted {len(load.accepted)} "
            f"(by port {dict(sorted(load.accepted_by.items()))}), refused: {refused}, "
            f"unanswered {len(load.unanswered)}",
            f"    completed {len(ids)} distinct ({ids.total()} runs; without a 202 "
            f"{len(run.unacknowledged(service))}), lost {len(run.lost(service))}, run twice "
            f"{len(run.twice(service))}, handed over {run.handed_over(service)}, taken up by "
            f"another replica {run.taken_up.get(service, 0)} (log lines); rows by attempt "
            f"{dict(sorted(attempts.items()))}; update {run.statuses[service].get('State')} in "
            f"{run.update_seconds(service):.1f} s",
        ]
        for lost in run.lost(service)[:10]:
            lines.append(f"    lost: {lost}")
        for job_id, seen in list(load.unanswered.items())[:5]:
            lines.append(f"    unanswered: {job_id}: {seen}")
    settled = "-" if run.settled_in is None else f"{run.settled_in:.1f} s"
    lines.append(f"  every accepted job completed {settled} after the load stopped")
    for r in run.replacements:
        lines.append(
            f"  {r.service}.{r.slot}: task {r.old.state}, exit {r.old.exit_code}, "
            f"signals {','.join(r.signals) or '-'}; SIGTERM->exit {fmt(r.stop_seconds)}, "
            f"SIGTERM->new task healthy {fmt(r.gap_seconds)}; handed over "
            f"{run.handed_over_lines.get(r.old.id, 0)}"
            + (f"; {r.drain_line}" if r.drain_line else "")
        )
        if r.old.id in run.odd_logs:
            lines.append(f"    its log ends with:\n{run.odd_logs[r.old.id]}")
    return "\n".join(lines)


def test_forced_update_hands_durable_jobs_over(durable_stack: tuple[Stack, str]) -> None:
    stack, url = durable_stack
    events = Events(stack.name)
    events.start()
    loads = {
        s: JobLoad(stack=stack, service=s, name=f"d{secrets.token_hex(2)}-{s}") for s in SERVICES
    }
    run = DurableRun(loads)
    try:
        for load in loads.values():
            load.start()
        # Jobs on every replica before the first stop.
        for service, load in loads.items():
            for port in load.ports:
                wait_until(
                    lambda load=load, port=port: load.accepted_on(port) >= 3,
                    30,
                    f"{service} replica on {port} to accept jobs",
                )
        since = time.time()
        for service in SERVICES:
            stack.update(service, "--force")
        for service in SERVICES:
            run.statuses[service] = stack.wait_update(
                service, {"completed", "rollback_completed"}, UPDATE_TIMEOUT
            )
        stack.wait_converged()
        # Jobs on every new task too, then the load stops.
        for service, load in loads.items():
            for port in load.ports:
                seen = load.accepted_on(port)
                wait_until(
                    lambda load=load, port=port, seen=seen: load.accepted_on(port) > seen,
                    30,
                    f"{service} replica on {port} to accept jobs again",
                )
    finally:
        for load in loads.values():
            load.stop()
        events.stop()
    for service in SERVICES:
        run.replacements += replacements(stack, events, service, since)
    for r in run.replacements:
        log = container_log(r.old.container) if r.old.container else ""
        run.handed_over_lines[r.old.id] = len(HANDED_OVER.findall(log))
        if r.old.exit_code != 0 or r.drain_line is None:
            run.odd_logs[r.old.id] = "\n".join(log.splitlines()[-25:])
    settle(run, url)
    for service in SERVICES:
        logs = [container_log(t.container) for t in stack.tasks(service) if t.container]
        run.taken_up[service] = sum(int(n) for log in logs for n in TAKEN_UP.findall(log))
    print(report(run))

    for service, load in loads.items():
        assert run.statuses[service]["State"] == "completed", run.statuses[service]
        assert not load.hit_bound, "the load hit its bound before the update was over"
        assert len(load.accepted) >= 20, f"only {len(load.accepted)} {service} jobs accepted"
        assert run.lost(service) == [], f"{service}: accepted durable jobs never completed"
        assert run.handed_over(service) > 0, f"{service}: no job was handed over"
    assert len(run.replacements) == DURABLE_REPLICAS * len(SERVICES)
    for r in run.replacements:
        where = f"{r.service}.{r.slot}"
        assert r.old.state == "shutdown", f"{where}: old task {r.old.state} ({r.old.error})"
        assert r.old.exit_code == 0, f"{where}: old task exited {r.old.exit_code}"
        assert r.signals == ["15"], f"{where}: signals {r.signals} (15 alone: no SIGKILL)"
        assert r.stop_seconds is not None and r.stop_seconds < grace_period(r.service)
        assert r.drain_line is not None and "abandoned 0" in r.drain_line, r.drain_line


def test_durable_stack_is_docker_stack_yml(tmp_path: Path) -> None:
    """The durable stack is docker-stack.yml's services with only the settings above changed."""
    file = tmp_path / "durable-stack.yml"
    write_durable_stack(file, "postgresql://postgres@127.0.0.1:5432/db")
    made = yaml.safe_load(file.read_text())
    for service in SERVICES:
        original = stack_file()["services"][service]
        one = made["services"][service]
        assert one["healthcheck"] == original["healthcheck"]
        assert one["deploy"]["update_config"] == original["deploy"]["update_config"]
        assert one["stop_grace_period"] == original["stop_grace_period"]
        assert float(one["environment"]["GRACEFUL_DRAIN_TIMEOUT"]) * 1000 < JOB_MS
        assert one["deploy"]["replicas"] == DURABLE_REPLICAS
