"""POST /reports?id=X&ms=N: a durable job (graceful_web.durable), served only when
GRACEFUL_DURABLE_URL is set (and GRACEFUL is not 0); without it the services are what they were.

The request records the job in the durable store before its 202 leaves. The job sleeps N ms, then
writes one row per run that finished, so a job run twice (at least once: after a hand-over at the
drain deadline) shows as two rows:

- store ``postgresql://...``: a row in the table ``completed`` of the same database (asyncpg);
- store ``sqlite:///...``: a line ``X attempt replica pid`` appended to REPORTS_FILE
  (default ``reports.log``).

``replica`` is REPLICA when set (the stack files give the swarm task's name), else the hostname.
This module registers the job when imported: the services import it only when
``_contract.reports_served()``.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import anyio

import graceful_web
from graceful_web import ShutdownInProgress, durable

from ._contract import COMPLETED_TABLE, DURABLE_URL_ENV, append_job_record, parse_id, parse_ms


def replica() -> str:
    return os.environ.get("REPLICA") or socket.gethostname()


def _postgres_url() -> str | None:
    url = os.environ.get(DURABLE_URL_ENV, "").strip()
    return url if url.startswith(("postgresql://", "postgres://")) else None


async def _insert_completed(url: str, report_id: str, info: durable.JobInfo) -> None:
    import asyncpg  # graceful-web[postgres]

    conn = await asyncpg.connect(url, timeout=10)
    try:
        for _ in range(2):
            try:
                await conn.execute(
                    "INSERT INTO completed (report_id, job_id, attempt, replica, pid) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    report_id, info.id, info.attempt, replica(), os.getpid(),
                )  # fmt: skip
                return
            except asyncpg.UndefinedTableError:
                # Another replica may create it at the same moment.
                with contextlib.suppress(asyncpg.UniqueViolationError):
                    await conn.execute(COMPLETED_TABLE)
    finally:
        await conn.close()


@durable.job(name="demo.build_report")
async def build_report(report_id: str, ms: int) -> None:
    """Sleep ``ms``, then record that this run of the report finished."""
    await anyio.sleep(ms / 1000)
    info = durable.current()
    url = _postgres_url()
    if url is not None:
        await _insert_completed(url, report_id, info)
    else:
        line = f"{report_id} {info.attempt} {replica()} {os.getpid()}"
        append_job_record(line, os.environ.get("REPORTS_FILE", "reports.log"))


def accept(query: Any) -> tuple[int, dict[str, Any]]:
    """What POST /reports answers, for any framework: (status, JSON body). 202 means the job
    is recorded; 503 that it is not (draining, or the store could not record it)."""
    ms = parse_ms(query.get("ms"), default=1000)
    report_id = parse_id(query.get("id"))
    try:
        graceful_web.spawn(build_report(report_id, ms), name=f"report-{report_id}")
    except ShutdownInProgress:
        return 503, {"id": report_id, "error": "shutting down"}
    return 202, {"id": report_id, "accepted": True}
