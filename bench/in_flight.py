"""Figure 5: 10 000 slow requests in flight when the signal comes.

A client process (bench/many_client.py) holds N requests in flight, one connection each; once
the server has started all of them it gets SIGTERM. Bare aiohttp is the reference: ``run_app``
also waits for handlers on its own, up to its ``shutdown_timeout``. Read from outside: how
many requests were in flight at the signal and how many were answered 200, signal -> exit,
and the drain's bookkeeping: signal -> "drain started" logged, last request done -> exit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

from ._harness import PY, ROOT, Server, Spread, http_get, raise_open_files, running, wait_until

REQUESTS = 10_000
SLOW_MS = 4000  # long enough for every request to be in flight before the first one ends
DRAIN_TIMEOUT = 30.0
RAMP_TIMEOUT = 60.0


@dataclass
class Run:
    in_flight_at_signal: int
    answered_ok: int
    other_outcomes: dict[str, int]
    exit_status: int
    signal_to_exit_s: float
    last_done_to_exit_ms: float
    signal_to_drain_started_ms: float | None
    drain_ms: float | None


def _stats(server: Server) -> dict[str, float]:
    return dict(json.loads(http_get(server.port, "/stats", timeout=10)[1]))


def run_once(server_name: str, graceful: bool, n: int = REQUESTS, ms: int = SLOW_MS) -> Run:
    env = {"GRACEFUL_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)}
    with running(server_name, graceful, env) as server:
        client = subprocess.Popen(
            [PY, "-m", "bench.many_client", str(server.port), str(n), str(ms)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            wait_until(lambda: _stats(server)["started"] >= n, RAMP_TIMEOUT, f"{n} requests")
            in_flight = int(_stats(server)["running"])
            signalled = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)
            status = server.wait_exit(DRAIN_TIMEOUT + 15)
            out, _ = client.communicate(timeout=60)
        finally:
            if client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait(timeout=10)
        exited = server.exited_at
        assert exited is not None
        outcome = json.loads(out.strip().splitlines()[-1])
        finished = [stamp for stamp, what in server.done_times() if what == "request"]
        started_at = server.log_time("drain started")
        drain = re.search(r"drain finished in (\d+) ms", server.log())
        return Run(
            in_flight_at_signal=in_flight,
            answered_ok=int(outcome["ok"]),
            other_outcomes=dict(outcome["other"]),
            exit_status=status,
            signal_to_exit_s=exited - signalled,
            last_done_to_exit_ms=(exited - max(finished)) * 1000 if finished else float("nan"),
            signal_to_drain_started_ms=(
                (started_at - signalled) * 1000 if started_at is not None else None
            ),
            drain_ms=float(drain.group(1)) if drain else None,
        )


@dataclass
class InFlightFigures:
    requests: int
    runs: dict[tuple[str, bool], list[Run]] = field(default_factory=dict)

    def spread(self, server: str, graceful: bool, what: str) -> Spread | None:
        values = [getattr(run, what) for run in self.runs.get((server, graceful), [])]
        values = [value for value in values if value is not None]
        return Spread.of(values) if values else None


def measure(
    pairs: int, servers: tuple[str, ...] = ("aiohttp",), n: int = REQUESTS
) -> InFlightFigures:
    raise_open_files(n + 1000)
    figures = InFlightFigures(n)
    for server in servers:
        for _ in range(pairs):
            for graceful in (False, True):
                figures.runs.setdefault((server, graceful), []).append(
                    run_once(server, graceful, n)
                )
    return figures


def show(figures: InFlightFigures) -> str:
    lines = []
    for (server, graceful), runs in figures.runs.items():
        label = f"{server} {'+ graceful_web' if graceful else 'bare'}"
        for run in runs:
            lines.append(f"{label}: {run}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from ._harness import pin_cpus

    pin_cpus()
    print(show(measure(pairs=int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
