"""The worker processes of a server's parent, read from /proc: which are alive, which are gone.

A reload is over when every worker that was alive at the signal is gone and as many new ones
are alive; a test then waits for the new ones to answer requests as well.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.05


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state[0] != "Z"


def children(parent: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            state = process_state(int(entry))
            if state is not None and state[1] == parent and state[0] != "Z":
                found.add(int(entry))
    return found


def is_helper(pid: int) -> bool:
    """multiprocessing's resource tracker, which spawn-based servers start beside workers."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone before it could be read: it served nothing


class Workers(threading.Thread):
    """Watches ``parent``'s children every 50 ms. A worker once seen is followed by its pid
    even after its parent is gone, so orphans still count until they exit. ``gone`` holds when
    each was first seen gone, by ``clock`` (never earlier than it died)."""

    def __init__(self, parent: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(daemon=True, name=f"workers-of-{parent}")
        self.parent = parent
        self.clock = clock
        self.seen: set[int] = set()
        self.gone: dict[int, float] = {}  # pid → the clock's time it was first seen gone
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_SECONDS):
            self.look()

    def look(self) -> None:
        new = {pid for pid in children(self.parent) - self.seen if not is_helper(pid)}
        now = self.clock()
        with self.lock:
            self.seen |= new
            for pid in self.seen - self.gone.keys():
                if not alive(pid):
                    self.gone[pid] = now

    def alive(self) -> set[int]:
        with self.lock:
            return self.seen - self.gone.keys()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
