"""The embedded store: one SQLite file (``_sqlite_file``), shared safely by every worker
process of one host. Queries only: time is this host's clock, and what a failure makes of a
job comes decided (``_policy``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._records import DeadJob, Failure, Record, Stored
from ._records import dead_job as _dead_job
from ._sqlite_file import SQLiteFile, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS graceful_jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    owner TEXT,
    state TEXT NOT NULL DEFAULT 'ready',
    run_after REAL NOT NULL,
    created REAL NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS graceful_jobs_ready ON graceful_jobs (state, run_after);
CREATE TABLE IF NOT EXISTS graceful_owners (
    owner TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS graceful_steps (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;
"""

#: Columns added since the first release, added to a store made by it (``migrate``).
ADDED_COLUMNS = ("started REAL", "finished REAL")

INSERT = (
    "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner, run_after, "
    "created, started) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)"
)

FINISHED = "state IN ('succeeded', 'cancelled') AND finished < ?"

#: Parameters in one statement, well below SQLite's limit (999 before 3.32).
MARKS_AT_MOST = 500

#: The record's owner holds no live lease: it ended, or stopped renewing.
LEASE_OUT = (
    " AND NOT EXISTS (SELECT 1 FROM graceful_owners o "
    "WHERE o.owner = graceful_jobs.owner AND o.expires > ?)"
)


