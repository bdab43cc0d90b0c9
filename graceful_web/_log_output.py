"""graceful_web's log lines, visible by default and never printed twice.

Logger ``graceful_web`` writes the drain's lines (started, progress, finished, abandoned,
warnings). A library must not configure logging, so without this module those lines would go
nowhere unless the user set logging up: no server configures the root logger, and the root's
WARNING level drops the INFO lines. So at import one handler is attached to ``graceful_web``,
and its level is set to INFO unless someone has set one. At each record the handler decides:

- the user configured logging (a handler on the root, on ``graceful_web`` or between them, as
  ``basicConfig``, ``dictConfig``, structlog's stdlib set-up or pytest add): do nothing, the
  user's handlers print the record;
- otherwise, a server's own logger has handlers (gunicorn, uvicorn, hypercorn, granian): hand
  the record to them, so it comes out once, in that server's format, filtered by its level;
- otherwise (aiohttp's ``run_app``, ``graceful_web.run``, a script): write it to stderr.

Because the handler is on ``graceful_web`` itself, ``logging.lastResort`` never prints these
records a second time.
"""

from __future__ import annotations

import logging
import re
import sys

LOGGER_NAME = "graceful_web"

#: Loggers that servers configure for their own lines, tried in this order. gunicorn comes
#: first: its uvicorn worker points ``uvicorn.error`` at the same handlers.
SERVER_LOGGERS = ("gunicorn.error", "uvicorn.error", "hypercorn.error", "_granian")

#: The format when no server configured a logger (aiohttp's run_app logs nothing of its own).
FALLBACK_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# %(name)s, {name} or $name in a format string ("levelname" does not count).
_SHOWS_NAME = re.compile(r"%\(name\)|\{name\b|\$\{?name\b")


class ServerLogHandler(logging.Handler):
    """Passes graceful_web's records to the running server's log unless the user logs them."""

    def __init__(self) -> None:
        super().__init__()
        self._fallback = logging.StreamHandler(sys.stderr)
        self._fallback.setFormatter(logging.Formatter(FALLBACK_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if _configured_by_user(record, self):
            return
        server = _server_logger()
        targets: list[logging.Handler]
        if server is None:
            if sys.stderr is None:
                return  # pythonw, a daemon with its streams closed: nowhere to write
            # Looked up at each record: a test or a daemon may have replaced sys.stderr.
            self._fallback.stream = sys.stderr
            targets = [self._fallback]
        elif record.levelno < server.getEffectiveLevel():
            return  # the server was told to be quieter (--log-level warning): so are we
        else:
            targets = _handlers_of(server)
        for handler in targets:
            if record.levelno >= handler.level:
                handler.handle(_named(record, handler))

    def flush(self) -> None:
        # The hard exit flushes graceful_web's handlers before os._exit: flush where we wrote.
        server = _server_logger()
        for handler in [self._fallback] if server is None else _handlers_of(server):
            handler.flush()


def _configured_by_user(record: logging.LogRecord, ours: logging.Handler) -> bool:
    """True when a handler other than ours would see the record through propagation."""
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        if any(handler is not ours for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _server_logger() -> logging.Logger | None:
    for name in SERVER_LOGGERS:
        # Read the registry rather than getLogger: asking must not create loggers.
        candidate = logging.Logger.manager.loggerDict.get(name)
        if (
            isinstance(candidate, logging.Logger)
            and not candidate.disabled
            and _handlers_of(candidate)
        ):
            return candidate
    return None


def _handlers_of(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record logged on ``logger`` reaches, the root's left out (the root has
    none here: a handler on it counts as the user's configuration)."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        found.extend(current.handlers)
        if not current.propagate:
            break
        current = current.parent
    return found


def _named(record: logging.LogRecord, handler: logging.Handler) -> logging.LogRecord:
    """The record with ``graceful_web: `` before its message, unless the handler's format
    shows the logger's name already: server formats leave the name out, and a bare
    "drain started" among the server's lines would not say whose it is."""
    fmt = getattr(handler.formatter, "_fmt", None) or ""
    message = record.getMessage()
    if _SHOWS_NAME.search(fmt) or message.startswith(f"{LOGGER_NAME}:"):
        return record  # the name is there already
    named = logging.makeLogRecord(record.__dict__)
    named.msg, named.args = f"{LOGGER_NAME}: {message}", None
    return named


def install() -> None:
    """Attach the handler to logger ``graceful_web`` once, and let its INFO lines through."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(handler, ServerLogHandler) for handler in logger.handlers):
        logger.addHandler(ServerLogHandler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


install()
