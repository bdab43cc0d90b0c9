"""The HTTP contract every demo service follows, shared so the services cannot drift apart.

GET /slow?ms=N   sleeps N ms, 200          GET /fast      200
POST /jobs?ms=N&id=X   202; a protected job sleeps N ms, then appends the line X to JOBS_FILE
POST /reports?ms=N&id=X  only with GRACEFUL_DURABLE_URL set: 202 once a durable job is recorded;
                 it sleeps N ms, then records its run (demo_services/_reports.py)
GET /healthz     200 while the process runs
GET /readyz      200 while serving, 503 while draining
METRICS_PORT=N   Prometheus metrics on 127.0.0.1:N from a thread of their own, so they can be
                 scraped while the web listener is closed for the drain
"""

from __future__ import annotations

import logging
import os
import re

MAX_MS = 600_000
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class BadParameter(ValueError):
    """A query parameter the contract does not accept; the message is safe to send back."""


def parse_ms(raw: str | None, default: int = 0) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter("ms must be a whole number of milliseconds") from None
    if not 0 <= value <= MAX_MS:
        raise BadParameter(f"ms must be between 0 and {MAX_MS}")
    return value


def parse_id(raw: str | None) -> str:
    if raw is None or not _ID.fullmatch(raw):
        raise BadParameter("id must be 1 to 64 of A-Z a-z 0-9 _ . : -")
    return raw


def jobs_file() -> str:
    return os.environ.get("JOBS_FILE", "jobs.log")


def append_job_record(line: str, path: str | None = None) -> None:
    """Append one line durably (to JOBS_FILE unless ``path`` is given): a record in the file
    means the job really finished."""
    fd = os.open(path or jobs_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def graceful_enabled() -> bool:
    """GRACEFUL=0 runs the same service without graceful_web, to show what it loses."""
    return os.environ.get("GRACEFUL", "1") not in ("0", "false", "no", "off")


DURABLE_URL_ENV = "GRACEFUL_DURABLE_URL"

#: Where POST /reports records each finished run when the durable store is PostgreSQL (the
#: same database): a job run twice has two rows.
COMPLETED_TABLE = """
CREATE TABLE IF NOT EXISTS completed (
    report_id text NOT NULL,
    job_id text NOT NULL,
    attempt integer NOT NULL,
    replica text NOT NULL,
    pid integer NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
)
"""


def reports_served() -> bool:
    """Whether POST /reports (durable jobs) is served: the library is on and a durable store
    is named. Otherwise the job is not even registered, so nothing durable starts."""
    return graceful_enabled() and bool(os.environ.get(DURABLE_URL_ENV, "").strip())


def serve_metrics_from_env() -> None:
    """With METRICS_PORT set, serve the drain metrics (needs graceful-web[prometheus])."""
    port = os.environ.get("METRICS_PORT")
    if not port:
        return
    from prometheus_client import start_http_server

    if graceful_enabled():
        import graceful_web.prometheus

        graceful_web.prometheus.register()
    start_http_server(int(port), addr="127.0.0.1")


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
