"""What a drain tells: the report, the work it abandoned, the exit status it calls for, and
its log lines (started, progress, abandoned, second signal, finished).

Every line goes to the ``graceful_web`` logger with its figures as ``graceful_*`` fields, so a
JSON formatter carries them as they are.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import anyio

logger = logging.getLogger("graceful_web")

WorkKind = Literal["request", "job"]

#: Exit status when the deadline passed and work had to be abandoned (EX_TEMPFAIL:
#: the orchestrator may retry; it is not 3 or 4, which gunicorn's arbiter treats as boot errors).
EXIT_ABANDONED = 75
#: Exit status of the last-resort hard exit: work that refused to stop even after being cancelled.
EXIT_HARD = 70


@dataclass(frozen=True)
class AbandonedWork:
    """A request or job still running at the deadline (or at a second signal)."""

    kind: WorkKind
    name: str
    age: float  # seconds since the work started


@dataclass(frozen=True)
class DrainReport:
    """What one drain did, from the stop signal to the end of waiting."""

    reason: str
    drained_requests: int
    drained_jobs: int
    failed_jobs: int
    refused_jobs: int
    abandoned: tuple[AbandonedWork, ...]
    duration: float  # seconds from the start of the drain to the end of waiting
    forced: bool
    #: Durable jobs still running at the deadline, cancelled with their records left for a
    #: successor: not lost, so they are no reason for a failing exit status.
    handed_over: tuple[AbandonedWork, ...] = ()
    #: Websockets the drain closed (``websocket_close_code``) and reconnectable streams whose
    #: body it ended, once their grace was over: ended politely, not abandoned.
    websockets_closed: int = 0
    streams_ended: int = 0
    #: Requests whose handler finished but whose response the server could not deliver (its
    #: connection closed under it): not counted as drained. Not the process's own loss (a
    #: client that hangs up does it too), so no reason for a failing exit status either.
    undelivered: tuple[AbandonedWork, ...] = ()

    @property
    def exit_code(self) -> int:
        """The process exit status this drain calls for: 0 when nothing was abandoned (work
        handed over to a successor is not lost)."""
        if self.forced:
            forced = forced_exit_code(self.reason)
            if forced is not None:
                return forced
        return EXIT_ABANDONED if self.abandoned else 0


def forced_exit_code(reason: str) -> int | None:
    """128 + the signal's number, as a shell reports a process ended by a signal, when a
    second signal named ``reason`` forced the exit; None when ``reason`` names no signal."""
    signum = getattr(signal.Signals, reason, None) if reason.startswith("SIG") else None
    return None if signum is None else 128 + int(signum)


#: Called with the abandoned work once the drain has given up on it.
AbandonedCallback = Callable[[tuple[AbandonedWork, ...]], "Awaitable[None] | None"]
#: Called with the reason (e.g. ``"SIGTERM"``) the moment the drain starts.
DrainStartedCallback = Callable[[str], "Awaitable[None] | None"]
#: Called with the ``DrainReport`` once the drain has finished.
DrainFinishedCallback = Callable[[DrainReport], "Awaitable[None] | None"]


# -- the log lines ------------------------------------------------------------------------


def log_started(reason: str, requests: int, jobs: int, deadline_in: float) -> None:
    logger.info(
        "drain started (%s): %d requests and %d jobs in flight, deadline in %.1f s",
        reason,
        requests,
        jobs,
        deadline_in,
        extra={
            "graceful_reason": reason,
            "graceful_requests": requests,
            "graceful_jobs": jobs,
            "graceful_deadline_s": deadline_in,
        },
    )


def log_progress(
    requests: int, jobs: int, oldest_kind: WorkKind, oldest_name: str, age: float, remaining: float
) -> None:
    logger.info(
        "draining: %d requests and %d jobs left, oldest %s %r (%.1f s), %.1f s to the deadline",
        requests,
        jobs,
        oldest_kind,
        oldest_name,
        age,
        remaining,
        extra={
            "graceful_requests": requests,
            "graceful_jobs": jobs,
            "graceful_oldest_kind": oldest_kind,
            "graceful_oldest_name": oldest_name,
            "graceful_oldest_age_s": round(age, 3),
            "graceful_remaining_s": round(remaining, 3),
        },
    )


def log_abandoned(work: AbandonedWork) -> None:
    _log_cut("abandoned %s %r after %.1f s", work, {})


def log_handed_over(work: AbandonedWork) -> None:
    _log_cut(
        "handed over %s %r after %.1f s: its record stays for the next process",
        work,
        {"graceful_handed_over": True},
    )


def _log_cut(message: str, work: AbandonedWork, extra: dict[str, object]) -> None:
    """Work cut at the deadline: abandoned, or (a durable job) handed over."""
    fields = {"graceful_kind": work.kind, "graceful_name": work.name, "graceful_age_s": work.age}
    logger.warning(message, work.kind, work.name, work.age, extra={**fields, **extra})


def log_undelivered(work: AbandonedWork) -> None:
    _log_cut(
        "undelivered %s %r after %.1f s: its connection closed under the response",
        work,
        {"graceful_undelivered": True},
    )


def log_forced(reason: str, in_flight: int) -> None:
    logger.warning(
        "second signal (%s): cancelling %d pieces of protected work now", reason, in_flight
    )


def log_finished(report: DrainReport) -> None:
    log = logger.warning if report.abandoned else logger.info
    log(
        "drain finished in %.0f ms: drained %d requests and %d jobs (%d failed), "
        "%srefused %d jobs, %s%sabandoned %d",
        report.duration * 1000,
        report.drained_requests,
        report.drained_jobs,
        report.failed_jobs,
        _ended_politely(report),
        report.refused_jobs,
        f"handed over {len(report.handed_over)}, " if report.handed_over else "",
        f"undelivered {len(report.undelivered)}, " if report.undelivered else "",
        len(report.abandoned),
        extra={
            "graceful_duration_ms": round(report.duration * 1000, 1),
            "graceful_drained_requests": report.drained_requests,
            "graceful_drained_jobs": report.drained_jobs,
            "graceful_failed_jobs": report.failed_jobs,
            "graceful_refused_jobs": report.refused_jobs,
            "graceful_abandoned": len(report.abandoned),
            "graceful_handed_over": len(report.handed_over),
            "graceful_websockets_closed": report.websockets_closed,
            "graceful_streams_ended": report.streams_ended,
            "graceful_undelivered": len(report.undelivered),
        },
    )


def _ended_politely(report: DrainReport) -> str:
    if not (report.websockets_closed or report.streams_ended):
        return ""
    return (
        f"closed {report.websockets_closed} websockets, ended {report.streams_ended} streams, "
    )


def log_job_failed(name: str, exc: BaseException) -> None:
    logger.error("protected job %r failed", name, exc_info=(type(exc), exc, exc.__traceback__))


async def progress_beat(
    interval: float, draining: Callable[[], bool], progress: Callable[[], None]
) -> None:
    """Call ``progress()`` every ``interval`` seconds while ``draining()``."""
    next_at = anyio.current_time() + interval
    while draining():
        await anyio.sleep_until(next_at)
        now = anyio.current_time()
        # Keep the beat; after the loop was blocked, start a new beat rather than catch up
        # with a burst of lines: two lines are always half an interval apart or more.
        next_at = next_at + interval if now - next_at < interval / 2 else now + interval
        if draining():
            progress()
