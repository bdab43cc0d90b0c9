"""One SQLite file in WAL mode, reached from one thread of its own so the event loop never
waits for the disk; SQLite's own locking orders the writers of all processes. What a store
needs of it: a write in one transaction, a read, and anything else in that thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._records import StoreCorrupt, StoreUnavailable

T = TypeVar("T")

#: How long a write waits for another process holding the file's write lock.
BUSY_TIMEOUT_MS = 5000

#: What SQLite says of a file that is not a job store, or is damaged.
CORRUPT = ("not a database", "malformed", "file is encrypted")


class SQLiteFile:
    def __init__(
        self, path: Path, schema: str, migrate: Callable[[sqlite3.Connection], None]
    ) -> None:
        self.path = path
        self._schema = schema
        self._migrate = migrate
        self._connection: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "graceful-durable-sqlite")

    async def call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the connection, in the file's thread (connected the first time)."""
        loop = asyncio.get_running_loop()
        # Shielded: a write the thread has begun completes whatever happens to its caller.
        return await asyncio.shield(loop.run_in_executor(self._thread, self._run, work))

    async def write(self, statement: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """One statement for each of ``rows``, in one transaction; how many rows it changed."""

        def write(connection: sqlite3.Connection) -> int:
            with transaction(connection):
                return connection.executemany(statement, rows).rowcount

        return await self.call(write)

    async def read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.call(lambda connection: connection.execute(query, params).fetchall())

    async def close(self) -> None:
        if self._connection is not None:
            await self.call(lambda connection: connection.close())
            self._connection = None
        self._thread.shutdown(wait=False)

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
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _write_ahead_log(connection)
        # Every commit reaches the disk before the client hears "accepted".
        connection.execute("PRAGMA synchronous = FULL")
        connection.executescript(self._schema)
        self._migrate(connection)
        return connection


def _write_ahead_log(connection: sqlite3.Connection) -> None:
    """Turn WAL on. Switching a file made in rollback mode needs it to itself for a moment, and
    SQLite answers "locked" at once rather than through the busy timeout when another process
    holds it (two processes starting at once on a store of an earlier release): try again,
    within the busy timeout."""
    give_up_at = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > give_up_at:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    """BEGIN … COMMIT, or ROLLBACK on error, on a connection in autocommit mode."""
    connection.execute(begin)
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
