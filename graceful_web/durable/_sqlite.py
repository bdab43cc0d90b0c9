"""The embedded store: one SQLite file in WAL mode, shared safely by every worker process of
one host. Each store talks to its file from one thread of its own, so the event loop never
waits for the disk; SQLite's own locking orders the writers of all processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ._store import MAX_RETRY_DELAY, Claimed, DeadJob, NewRecord, StoreCorrupt, StoreUnavailable
from ._store import dead_job as _dead_job

T = TypeVar("T")

#: How long a write waits for another process holding the file's write lock.
BUSY_TIMEOUT_MS = 5000

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
"""


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="graceful-durable-sqlite"
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        # Shielded: a write the thread has begun completes whatever happens to its caller.
        return await asyncio.shield(loop.run_in_executor(self._thread, self._run, work))

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._connection is None:
                self._connection = self._connect()
            return work(self._connection)
        except sqlite3.DatabaseError as exc:
            if _corrupt(exc):
                raise StoreCorrupt(
                    f"{self.path} is not a graceful_web job store or is damaged ({exc}): "
                    f"move it aside (its jobs may be lost) or point GRACEFUL_DURABLE_URL at "
                    f"another file"
                ) from exc
            raise StoreUnavailable(
                f"the job store {self.path} could not be written: {exc}"
            ) from exc

    def _connect(self) -> sqlite3.Connection:
        if self.path.parent and not self.path.parent.exists():
            raise StoreUnavailable(
                f"the folder of the job store {self.path} does not exist: create it, or point "
                f"GRACEFUL_DURABLE_URL at a file in an existing folder"
            )
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        # Every commit reaches the disk before the client hears "accepted".
        connection.execute("PRAGMA synchronous = FULL")
        connection.executescript(SCHEMA)
        return connection

    async def open(self) -> None:
        await self._call(lambda connection: None)

    async def close(self) -> None:
        def close(connection: sqlite3.Connection) -> None:
            connection.close()
            self._connection = None

        if self._connection is not None:
            await self._call(close)
        self._thread.shutdown(wait=False)

    async def insert(self, owner: str, records: Sequence[NewRecord]) -> None:
        now = time.time()
        rows = [(r.id, r.name, r.args, r.max_attempts, owner, now, now) for r in records]

        def insert(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.executemany(
                    "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner, "
                    "run_after, created) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                    rows,
                )

        await self._call(insert)

    async def complete(self, ids: Sequence[str]) -> None:
        def complete(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.executemany(
                    "DELETE FROM graceful_jobs WHERE id = ?", [(job_id,) for job_id in ids]
                )

        await self._call(complete)

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        now = time.time()

        def hand_over(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.executemany(
                    "UPDATE graceful_jobs SET owner = NULL, run_after = ? "
                    "WHERE id = ? AND owner = ?",
                    [(now, job_id, owner) for job_id in ids],
                )

        await self._call(hand_over)

    async def fail(self, owner: str, job_id: str, error: str, retry_delay: float) -> bool:
        def fail(connection: sqlite3.Connection) -> bool:
            with _transaction(connection):
                row = connection.execute(
                    "SELECT failures, max_attempts FROM graceful_jobs WHERE id = ? AND owner = ?",
                    (job_id, owner),
                ).fetchone()
                if row is None:
                    return False  # no longer ours: whoever holds it decides
                failures: int = row[0] + 1
                dead: bool = failures >= row[1]
                delay = min(MAX_RETRY_DELAY, retry_delay * 2 ** (failures - 1))
                connection.execute(
                    "UPDATE graceful_jobs SET failures = ?, owner = NULL, run_after = ?, "
                    "error = ?, state = ? WHERE id = ?",
                    (failures, time.time() + delay, error, "dead" if dead else "ready", job_id),
                )
                return dead

        return await self._call(fail)

    async def heartbeat(self, owner: str, lease: float) -> None:
        def heartbeat(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
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

        await self._call(heartbeat)

    async def forget_owner(self, owner: str) -> None:
        def forget(connection: sqlite3.Connection) -> None:
            with _transaction(connection):
                connection.execute("DELETE FROM graceful_owners WHERE owner = ?", (owner,))

        await self._call(forget)

    async def claim(
        self, owner: str, names: Sequence[str], limit: int
    ) -> tuple[list[Claimed], list[DeadJob]]:
        if not names:
            return [], []

        def claim(connection: sqlite3.Connection) -> tuple[list[Claimed], list[DeadJob]]:
            now = time.time()
            marks = ", ".join("?" * len(names))
            claimed: list[Claimed] = []
            dead: list[DeadJob] = []
            # IMMEDIATE: the write lock is taken before reading, so two processes never
            # claim the same record.
            with _transaction(connection, "BEGIN IMMEDIATE"):
                rows = connection.execute(
                    f"SELECT id, name, args, attempt, failures, max_attempts, owner, error "
                    f"FROM graceful_jobs j WHERE state = 'ready' AND run_after <= ? "
                    f"AND name IN ({marks}) AND (owner IS NULL OR NOT EXISTS "
                    f"(SELECT 1 FROM graceful_owners o WHERE o.owner = j.owner "
                    f"AND o.expires > ?)) ORDER BY created LIMIT ?",
                    (now, *names, now, limit),
                ).fetchall()
                for job_id, name, args, attempt, failures, max_attempts, was_owned, error in rows:
                    if was_owned is not None:
                        failures += 1
                        error = f"its process ended while running attempt {attempt}"
                    if failures >= max_attempts:
                        connection.execute(
                            "UPDATE graceful_jobs SET state = 'dead', owner = NULL, "
                            "failures = ?, error = ? WHERE id = ?",
                            (failures, error, job_id),
                        )
                        dead.append(_dead_job(job_id, name, args, failures, error))
                        continue
                    connection.execute(
                        "UPDATE graceful_jobs SET owner = ?, attempt = ?, failures = ?, "
                        "error = ? WHERE id = ?",
                        (owner, attempt + 1, failures, error, job_id),
                    )
                    claimed.append(Claimed(job_id, name, args, attempt + 1))
            return claimed, dead

        return await self._call(claim)

    async def dead_jobs(self) -> list[DeadJob]:
        def dead(connection: sqlite3.Connection) -> list[DeadJob]:
            rows = connection.execute(
                "SELECT id, name, args, failures, error FROM graceful_jobs "
                "WHERE state = 'dead' ORDER BY created"
            ).fetchall()
            return [_dead_job(*row) for row in rows]

        return await self._call(dead)

    async def retry_dead(self, ids: Sequence[str]) -> int:
        now = time.time()

        def retry(connection: sqlite3.Connection) -> int:
            with _transaction(connection):
                cursor = connection.executemany(
                    "UPDATE graceful_jobs SET state = 'ready', failures = 0, owner = NULL, "
                    "run_after = ? WHERE id = ? AND state = 'dead'",
                    [(now, job_id) for job_id in ids],
                )
                return cursor.rowcount

        return await self._call(retry)

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        def unknown(connection: sqlite3.Connection) -> dict[str, int]:
            marks = ", ".join("?" * len(names))
            rows = connection.execute(
                f"SELECT name, count(*) FROM graceful_jobs WHERE state = 'ready' "
                f"AND name NOT IN ({marks}) GROUP BY name",
                tuple(names),
            ).fetchall()
            return {name: count for name, count in rows}

        return await self._call(unknown)


class _transaction:
    """BEGIN … COMMIT, or ROLLBACK on error, on a connection in autocommit mode."""

    def __init__(self, connection: sqlite3.Connection, begin: str = "BEGIN") -> None:
        self.connection = connection
        self.begin = begin

    def __enter__(self) -> None:
        self.connection.execute(self.begin)

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if kind is None:
            self.connection.execute("COMMIT")
        elif self.connection.in_transaction:
            self.connection.execute("ROLLBACK")


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "file is encrypted" in text
