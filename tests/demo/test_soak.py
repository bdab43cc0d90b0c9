"""Soak: start/stop cycles of each demo service under concurrent load with jobs.

Each cycle starts the service on a free port, runs CLIENTS concurrent clients sending slow and
fast requests and posting jobs, sends SIGTERM while work is in flight, lets the clients run
until their connections are refused, and checks: exit status 0, every request the server
started was answered, every job answered 202 was recorded exactly once, the process and its
group are gone and the port is free. Across all cycles the test process ends with the file
descriptors, threads and child processes it started with.

SOAK_CYCLES sets the number of cycles per service (10 by default; ``make soak`` runs 200).
"""

from __future__ import annotations

import collections
import gc
import os
import random
import signal
import socket
import threading
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.servers import Server, StartServer

CYCLES = int(os.environ.get("SOAK_CYCLES", "10"))
CLIENTS = 6
ANSWERED_BEFORE_THE_SIGNAL = 20

# web.run_app, and GracefulLifespan(Starlette) on uvicorn.run, each on asyncio and on uvloop.
SERVICES: dict[str, tuple[str, dict[str, str]]] = {
    "aiohttp-asyncio": ("tests.apps.aiohttp_app", {"LOOP": "asyncio"}),
    "aiohttp-uvloop": ("tests.apps.aiohttp_app", {"LOOP": "uvloop"}),
    "uvicorn-asyncio": ("tests.apps.asgi_app", {"LOOP": "asyncio"}),
    "uvicorn-uvloop-httptools": ("tests.apps.asgi_app", {"LOOP": "uvloop", "HTTP": "httptools"}),
}


@dataclass
class Outcome:
    request_id: str
    kind: str  # "slow", "fast" or "job"
    status: int | None = None
    error: str | None = None


@dataclass
class Totals:
    cycles: int = 0
    sent: int = 0
    answered: int = 0
    refused_at_connect: int = 0
    dropped_before_read: int = 0  # the connection closed before the server read the request
    dropped_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    jobs_accepted: int = 0
    jobs_recorded: int = 0
    jobs_refused_503: int = 0
    lost_requests: list[str] = field(default_factory=list)
    lost_jobs: list[str] = field(default_factory=list)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_pids() -> set[int]:
    me = str(os.getpid())
    children: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        if fields[1] == me and fields[0] != "Z":
            children.add(int(entry))
    return children


