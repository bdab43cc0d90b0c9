"""Rolling updates driven by swarm: docker-stack.yml under a bounded load through nginx.

`docker service update --force` on both services at once makes swarm replace every replica, one
at a time (parallelism 1, stop-first), sending SIGTERM to the old task and moving on once the new
one passes its readiness healthcheck. With graceful_web: no failed request, no accepted job lost
or recorded twice, every old task exits 0 on SIGTERM alone. The same run with GRACEFUL=0 shows
what the servers lose on their own. Then a release that never becomes ready (it listens on
127.0.0.2, where its healthcheck cannot reach it) is rolled back by swarm on its own while
clients see no failed request.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.polling import wait_until

from .conftest import (
    CLIENTS,
    PAUSE,
    REPLICAS,
    SERVICES,
    Events,
    Load,
    Stack,
    Task,
    docker,
    docker_time,
    drain_timeout,
    grace_period,
    seconds,
    stack_file,
)

UPDATE_TIMEOUT = 240.0
BAD_RELEASE = "HOST=127.0.0.2"


@dataclass
class Replacement:
    """One slot's old task stopped and new task started by the update."""

    service: str
    slot: int
    old: Task
    new: Task
    signals: list[str]
    sigterm_at: float | None
    exit_at: float | None
    die_exit_code: str | None
    healthy_at: float | None
    drain_line: str | None
    sigterm_logged: bool

    @property
    def stop_seconds(self) -> float | None:
        """SIGTERM -> exit of the old task."""
        if self.sigterm_at is None or self.exit_at is None:
            return None
        return self.exit_at - self.sigterm_at

    @property
    def gap_seconds(self) -> float | None:
        """SIGTERM to the old task -> the new task healthy: the slot out of rotation."""
        if self.sigterm_at is None or self.healthy_at is None:
            return None
        return self.healthy_at - self.sigterm_at

    @property
    def took_seconds(self) -> float | None:
        """The update reaching the slot (new task created) -> the new task healthy."""
        if self.healthy_at is None:
            return None
        return self.healthy_at - self.new.created


@dataclass
class Run:
    label: str
    loads: dict[str, Load]
    statuses: dict[str, dict[str, object]] = field(default_factory=dict)
    replacements: list[Replacement] = field(default_factory=list)
    records: dict[str, list[str]] = field(default_factory=dict)

    def lost(self, service: str) -> list[str]:
        return sorted(set(self.loads[service].accepted_jobs) - set(self.records[service]))

    def duplicates(self, service: str) -> list[str]:
        counts = collections.Counter(self.records[service])
        return sorted(job for job, n in counts.items() if n > 1)

    def update_seconds(self, service: str) -> float:
        status = self.statuses[service]
        return docker_time(str(status["CompletedAt"])) - docker_time(str(status["StartedAt"]))


def container_log(container: str) -> str:
    done = docker("logs", container, check=False)
    return done.stdout + done.stderr


def replacements(stack: Stack, events: Events, service: str, since: float) -> list[Replacement]:
    """Each slot's task stopped after ``since`` and the task that took its place."""
    tasks = stack.tasks(service)
    found = []
    for slot in range(1, stack.replicas + 1):
        olds = [
            t
            for t in tasks
            if t.slot == slot and t.created < since and t.desired == "shutdown"
            and t.timestamp >= since
        ]  # fmt: skip
        news = [t for t in tasks if t.slot == slot and t.desired == "running"]
        assert len(olds) == 1, f"{service} slot {slot}: tasks stopped by the update: {olds}"
        assert len(news) == 1, f"{service} slot {slot}: running tasks: {news}"
        old, new = olds[0], news[0]
        old_events = events.of_task(old.id)
        new_events = events.of_task(new.id)
        kills = [e for e in old_events if e.status == "kill"]
        dies = [e for e in old_events if e.status == "die"]
        healthy = [e for e in new_events if e.status == "health_status: healthy"]
        log = container_log(old.container) if old.container else ""
        drained = [line for line in log.splitlines() if "drain finished" in line]
        found.append(
            Replacement(
                service=service,
                slot=slot,
                old=old,
                new=new,
                signals=[e.attributes.get("signal", "?") for e in kills],
                sigterm_at=kills[0].at if kills else None,
                exit_at=dies[0].at if dies else None,
                die_exit_code=dies[0].attributes.get("exitCode") if dies else None,
                healthy_at=healthy[0].at if healthy else None,
                drain_line=drained[-1].split("graceful_web: ", 1)[-1] if drained else None,
                sigterm_logged="drain started (SIGTERM)" in log,
            )
        )
    return found


