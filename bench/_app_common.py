"""What the bench apps share: the slow-work counters, the done-time record and logging.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for the whole machine on Linux), so
the bench runner can subtract them from its own readings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

#: The realistic handler (``GET /work``): 1 ms of awaited work (a query, a call to another
#: service) and a JSON body of some 550 bytes, serialised on every request.
WORK_MS = 1
WORK_BODY: dict[str, Any] = {
    "id": 81234,
    "customer": {"id": 5521, "name": "Ada Lovelace", "email": "ada@example.org"},
    "status": "paid",
    "currency": "EUR",
    "items": [
        {"sku": f"SKU-{n:05d}", "title": f"item {n}", "quantity": n % 3 + 1, "price": 9.5 + n}
        for n in range(5)
    ],
    "total": 72.5,
    "created_at": "2026-11-25T18:24:00Z",
}

#: How often the endless event feed (``GET /events``) sends an event; the first goes at once.
EVENT_INTERVAL_S = 5.0


def graceful_enabled() -> bool:
    return os.environ.get("GRACEFUL", "1") != "0"


def empty_middleware() -> bool:
    """EMPTY_MIDDLEWARE=1 (with GRACEFUL=0): the bare app behind a middleware that only passes
    each request on, to show what the server charges for any middleware at all."""
    return os.environ.get("EMPTY_MIDDLEWARE") == "1"


class InFlight:
    """Slow requests started and still running, counted the same way with and without the
    library, so both variants answer ``/stats`` alike."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self._all_started = asyncio.Event()

    async def sleep(self, ms: int, after: int) -> None:
        """One slow request: counted while it runs, it sleeps ``ms`` once ``after`` slow
        requests have started, so on a slow machine the first ones are still in flight when
        the last one starts (and the signal comes)."""
        self.started += 1
        self.running += 1
        try:
            if self.started >= after:
                self._all_started.set()
            else:
                await self._all_started.wait()
            await asyncio.sleep(ms / 1000)
        finally:
            self.running -= 1

    def as_json(self) -> str:
        # The server's own CPU time, read from outside around a load run: CPU per request is
        # steadier than throughput on a machine that also runs other work.
        cpu = time.process_time()
        return f'{{"started": {self.started}, "running": {self.running}, "cpu": {cpu:.6f}}}'


class DoneRecord:
    """Appends the monotonic time at which a piece of slow work finished, one line each."""

    def __init__(self) -> None:
        path = os.environ.get("DONE_FILE")
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def mark(self, what: str) -> None:
        if self._fd is not None:
            os.write(self._fd, f"{time.monotonic():.6f} {what}\n".encode())


class _MonotonicStamp(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.mono = time.monotonic()
        return True


def configure_logging() -> None:
    """The library's lines go to stderr stamped with the monotonic clock (the runner reads
    the time of "drain started" from them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MonotonicStamp())
    handler.setFormatter(logging.Formatter("%(mono).6f %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("graceful_web").setLevel(logging.INFO)
