"""A worker of a multi-process hypercorn: it never sees the stop signal its parent gets.

hypercorn's parent, on SIGTERM (or SIGINT, or SIGHUP for a reload), sets an event shared with
its workers, which ignore SIGINT and poll the event; once one worker has exited, the parent
sends the others SIGTERM. So the drain starts when the event is set, the listeners close at
once (what is queued on the socket the parent holds goes to the next workers), and a worker
still draining outlives the parent's SIGTERM, bounded by its deadline and its watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import anyio

from . import _listeners, _quirks
from ._stop import StopSequence

logger = logging.getLogger("graceful_web")

#: How often a worker looks at its parent's stop event (hypercorn itself: every 100 ms).
SHUTDOWN_EVENT_POLL = 0.05
#: A worker started this long after its parent replaces one (the first ones start with the
#: parent, within a second).
REPLACEMENT_AFTER = 3.0


async def watch_parent(sequence: StopSequence) -> None:
    """In a hypercorn worker, start the drain when the parent sets its stop event."""
    stop_event = _quirks.hypercorn_parent_stop_event()
    if stop_event is None:
        return
    drain_timeout = sequence.config.drain_timeout
    _warn_if_graceful_timeout_is_short(drain_timeout)
    if _seconds_after_parent() > REPLACEMENT_AFTER:
        # The parent sets the same stop event for SIGHUP as for SIGTERM, and starts new
        # workers only once every old one has exited: a reload paused the whole service.
        logger.warning(
            "this hypercorn worker replaces one stopped by a reload: hypercorn stops every "
            "worker and starts new ones only once all have exited, so new connections "
            "waited in the listen backlog for the old workers' drain (up to %g s) and this "
            "worker's startup. For reloads that overlap, use uvicorn --workers, gunicorn or "
            "granian, which replace workers one at a time",
            drain_timeout,
        )
    while not stop_event.is_set():
        await anyio.sleep(SHUTDOWN_EVENT_POLL)
    # hypercorn looks at the event every 100 ms, closes every idle connection, and only then
    # its listeners: a client reconnecting meanwhile (the drain answers with Connection:
    # close) reaches this worker only to be dropped. Closed now, the socket the parent
    # holds keeps such connections for the new workers.
    on_asyncio = asyncio.events._get_running_loop() is not None  # None under trio
    listeners = _quirks.hypercorn_listeners(asyncio.get_running_loop()) if on_asyncio else []
    if listeners:
        await _listeners.close_listeners(listeners, accept_queued=False)
    if on_asyncio:
        go_away_h2(asyncio.get_running_loop())
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, _drain_goes_on)
    if not sequence.drain.draining:
        sequence.begin("SIGTERM")


def go_away_h2(loop: asyncio.AbstractEventLoop) -> None:
    """As hypercorn is told to stop: each of its HTTP/2 connections gets GOAWAY naming the last
    stream it will answer, answers those in full and refuses later ones (``_quirks``)."""
    protocols = _quirks.hypercorn_h2_protocols(loop)
    unknown = sum(not _quirks.hypercorn_h2_go_away(protocol) for protocol in protocols)
    if unknown and not _unknown_h2_said:
        _unknown_h2_said.append(True)
        logger.warning(
            "hypercorn %s: %d HTTP/2 connections were not of the shape graceful_web knows; "
            "hypercorn closes them as it does on its own, with no GOAWAY until their streams "
            "are done",
            _quirks.version_of("hypercorn"),
            unknown,
        )


_unknown_h2_said: list[bool] = []


def _drain_goes_on(signum: int, frame: Any) -> None:
    logger.info(
        "hypercorn's parent sent SIGTERM to this worker, still draining: the drain goes on to "
        "its end or its deadline"
    )


def _seconds_after_parent() -> float:
    """How long after its parent this process started (0 where /proc cannot tell)."""
    try:
        own = _start_ticks("self")
        parent = _start_ticks(str(os.getppid()))
    except (OSError, ValueError, IndexError):
        return 0.0
    return (own - parent) / os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name, in parentheses, may hold spaces: count the fields after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _warn_if_graceful_timeout_is_short(drain_timeout: float) -> None:
    graceful_timeout = _quirks.hypercorn_graceful_timeout()
    if graceful_timeout is not None and graceful_timeout < drain_timeout:
        logger.warning(
            "hypercorn's graceful_timeout (%g s) is shorter than drain_timeout (%g s): "
            "hypercorn cancels requests still running after it. Start hypercorn with "
            "--graceful-timeout %g",
            graceful_timeout,
            drain_timeout,
            drain_timeout,
        )


_warned_h2_under_trio = False


def warn_h2_under_trio(scope: Any) -> None:
    """Once, at the first HTTP/2 request under trio, where the drain's GOAWAY is not sent."""
    global _warned_h2_under_trio
    if _warned_h2_under_trio or scope.get("http_version") != "2":
        return
    _warned_h2_under_trio = True
    logger.warning(
        "HTTP/2 under trio: at a stop its connections get hypercorn's own GOAWAY only once "
        "every stream is done, and streams opened meanwhile are reset with NO_ERROR (a client "
        "cannot tell it may retry them). Run hypercorn on asyncio or uvloop (-k asyncio, "
        "-k uvloop) for the drain's GOAWAY at the signal"
    )