@dataclass
class Traffic:
    """The load on both services, and the docker events of the stack meanwhile."""

    stack: Stack
    tag: str
    loads: dict[str, Load] = field(default_factory=dict)
    events: Events | None = None

    def __enter__(self) -> Traffic:
        self.events = Events(self.stack.name)
        self.events.start()
        self.loads = {
            s: Load(base_url=self.stack.nginx_url(s), name=f"{self.tag}-{s}") for s in SERVICES
        }
        for load in self.loads.values():
            load.start()
        for service, load in self.loads.items():
            ports = [self.stack.replica_port(service, slot) for slot in range(1, REPLICAS + 1)]
            wait_until(
                lambda load=load, ports=ports: all(load.served(p) > 0 for p in ports),
                60,
                f"nginx to send load to every {service} replica",
            )
        return self

    def served_again(self) -> None:
        """Every replica (on its port, now a new task) answers load through nginx again."""
        for service, load in self.loads.items():
            for slot in range(1, REPLICAS + 1):
                port = self.stack.replica_port(service, slot)
                seen = load.served(port)
                wait_until(
                    lambda load=load, port=port, seen=seen: load.served(port) > seen,
                    60,
                    f"nginx to send load to {service} replica {slot} again",
                )

    def __exit__(self, *exc: object) -> None:
        try:
            for load in self.loads.values():
                load.stop()
        finally:
            if self.events is not None:
                self.events.stop()


def settle_records(stack: Stack, loads: dict[str, Load]) -> dict[str, list[str]]:
    """The job records, once every accepted job had its time to finish (the longest is 3 s)."""
    # What is still missing after that is reported and asserted on by the caller.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: all(
                set(load.accepted_jobs) <= set(stack.records(service))
                for service, load in loads.items()
            ),
            10,
            "every accepted job to be recorded",
        )
    return {service: stack.records(service) for service in SERVICES}


def forced_update(stack: Stack, label: str, tag: str) -> Run:
    """`docker service update --force` of both services under load; what it cost."""
    with Traffic(stack, tag) as traffic:
        since = time.time()
        for service in SERVICES:
            stack.update(service, "--force")
        run = Run(label, traffic.loads)
        for service in SERVICES:
            run.statuses[service] = stack.wait_update(
                service, {"completed", "rollback_completed"}, UPDATE_TIMEOUT
            )
        traffic.served_again()
    assert traffic.events is not None
    for service in SERVICES:
        run.replacements += replacements(stack, traffic.events, service, since)
    run.records = settle_records(stack, run.loads)
    return run


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def report(run: Run) -> str:
    lines = [
        "",
        f"swarm rolling update ({run.label}): docker service update --force, "
        f"{REPLICAS} replicas each, {CLIENTS} clients per service pausing {PAUSE} s",
    ]
    for service, load in run.loads.items():
        total = load.count()
        span = load.finished - load.started
        lines += [
            f"  {service}: {total} requests in {span:.1f} s through nginx: "
            f"{load.sent['fast']} fast, {load.sent['slow']} slow, {load.sent['job']} jobs; "
            f"failed {len(load.failures)}, retried by nginx {load.retried}",
            f"    jobs accepted {len(load.accepted_jobs)}, recorded "
            f"{len(run.records[service])}, lost {len(run.lost(service))}, recorded twice "
            f"{len(run.duplicates(service))}; update {run.statuses[service].get('State')} "
            f"in {run.update_seconds(service):.1f} s",
        ]
        for failure in load.failures[:10]:
            lines.append(f"    failure: {failure}")
    for r in run.replacements:
        lines.append(
            f"  {r.service}.{r.slot}: task {r.old.state}, exit {r.old.exit_code}, "
            f"signals {','.join(r.signals) or '-'}; SIGTERM->exit {fmt(r.stop_seconds)}, "
            f"SIGTERM->new task healthy {fmt(r.gap_seconds)}, "
            f"slot reached->healthy {fmt(r.took_seconds)}"
            + (f"; {r.drain_line}" if r.drain_line else "")
        )
    return "\n".join(lines)


def assert_replaced_by_sigterm(run: Run) -> None:
    assert len(run.replacements) == REPLICAS * len(SERVICES)
    for r in run.replacements:
        where = f"{r.service}.{r.slot}"
        assert r.old.state == "shutdown", f"{where}: old task {r.old.state} ({r.old.error})"
        assert r.old.exit_code == 0, f"{where}: old task exited {r.old.exit_code}"
        assert r.die_exit_code == "0", f"{where}: container died with {r.die_exit_code}"
        assert r.signals == ["15"], f"{where}: signals {r.signals} (15 alone: no SIGKILL)"
        assert r.stop_seconds is not None and r.stop_seconds < grace_period(r.service)
        assert r.new.state == "running" and r.healthy_at is not None, f"{where}: new task"


def test_the_stack_gives_the_drain_its_time() -> None:
    """stop_grace_period above the drain deadline; the update health-gated, with a rollback."""
    for service in SERVICES:
        spec = stack_file()["services"][service]
        assert grace_period(service) > drain_timeout(service)
        assert spec["deploy"]["replicas"] == REPLICAS
        update = spec["deploy"]["update_config"]
        assert update["parallelism"] == 1 and update["order"] == "stop-first"
        assert update["failure_action"] == "rollback" and seconds(update["delay"]) > 0
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])


