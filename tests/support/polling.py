"""Polling a condition until it holds or a timeout passes: the one way the tests wait."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Call ``predicate`` every ``interval`` s until it is truthy (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is truthy; fail with ``what`` after ``timeout``."""
    if not poll(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
