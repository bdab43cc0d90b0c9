"""`docker compose stop` in the middle of slow requests and jobs, with and without graceful_web.

With the library every request accepted before the stop gets its full 200, every job that got
its 202 is in the records (on a bind mount, read after the containers are gone), and the
containers exit 0 well inside stop_grace_period. The same scenario with GRACEFUL=0 (the same
services without the library) is run too and what it lost is printed.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.polling import wait_until

from .conftest import Compose, accepted_connections, grace_period

SERVICES = ("aiohttp", "asgi")
SLOW_MS = (1500, 2500, 3000)
# Jobs outlive the requests, as a receipt mailed after the order was answered does: a server
# that only waits for its requests (as aiohttp and uvicorn do on their own) loses the longer ones.
JOB_MS = (1000, 4000, 5000)
RESPONSE_TIMEOUT = 60.0


class SlowRequest:
    """GET /slow on a raw socket, so the test knows its client port before any answer."""

    def __init__(self, port: int, ms: int) -> None:
        self.ms = ms
        self.raw = b""
        self.error: str | None = None
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT)
        self.client_port = int(self._sock.getsockname()[1])
        request = f"GET /slow?ms={ms} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        self._sock.sendall(request.encode())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while chunk := self._sock.recv(65536):
                self.raw += chunk
        except OSError as exc:
            self.error = repr(exc)
        finally:
            self._sock.close()

    def wait(self) -> None:
        self._reader.join(RESPONSE_TIMEOUT)
        if self._reader.is_alive():
            self.error = f"no answer within {RESPONSE_TIMEOUT} s"
            self._sock.close()

    @property
    def status(self) -> int | None:
        head = self.raw.split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 and head[1].isdigit() else None

    @property
    def complete(self) -> bool:
        """A 200 with the whole body the contract promises."""
        body = self.raw.partition(b"\r\n\r\n")[2]
        return self.status == 200 and body == f"slept {self.ms} ms\n".encode()

    def outcome(self) -> str:
        if self.complete:
            return "200"
        return self.error or (f"status {self.status}" if self.status else "no response")


@dataclass
class ServiceRun:
    """What one service did in one scenario."""

    service: str
    requests: list[SlowRequest] = field(default_factory=list)
    accepted_jobs: list[str] = field(default_factory=list)
    refused_jobs: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    exit_code: int = -1
    stop_to_exit: float = 0.0
    drain_line: str | None = None

    @property
    def answered(self) -> int:
        return sum(request.complete for request in self.requests)

    @property
    def lost_jobs(self) -> list[str]:
        return [job for job in self.accepted_jobs if job not in self.records]


@dataclass
class Scenario:
    graceful: bool
    stop_seconds: float = 0.0
    runs: dict[str, ServiceRun] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "with graceful_web" if self.graceful else "without (GRACEFUL=0)"


def run_scenario(compose: Compose, jobs_dir: Path, graceful: bool) -> Scenario:
    """Start both services, put slow requests and jobs in flight, `compose stop` them."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    compose = compose.with_env(GRACEFUL="1" if graceful else "0", JOBS_DIR=str(jobs_dir))
    scenario = Scenario(graceful)
    compose.up(*SERVICES)
    try:
        for service in SERVICES:
            compose.wait_ready(service)
        tag = "g" if graceful else "plain"
        for service in SERVICES:
            run = scenario.runs[service] = ServiceRun(service)
            port = compose.ports[service]
            run.requests = [SlowRequest(port, ms) for ms in SLOW_MS]
            with httpx.Client(base_url=compose.url(service), timeout=10) as client:
                for n, ms in enumerate(JOB_MS):
                    job_id = f"{service}-{tag}-{n}"
                    answer = client.post("/jobs", params={"ms": ms, "id": job_id})
                    if answer.status_code == 202:
                        run.accepted_jobs.append(job_id)
                    else:
                        run.refused_jobs.append(job_id)
        # Readiness poll: the server has accept()ed every slow request's connection.
        for service, run in scenario.runs.items():
            port = compose.ports[service]
            wait_until(
                lambda port=port, run=run: (
                    {r.client_port for r in run.requests} <= accepted_connections(port)
                ),
                10,
                f"{service} to accept the slow requests",
            )
        stop_wall = time.time()
        scenario.stop_seconds = compose.stop(*SERVICES)
        for service, run in scenario.runs.items():
            for request in run.requests:
                request.wait()
            state = compose.state(service)
            run.exit_code = state.exit_code
            run.stop_to_exit = state.finished_at - stop_wall
            run.drain_line = compose.drain_line(service)
            records = jobs_dir / f"{service}-jobs.log"
            run.records = records.read_text().splitlines() if records.exists() else []
    finally:
        compose.remove(*SERVICES)
    return scenario