@pytest.fixture(scope="module")
def graceful_stack(stacks: Callable[[bool], Stack]) -> Iterator[Stack]:
    stack = stacks(True)
    try:
        yield stack
    finally:
        stack.remove()


def test_forced_update_without_library(stacks: Callable[[bool], Stack]) -> None:
    """The contrast: the same update with GRACEFUL=0. Both servers finish the requests in
    flight and exit 0, so swarm sees nothing wrong; the jobs in flight are lost."""
    stack = stacks(False)
    try:
        run = forced_update(stack, "without graceful_web, GRACEFUL=0", "off")
    finally:
        stack.remove()
    print(report(run))
    for service in SERVICES:
        assert run.statuses[service]["State"] == "completed"
        assert len(run.loads[service].accepted_jobs) > 0
    assert_replaced_by_sigterm(run)
    assert sum(len(run.lost(service)) for service in SERVICES) > 0, (
        "without the library no job was lost: the load no longer has jobs in flight at the stops"
    )


def test_forced_update_with_library(graceful_stack: Stack) -> None:
    run = forced_update(graceful_stack, "with graceful_web", "on")
    print(report(run))
    for service, load in run.loads.items():
        assert run.statuses[service]["State"] == "completed", run.statuses[service]
        assert not load.hit_bound, "the load hit its bound before the update was over"
        assert load.count() >= 100, f"only {load.count()} {service} requests: not a load"
        assert load.failures == [], f"{len(load.failures)} {service} requests failed"
        assert len(load.accepted_jobs) > 0
        assert run.lost(service) == [], f"{service}: accepted jobs never recorded"
        assert run.duplicates(service) == [], f"{service}: jobs recorded twice"
    assert_replaced_by_sigterm(run)
    for r in run.replacements:
        assert r.sigterm_logged, f"{r.service}.{r.slot}: no drain started on SIGTERM"
        assert r.drain_line is not None and "abandoned 0" in r.drain_line, r.drain_line


def test_release_never_ready_is_rolled_back(graceful_stack: Stack) -> None:
    """A release whose healthcheck never passes: swarm stops it and rolls the service back on
    its own (failure_action: rollback), while the other replicas serve every request."""
    stack = graceful_stack
    stack.wait_converged()
    with Traffic(stack, "rb") as traffic:
        since = time.time()
        for service in SERVICES:
            stack.update(service, "--env-add", BAD_RELEASE)
        statuses = {
            service: stack.wait_update(service, {"rollback_completed"}, UPDATE_TIMEOUT)
            for service in SERVICES
        }
        stack.wait_converged()
        traffic.served_again()
    assert traffic.events is not None
    records = settle_records(stack, traffic.loads)

    lines = [
        "",
        "swarm rollback of a release that never becomes ready "
        f"(docker service update --env-add {BAD_RELEASE}):",
    ]
    bad_tasks: dict[str, list[Task]] = {}
    for service, load in traffic.loads.items():
        tasks = stack.tasks(service)
        bad_tasks[service] = [t for t in tasks if t.created >= since and BAD_RELEASE in t.env]
        status = statuses[service]
        took = docker_time(str(status["CompletedAt"])) - docker_time(str(status["StartedAt"]))
        lost = sorted(set(load.accepted_jobs) - set(records[service]))
        twice = [j for j, n in collections.Counter(records[service]).items() if n > 1]
        lines.append(
            f"  {service}: {status['State']} ({status.get('Message')}) {took:.1f} s after the "
            f"update began; {load.count()} requests, failed {len(load.failures)}, retried by "
            f"nginx {load.retried}; jobs accepted {len(load.accepted_jobs)}, lost {len(lost)}, "
            f"recorded twice {len(twice)}"
        )
        for task in bad_tasks[service]:
            seen = [e.status for e in traffic.events.of_task(task.id)]
            lines.append(
                f"    bad task {service}.{task.slot}: {task.state} ({task.message}), exit "
                f"{task.exit_code}; events {', '.join(seen) or 'none (never started)'}"
            )
        for failure in load.failures[:10]:
            lines.append(f"    failure: {failure}")
    print("\n".join(lines))

    for service, load in traffic.loads.items():
        assert statuses[service]["State"] == "rollback_completed"
        assert load.failures == [], f"{len(load.failures)} {service} requests failed"
        assert len(load.accepted_jobs) > 0
        assert set(load.accepted_jobs) <= set(records[service]), f"{service}: jobs lost"
        assert len(records[service]) == len(set(records[service])), "jobs recorded twice"
        assert bad_tasks[service], f"no task of the bad {service} release was started"
        for task in bad_tasks[service]:
            statuses_seen = [e.status for e in traffic.events.of_task(task.id)]
            assert "health_status: healthy" not in statuses_seen, "the bad release got ready"
            assert task.desired == "shutdown"
        running = stack.running(service)
        assert len(running) == REPLICAS
        assert all(BAD_RELEASE not in t.env for t in running), "still on the bad release"
