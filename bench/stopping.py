"""Figures 2 and 3: how fast a server stops, measured from outside the process.

2. Signal -> new TCP connects refused. One slow request is in flight, so the process is still
   running while it drains and the figure is the listener closing, not the process dying. The
   runner notes the monotonic time just before ``os.kill`` and then tries ``connect()`` in a
   tight loop until one is refused.
3. Last protected work done -> process exit. The app writes the monotonic time at which its
   slow request (or protected job) finished; the runner notes the moment the process ended,
   woken by its pidfd.
   CLOCK_MONOTONIC is one clock for the whole machine, so the two readings subtract.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ._harness import HOST, Server, Spread, http_get, http_post, running, wait_until

SLOW_MS = 800  # the request in flight while new connects are tried
WORK_MS = 400  # the last piece of work, signalled while it runs
REFUSED_TIMEOUT = 5.0
#: One connect every 0.2 ms for the first 20 ms after the signal, then one a millisecond. Back
#: to back (some 20 000 a second) the probe itself slows a server down: every connect it
#: accepts before closing costs it an accept, a transport and a task to tear down, so a server
#: that does a little more before closing is pushed further back (hypercorn: 4 ms instead of
#: under 1). The pace is still far above any real client's, and the resolution 0.2 ms.
FAST_PACE_S = 0.0002
FAST_FOR_S = 0.02
SLOW_PACE_S = 0.001
EXIT_TIMEOUT = 30.0


def _connect_refused_at(port: int, limit: float) -> float | None:
    """Try new connections back to back; the monotonic time of the first refused one."""
    linger_now = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT pile-up
    started = time.monotonic()
    next_at = started
    while time.monotonic() < limit:
        while time.monotonic() < next_at:
            pass  # a short spin keeps the pace; sleep() would overshoot it
        pace = FAST_PACE_S if next_at - started < FAST_FOR_S else SLOW_PACE_S
        next_at += pace
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_now)
        sock.settimeout(0.2)
        try:
            sock.connect((HOST, port))
        except ConnectionRefusedError:
            return time.monotonic()
        except OSError:
            pass  # a full backlog times out: still not refused
        finally:
            sock.close()
    return None


def _running(server: Server) -> int:
    return int(json.loads(http_get(server.port, "/stats")[1])["running"])


def _request_in_background(server: Server, ms: int) -> threading.Thread:
    def get() -> None:
        with contextlib.suppress(OSError):  # what the client saw is not this figure
            http_get(server.port, f"/slow?ms={ms}", timeout=EXIT_TIMEOUT)

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    wait_until(lambda: _running(server) >= 1, 10, "the slow request to be in flight")
    return thread


def _exit_status(server: Server) -> int:
    try:
        return server.wait_exit(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{server.label} still running {EXIT_TIMEOUT} s after SIGTERM") from None


def refused_ms(server_name: str, graceful: bool) -> float:
    with running(server_name, graceful) as server:
        client = _request_in_background(server, SLOW_MS)
        signalled = time.monotonic()
        os.kill(server.proc.pid, signal.SIGTERM)
        refused = _connect_refused_at(server.port, signalled + REFUSED_TIMEOUT)
        _exit_status(server)
        client.join(timeout=5)
        if refused is None:
            raise RuntimeError(f"{server.label}: no connect refused within {REFUSED_TIMEOUT} s")
        return (refused - signalled) * 1000


def exit_after_work_ms(server_name: str, graceful: bool, work: str) -> float:
    """From the moment the last request or job finished (its own clock) to the exit."""
    with running(server_name, graceful) as server:
        client = None
        if work == "request":
            client = _request_in_background(server, WORK_MS)
        else:
            status = http_post(server.port, f"/jobs?ms={WORK_MS}")
            if status != 202:
                raise RuntimeError(f"{server.label} answered POST /jobs with {status}")
        os.kill(server.proc.pid, signal.SIGTERM)
        code = _exit_status(server)
        exited = server.exited_at
        assert exited is not None
        if client is not None:
            client.join(timeout=5)
        finished = [stamp for stamp, what in server.done_times() if what == work]
        if not finished:
            raise RuntimeError(f"{server.label}: the {work} never finished (exit {code})")
        return (exited - finished[-1]) * 1000


@dataclass
class StopFigures:
    refused: dict[tuple[str, bool], list[float]] = field(default_factory=dict)
    exit_after: dict[tuple[str, bool, str], list[float]] = field(default_factory=dict)

    def refused_spread(self, server: str, graceful: bool) -> Spread | None:
        values = self.refused.get((server, graceful))
        return Spread.of(values) if values else None

    def exit_spread(self, server: str, graceful: bool, work: str) -> Spread | None:
        values = self.exit_after.get((server, graceful, work))
        return Spread.of(values) if values else None


#: Exit after the last work: the bare servers only for a request (a bare background task is
#: cancelled at the signal, which is what the library is for).
EXIT_CASES = ((False, "request"), (True, "request"), (True, "job"))


def measure(servers: list[str], pairs: int) -> StopFigures:
    figures = StopFigures()
    for server in servers:
        for _ in range(pairs):
            for graceful in (False, True):
                figures.refused.setdefault((server, graceful), []).append(
                    refused_ms(server, graceful)
                )
            for graceful, work in EXIT_CASES:
                figures.exit_after.setdefault((server, graceful, work), []).append(
                    exit_after_work_ms(server, graceful, work)
                )
    return figures


def show(figures: StopFigures, servers: list[str]) -> str:
    lines = []
    for server in servers:
        for graceful in (False, True):
            label = f"{server} {'+ graceful_web' if graceful else 'bare'}"
            refused = figures.refused_spread(server, graceful)
            lines.append(f"{label:26s} signal -> refused {refused.show(2) if refused else '-'} ms")
        for graceful, work in EXIT_CASES:
            label = f"{server} {'+ graceful_web' if graceful else 'bare'}"
            after = figures.exit_spread(server, graceful, work)
            lines.append(f"{label:26s} last {work} -> exit {after.show(1) if after else '-'} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from ._harness import pin_cpus

    pin_cpus()
    names = sys.argv[1:] or ["aiohttp"]
    print(show(measure(names, pairs=4), names))