def report(scenarios: list[Scenario]) -> str:
    lines = [
        "",
        "docker compose stop, mid-flight: "
        f"{len(SLOW_MS)} slow requests ({', '.join(map(str, SLOW_MS))} ms) and "
        f"{len(JOB_MS)} jobs ({', '.join(map(str, JOB_MS))} ms) per service, "
        f"stop_grace_period {grace_period():.0f} s",
        f"{'run':<22} {'service':<8} {'requests':>8} {'jobs':>6} {'lost':>5} "
        f"{'stop->exit':>10} {'exit':>5}",
    ]
    for scenario in scenarios:
        for run in scenario.runs.values():
            lost = len(run.requests) - run.answered + len(run.lost_jobs)
            lines.append(
                f"{scenario.label:<22} {run.service:<8} "
                f"{run.answered:>4}/{len(run.requests):<3} "
                f"{len(run.accepted_jobs) - len(run.lost_jobs):>2}/{len(run.accepted_jobs):<3} "
                f"{lost:>5} {run.stop_to_exit:>8.2f} s {run.exit_code:>5}"
            )
        lines.append(f"{'':<22} compose stop took {scenario.stop_seconds:.2f} s")
    for scenario in scenarios:
        for run in scenario.runs.values():
            outcomes = ", ".join(request.outcome() for request in run.requests)
            lines.append(f"{scenario.label} {run.service}: requests [{outcomes}]")
            if run.lost_jobs:
                lines.append(f"{scenario.label} {run.service}: lost jobs {run.lost_jobs}")
            if run.drain_line:
                lines.append(f"{scenario.label} {run.service}: {run.drain_line}")
    return "\n".join(lines)


def test_compose_stop_drains_requests_and_jobs(compose: Compose, tmp_path: Path) -> None:
    with_library = run_scenario(compose, tmp_path / "graceful", graceful=True)
    without = run_scenario(compose, tmp_path / "plain", graceful=False)
    print(report([with_library, without]))

    grace = grace_period()
    assert with_library.stop_seconds < grace, "the stop ran into the grace period"
    for service, run in with_library.runs.items():
        assert run.stop_to_exit < grace, f"{service} ran into the grace period"
        assert run.refused_jobs == [], f"{service} refused jobs before the stop"
        assert len(run.accepted_jobs) == len(JOB_MS)
        assert run.answered == len(SLOW_MS), (
            f"{service}: requests accepted before the stop did not all get their full 200: "
            f"{[request.outcome() for request in run.requests]}"
        )
        assert run.lost_jobs == [], f"{service}: jobs answered 202 but never recorded"
        assert sorted(run.records) == sorted(run.accepted_jobs)
        assert run.exit_code == 0, f"{service} exited {run.exit_code}"
        assert run.drain_line is not None and "abandoned 0" in run.drain_line
    # Both scenarios really ran: the run without the library reached its stop as well.
    for service, run in without.runs.items():
        assert len(run.requests) == len(SLOW_MS), f"{service} without the library did not run"