def migrate(connection: sqlite3.Connection) -> None:
    """Bring a store made by an earlier release up to this one's tables (checked again under
    the write lock: every worker of a host may open the file at once)."""
    with transaction(connection, "BEGIN IMMEDIATE"):
        have = {row[1] for row in connection.execute("PRAGMA table_info(graceful_jobs)")}
        for column in ADDED_COLUMNS:
            if column.split()[0] not in have:
                connection.execute(f"ALTER TABLE graceful_jobs ADD COLUMN {column}")


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._file = SQLiteFile(self.path, SCHEMA, migrate)
        self._write = self._file.write
        self._read = self._file.read

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def open(self) -> None:
        await self._file.call(lambda connection: None)

    async def close(self) -> None:
        await self._file.close()

    async def insert(self, owner: str, records: Sequence[Record]) -> None:
        now = time.time()
        await self._write(INSERT, [_row(r, owner, now) for r in records])

    async def insert_keyed(
        self, owner: str, records: Sequence[Record]
    ) -> dict[str, tuple[str, str]]:
        def insert(connection: sqlite3.Connection) -> dict[str, tuple[str, str]]:
            kept: dict[str, tuple[str, str]] = {}
            now = time.time()
            # IMMEDIATE: read and written under the write lock, so one key makes one record.
            with transaction(connection, "BEGIN IMMEDIATE"):
                for record in records:
                    row = connection.execute(
                        "SELECT name, args FROM graceful_jobs WHERE id = ?", (record.id,)
                    ).fetchone()
                    if row is None:
                        connection.execute(INSERT, _row(record, owner, now))
                    else:
                        kept[record.id] = (row[0], row[1])
            return kept

        return await self._file.call(insert)

    async def complete(self, ids: Sequence[str]) -> None:
        now = time.time()
        await self._write(
            "UPDATE graceful_jobs SET state = 'succeeded', finished = ?, owner = NULL "
            "WHERE id = ? AND state = 'ready'",
            [(now, i) for i in ids],
        )

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        now = time.time()
        await self._write(
            "UPDATE graceful_jobs SET owner = NULL, run_after = ? WHERE id = ? AND owner = ?",
            [(now, job_id, owner) for job_id in ids],
        )

    async def fail(self, owner: str, record: Record, failure: Failure) -> bool:
        run_after = time.time() + failure.delay
        return await self._settle(owner, record, failure, "run_after = ?, owner = NULL", run_after)

    async def take_over(
        self, owner: str, lost_owner: str, record: Record, failure: Failure
    ) -> bool:
        taker, next_attempt = (None, 0) if failure.dead else (owner, 1)
        taken = "owner = ?, attempt = attempt + ?, started = ?"
        return await self._settle(
            lost_owner, record, failure, taken, taker, next_attempt, time.time(), lost=True
        )

    async def _settle(
        self,
        holder: str,
        record: Record,
        failure: Failure,
        then: str,
        *then_params: Any,
        lost: bool = False,
    ) -> bool:
        """Write ``failure`` and ``then`` while ``holder`` holds ``record`` as it was read (and,
        when it is ``lost``, while its lease is still out)."""
        decided = (failure.failures, failure.error, "dead" if failure.dead else "ready")
        held = (record.id, holder, record.failures, *((time.time(),) if lost else ()))
        changed = await self._write(
            f"UPDATE graceful_jobs SET failures = ?, error = ?, state = ?, {then} "
            f"WHERE id = ? AND owner = ? AND failures = ? AND state = 'ready'"
            f"{LEASE_OUT if lost else ''}",
            [(*decided, *then_params, *held)],
        )
        return changed == 1

    async def heartbeat(self, owner: str, lease: float) -> None:
        def heartbeat(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT INTO graceful_owners (owner, expires) VALUES (?, ?) "
                    "ON CONFLICT (owner) DO UPDATE SET expires = excluded.expires",
                    (owner, time.time() + lease),
                )
                # Owners long gone, whose records have been claimed since.
                connection.execute(
                    "DELETE FROM graceful_owners WHERE expires < ? AND NOT EXISTS "
                    "(SELECT 1 FROM graceful_jobs j WHERE j.owner = graceful_owners.owner)",
                    (time.time() - lease,),
                )

        await self._file.call(heartbeat)

    async def forget_owner(self, owner: str) -> None:
        await self._write("DELETE FROM graceful_owners WHERE owner = ?", [(owner,)])

    async def lost(self, names: Sequence[str], limit: int) -> list[tuple[str, Record]]:
        now = time.time()
        rows = await self._read(
            f"SELECT owner, id, name, args, max_attempts, attempt, failures FROM graceful_jobs "
            f"WHERE state = 'ready' AND run_after <= ? AND name IN ({_marks(names)}) "
            f"AND owner IS NOT NULL{LEASE_OUT} ORDER BY created LIMIT ?",
            (now, *names, now, limit),
        )
        return [(owner, Record(*rest)) for owner, *rest in rows]

    async def claim(self, owner: str, names: Sequence[str], limit: int) -> list[Record]:
        if not names:
            return []

        def claim(connection: sqlite3.Connection) -> list[Record]:
            now = time.time()
            # IMMEDIATE: the write lock is taken before reading, so two processes never
            # claim the same record.
            with transaction(connection, "BEGIN IMMEDIATE"):
                rows = connection.execute(
                    f"SELECT id, name, args, max_attempts, attempt + 1, failures "
                    f"FROM graceful_jobs WHERE state = 'ready' AND run_after <= ? "
                    f"AND name IN ({_marks(names)}) AND owner IS NULL "
                    f"ORDER BY created LIMIT ?",
                    (now, *names, limit),
                ).fetchall()
                claimed = [Record(*row) for row in rows]
                connection.executemany(
                    "UPDATE graceful_jobs SET owner = ?, attempt = ?, started = ? WHERE id = ?",
                    [(owner, record.attempt, now, record.id) for record in claimed],
                )
            return claimed

        return await self._file.call(claim)

    async def dead_jobs(self) -> list[DeadJob]:
        rows = await self._read(
            "SELECT id, name, args, failures, error FROM graceful_jobs "
            "WHERE state = 'dead' ORDER BY created"
        )
        return [_dead_job(*row) for row in rows]

    async def retry_dead(self, ids: Sequence[str]) -> int:
        now = time.time()
        return await self._write(
            "UPDATE graceful_jobs SET state = 'ready', failures = 0, owner = NULL, "
            "run_after = ? WHERE id = ? AND state = 'dead'",
            [(now, job_id) for job_id in ids],
        )

    async def steps(self, job_id: str) -> dict[str, str]:
        rows = await self._read(
            "SELECT name, result FROM graceful_steps WHERE job_id = ?", (job_id,)
        )
        return dict(rows)

    async def record_steps(self, steps: Sequence[tuple[str, str, str]]) -> None:
        await self._write(
            "INSERT OR IGNORE INTO graceful_steps (job_id, name, result) VALUES (?, ?, ?)", steps
        )

    async def status(self, job_id: str) -> Stored | None:
        rows = await self._read(
            "SELECT state, owner, attempt, failures, coalesce(started, created), run_after, "
            "finished, error FROM graceful_jobs WHERE id = ?",
            (job_id,),
        )
        return Stored(*rows[0]) if rows else None

    async def cancel(self, job_id: str) -> bool:
        changed = await self._write(
            "UPDATE graceful_jobs SET state = 'cancelled', finished = ?, owner = NULL "
            "WHERE id = ? AND state = 'ready'",
            [(time.time(), job_id)],
        )
        return changed == 1

    async def cancelled(self, ids: Sequence[str]) -> list[str]:
        found = []
        for start in range(0, len(ids), MARKS_AT_MOST):
            chunk = ids[start : start + MARKS_AT_MOST]
            rows = await self._read(
                f"SELECT id FROM graceful_jobs WHERE id IN ({_marks(chunk)}) "
                f"AND state = 'cancelled'",
                chunk,
            )
            found += [row[0] for row in rows]
        return found

    async def purge(self, retention: float) -> int:
        def purge(connection: sqlite3.Connection) -> int:
            before = (time.time() - retention,)
            with transaction(connection):
                connection.execute(
                    f"DELETE FROM graceful_steps WHERE job_id IN "
                    f"(SELECT id FROM graceful_jobs WHERE {FINISHED})",
                    before,
                )
                return connection.execute(
                    f"DELETE FROM graceful_jobs WHERE {FINISHED}", before
                ).rowcount

        return await self._file.call(purge)

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        rows = await self._read(
            f"SELECT name, count(*) FROM graceful_jobs WHERE state = 'ready' "
            f"AND name NOT IN ({_marks(names)}) GROUP BY name",
            names,
        )
        return dict(rows)


def _row(record: Record, owner: str, now: float) -> tuple[object, ...]:
    return (record.id, record.name, record.args, record.max_attempts, owner, now, now, now)


def _marks(names: Sequence[str]) -> str:
    return ", ".join("?" * len(names))
