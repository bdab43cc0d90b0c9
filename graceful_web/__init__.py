"""graceful_web: restarts and deploys of async web services that lose nothing.

Requests in flight and background jobs started with ``spawn`` are protected: on SIGTERM or
SIGINT the server stops accepting connections at once, drains protected work within one
deadline, reports anything it had to abandon, and only then lets the process exit.
"""

from . import _log_output  # noqa: F401  (our log lines reach the server's log by default)
from ._current import protect, shutting_down, spawn
from ._long_lived import mark_stream
from ._report import EXIT_ABANDONED, EXIT_HARD, AbandonedWork, DrainReport
from ._run import run
from ._work import ShutdownInProgress

__all__ = [
    "EXIT_ABANDONED",
    "EXIT_HARD",
    "AbandonedWork",
    "DrainReport",
    "ShutdownInProgress",
    "mark_stream",
    "protect",
    "run",
    "shutting_down",
    "spawn",
]
__version__ = "0.1.0"
