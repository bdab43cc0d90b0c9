"""The last-resort exit: if the process is still here some time after the deadline (work that
ignores cancellation, a blocked event loop), end it, naming what held it.

The watchdog knows nothing of the drain: it is handed when to fire, with which status, and a
callable that names what is left.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import sys
from collections.abc import Callable

logger = logging.getLogger("graceful_web")


class Watchdog:
    """A thread that ends the process ``after`` seconds from ``arm``, unless disarmed first."""

    def __init__(self) -> None:
        self._disarmed: _thread.LockType | None = None  # released to disarm

    @property
    def armed(self) -> bool:
        return self._disarmed is not None

    def arm(self, after: float, *, code: int, late_by: float, left: Callable[[], str]) -> None:
        """Exit with ``code`` in ``after`` seconds, naming ``left()``; ``late_by`` is how long
        after the deadline that is, for the log line."""
        if self._disarmed is not None:
            return
        # A bare thread waiting on a lock: unlike threading.Timer, starting it does not wait
        # until the new thread runs, which would hold back the server's own stop when armed
        # from the signal handler.
        disarmed = _thread.allocate_lock()
        disarmed.acquire()
        _thread.start_new_thread(_exit_unless_disarmed, (disarmed, after, code, late_by, left))
        self._disarmed = disarmed

    def disarm(self) -> None:
        if self._disarmed is not None:
            self._disarmed.release()
            self._disarmed = None


def _exit_unless_disarmed(
    disarmed: _thread.LockType, after: float, code: int, late_by: float, left: Callable[[], str]
) -> None:
    if disarmed.acquire(timeout=after):
        return
    try:
        logger.critical(
            "hard exit with status %d: protected work did not stop %.2f s after the deadline (%s)",
            code,
            late_by,
            left() or "none left",
        )
    finally:
        exit_now(code)


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, after flushing what logging and stdio hold."""
    for handler in logging.getLogger().handlers + logger.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
