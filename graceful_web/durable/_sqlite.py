"""The embedded store: one SQLite file in WAL mode, shared safely by every worker process of
one host. Each store talks to its file from one thread of its own, so the event loop never
waits for the disk; SQLite's own locking orders the writers of all processes. Queries only:
time is this host's clock, and what a failure makes of a job comes decided (``_policy``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._records import DeadJob, Failure, Record, StoreCorrupt, StoreUnavailable
from ._records import dead_job as _dead_job

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

#: What SQLite says of a file that is not a job store, or is damaged.
CORRUPT = ("not a database", "malformed", "file is encrypted")

#: The record's owner holds no live lease: it ended, or stopped renewing.
LEASE_OUT = (
    " AND NOT EXISTS (SELECT 1 FROM graceful_owners o "
    "WHERE o.owner = graceful_jobs.owner AND o.expires > ?)"
)


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "graceful-durable-sqlite")

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
            if any(sign in str(exc).lower() for sign in CORRUPT):
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
        connection = sqlite3.connect(self.path, BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode = WAL")
        # Every commit reaches the disk before the client hears "accepted".
        connection.execute("PRAGMA synchronous = FULL")
        connection.executescript(SCHEMA)
        return connection

    async def open(self) -> None:
        await self._call(lambda connection: None)

    async def close(self) -> None:
        if self._connection is not None:
            await self._call(lambda connection: connection.close())
            self._connection = None
        self._thread.shutdown(wait=False)

    async def _write(self, statement: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """One statement for each of ``rows``, in one transaction; how many rows it changed."""

        def write(connection: sqlite3.Connection) -> int:
            with _transaction(connection):
                return connection.executemany(statement, rows).rowcount

        return await self._call(write)

    async def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self._call(lambda connection: connection.execute(query, params).fetchall())

    async def insert(self, owner: str, records: Sequence[Record]) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner, "
            "run_after, created) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            [(r.id, r.name, r.args, r.max_attempts, owner, now, now) for r in records],
        )

    async def complete(self, ids: Sequence[str]) -> None:
        await self._write("DELETE FROM graceful_jobs WHERE id = ?", [(i,) for i in ids])

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        now = time.time()
        await self._write(
            "UPDATE graceful_jobs SET owner = NULL, run_after = ? WHERE id = ? AND owner = ?",
            [(now, job_id, owner) for job_id in ids],
        )

    async def fail(
        self, owner: str, record: Record, failure: Failure, *, lost: bool = False
    ) -> bool:
        now = time.time()
        state = "dead" if failure.dead else "ready"
        decided = (failure.failures, now + failure.delay, failure.error, state)
        held = (record.id, owner, record.failures, *((now,) if lost else ()))
        changed = await self._write(
            "UPDATE graceful_jobs SET failures = ?, run_after = ?, error = ?, state = ?, "
            "owner = NULL WHERE id = ? AND owner = ? AND failures = ?"
            + (LEASE_OUT if lost else ""),
            [(*decided, *held)],
        )
        return changed == 1

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
            # IMMEDIATE: the write lock is taken before reading, so two processes never
            # claim the same record.
            with _transaction(connection, "BEGIN IMMEDIATE"):
                rows = connection.execute(
                    f"SELECT id, name, args, max_attempts, attempt + 1, failures "
                    f"FROM graceful_jobs WHERE state = 'ready' AND run_after <= ? "
                    f"AND name IN ({_marks(names)}) AND owner IS NULL "
                    f"ORDER BY created LIMIT ?",
                    (time.time(), *names, limit),
                ).fetchall()
                claimed = [Record(*row) for row in rows]
                connection.executemany(
                    "UPDATE graceful_jobs SET owner = ?, attempt = ? WHERE id = ?",
                    [(owner, record.attempt, record.id) for record in claimed],
                )
            return claimed

        return await self._call(claim)

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

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        rows = await self._read(
            f"SELECT name, count(*) FROM graceful_jobs WHERE state = 'ready' "
            f"AND name NOT IN ({_marks(names)}) GROUP BY name",
            names,
        )
        return dict(rows)


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    """BEGIN … COMMIT, or ROLLBACK on error, on a connection in autocommit mode."""
    connection.execute(begin)
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _marks(names: Sequence[str]) -> str:
    return ", ".join("?" * len(names))