def port_is_free(port: int) -> bool:
    """No socket listens on it any more: a server could bind it again, as servers do (the
    closed connections may still wait out TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def process_group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class Client(threading.Thread):
    """Sends requests one after the other until the server refuses the connection."""

    def __init__(self, server: Server, name: str, seed: int) -> None:
        super().__init__(daemon=True, name=name)
        self.server = server
        self.random = random.Random(seed)
        self.outcomes: list[Outcome] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            for n in range(10_000):
                request_id = f"{self.name}-{n}"
                kind = self.random.choice(["slow", "fast", "job"])
                outcome = Outcome(request_id, kind)
                self.outcomes.append(outcome)
                headers = {"X-Request-Id": request_id}
                try:
                    if kind == "job":
                        ms = self.random.randint(20, 500)
                        response = client.post(f"/jobs?ms={ms}&id={request_id}", headers=headers)
                    elif kind == "slow":
                        ms = self.random.randint(20, 300)
                        response = client.get(f"/slow?ms={ms}", headers=headers)
                    else:
                        response = client.get("/fast", headers=headers)
                except httpx.ConnectError as exc:
                    outcome.error = f"refused: {exc!r}"
                    return  # the listener is closed: this client is done
                except httpx.HTTPError as exc:
                    outcome.error = repr(exc)
                    continue
                outcome.status = response.status_code

    def answered(self) -> int:
        return sum(outcome.status is not None for outcome in self.outcomes)


def one_cycle(
    start_server: StartServer, service: tuple[str, dict[str, str]], cycle: int, totals: Totals
) -> None:
    module, loop_env = service
    server = start_server(
        module,
        env={
            "RECORD_REQUESTS": "1",
            "GRACEFUL_DRAIN_TIMEOUT": "10",
            "LOG_LEVEL": "WARNING",
            **loop_env,
        },
        name=f"soak-{cycle}",
    )
    clients = [Client(server, f"c{cycle}-{n}", seed=cycle * 100 + n) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    wait_until(
        lambda: sum(client.answered() for client in clients) >= ANSWERED_BEFORE_THE_SIGNAL,
        20,
        f"{ANSWERED_BEFORE_THE_SIGNAL} answers in cycle {cycle}",
    )
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)
    for client in clients:
        client.join(30)
        assert not client.is_alive(), f"client {client.name} still running"
    status = server.wait_exit(timeout=30)
    assert status == 0, f"cycle {cycle}: exit status {status}\n{server.log()}"
    assert process_group_is_gone(server.pid), f"cycle {cycle}: processes left in its group"
    assert port_is_free(server.port), f"cycle {cycle}: port {server.port} still held"

    started = {
        line.removeprefix("start:") for line in server.events() if line.startswith("start:")
    }
    recorded = collections.Counter(server.jobs())
    outcomes = [outcome for client in clients for outcome in client.outcomes]
    accepted_jobs = [o.request_id for o in outcomes if o.kind == "job" and o.status == 202]
    for outcome in outcomes:
        totals.sent += 1
        if outcome.status is not None:
            totals.answered += 1
            refused_job = outcome.kind == "job" and outcome.status == 503
            totals.jobs_refused_503 += refused_job
            assert outcome.status in (200, 202) or refused_job, (cycle, outcome)
        elif outcome.request_id in started:
            totals.lost_requests.append(f"{outcome.request_id}: {outcome.error}")
        elif outcome.error is not None and outcome.error.startswith("refused"):
            totals.refused_at_connect += 1
        else:
            totals.dropped_before_read += 1
            totals.dropped_errors[(outcome.error or "").split("(", 1)[0]] += 1
    totals.jobs_accepted += len(accepted_jobs)
    totals.jobs_recorded += sum(recorded[job] for job in accepted_jobs)
    totals.lost_jobs += [job for job in accepted_jobs if recorded[job] != 1]
    # Nothing recorded that was not accepted (a job whose 202 was lost would be a lost request).
    assert set(recorded) <= set(accepted_jobs) | {
        o.request_id for o in outcomes if o.request_id in started
    }
    totals.cycles += 1


@pytest.mark.timeout(120 + CYCLES * 15)
@pytest.mark.parametrize("service", list(SERVICES))
def test_start_stop_cycles_under_load_lose_nothing_and_leak_nothing(
    start_server: StartServer, service: str
) -> None:
    gc.collect()
    fds_before, threads_before, children_before = (
        open_fds(),
        threading.active_count(),
        child_pids(),
    )
    totals = Totals()
    for cycle in range(CYCLES):
        one_cycle(start_server, SERVICES[service], cycle, totals)
    gc.collect()
    fds_after, threads_after, children_after = (
        open_fds(),
        threading.active_count(),
        child_pids(),
    )
    print(
        f"\nsoak {service}: {totals.cycles} cycles, {totals.sent} requests sent, "
        f"{totals.answered} answered, {totals.refused_at_connect} refused at connect after "
        f"the signal, {totals.dropped_before_read} dropped before the server read them "
        f"{dict(totals.dropped_errors)}; "
        f"jobs {totals.jobs_accepted} accepted, {totals.jobs_recorded} recorded, "
        f"{totals.jobs_refused_503} refused with 503; lost {len(totals.lost_requests)} "
        f"requests and {len(totals.lost_jobs)} jobs; fds {fds_before} -> {fds_after}, "
        f"threads {threads_before} -> {threads_after}, child processes "
        f"{len(children_before)} -> {len(children_after)}"
    )
    assert totals.lost_requests == []
    assert totals.lost_jobs == []
    assert totals.jobs_recorded == totals.jobs_accepted > 0
    assert totals.answered > CYCLES * ANSWERED_BEFORE_THE_SIGNAL
    assert fds_after == fds_before
    assert threads_after == threads_before
    assert children_after == children_before
