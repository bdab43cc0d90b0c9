"""The store for fleets: PostgreSQL through asyncpg. Replicas claim with ``FOR UPDATE SKIP
LOCKED``, so two of them never take the same record; time is the server's own clock. Queries
only: what a failure makes of a job comes decided (``_policy``).

``pip install 'graceful-web[postgres]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._records import DeadJob, Failure, Record, Stored, StoreUnavailable
from ._records import dead_job as _dead_job

try:
    import asyncpg  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "a postgresql:// durable store needs asyncpg: pip install 'graceful-web[postgres]'"
    ) from exc

#: Serialises the tables' creation across replicas starting at once.
SCHEMA_LOCK = 0x67726163  # "grac"

SCHEMA = """
CREATE TABLE IF NOT EXISTS graceful_jobs (
    id text PRIMARY KEY,
    name text NOT NULL,
    args text NOT NULL,
    attempt integer NOT NULL,
    failures integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    owner text,
    state text NOT NULL DEFAULT 'ready',
    run_after timestamptz NOT NULL DEFAULT now(),
    created timestamptz NOT NULL DEFAULT now(),
    error text
);
CREATE INDEX IF NOT EXISTS graceful_jobs_ready ON graceful_jobs (state, run_after);
CREATE TABLE IF NOT EXISTS graceful_owners (
    owner text PRIMARY KEY,
    expires timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS graceful_steps (
    job_id text NOT NULL,
    name text NOT NULL,
    result text NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""

#: Columns added since the first release, added to its tables at startup (``MISSING``).
ADDED_COLUMNS = {"started": "timestamptz", "finished": "timestamptz"}

#: Which of them the table lacks: read first, as an ALTER TABLE would lock the table even
#: when it changes nothing.
MISSING = """
SELECT column_name FROM unnest($1::text[]) AS wanted(column_name)
WHERE NOT EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = 'graceful_jobs'::regclass AND attname = column_name AND NOT attisdropped
)
"""

INSERT = """
INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner, started)
SELECT id, name, args, 1, max_attempts, $5, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS r(id, name, args, max_attempts)
"""

#: The primary key is the unique index that makes one key one record, across replicas.
INSERT_KEYED = INSERT + " ON CONFLICT (id) DO NOTHING RETURNING id"

EPOCH = "extract(epoch FROM {})::float8"

STATUS = f"""
SELECT state, owner, attempt, failures, {EPOCH.format("coalesce(started, created)")},
       {EPOCH.format("run_after")}, {EPOCH.format("finished")}, error
FROM graceful_jobs WHERE id = $1
"""

FINISHED = (
    "state IN ('succeeded', 'cancelled') AND finished < now() - make_interval(secs => $1)"
)

PURGE = f"""
WITH gone AS (DELETE FROM graceful_jobs WHERE {FINISHED} RETURNING id),
     steps AS (DELETE FROM graceful_steps WHERE job_id IN (SELECT id FROM gone))
SELECT count(*) AS purged FROM gone
"""

CLAIM = """
UPDATE graceful_jobs j SET owner = $1, attempt = j.attempt + 1, started = now()
FROM (
    SELECT id FROM graceful_jobs
    WHERE state = 'ready' AND owner IS NULL AND run_after <= now() AND name = ANY($2::text[])
    ORDER BY created LIMIT $3
    FOR UPDATE SKIP LOCKED
) picked
WHERE j.id = picked.id
RETURNING j.id, j.name, j.args, j.max_attempts, j.attempt, j.failures
"""

#: The record's owner holds no live lease: it ended, or stopped renewing.
LEASE_OUT = (
    " AND NOT EXISTS (SELECT 1 FROM graceful_owners o "
    "WHERE o.owner = graceful_jobs.owner AND o.expires > now())"
)

LOST = f"""
SELECT owner, id, name, args, max_attempts, attempt, failures FROM graceful_jobs
WHERE state = 'ready' AND run_after <= now() AND name = ANY($1::text[])
  AND owner IS NOT NULL{LEASE_OUT}
ORDER BY created LIMIT $2
"""

SETTLE = "UPDATE graceful_jobs SET failures = $4, error = $5, state = $6, "
HELD = " WHERE id = $1 AND owner = $2 AND failures = $3 AND state = 'ready'"

FAIL = SETTLE + "run_after = now() + make_interval(secs => $7), owner = NULL" + HELD

TAKE_OVER = SETTLE + "owner = $7, attempt = attempt + $8, started = now()" + HELD + LEASE_OUT


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    def __repr__(self) -> str:
        return "PostgresStore(...)"  # the URL may hold a password

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=4, command_timeout=10
            )
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await connection.execute(SCHEMA)
                for row in await connection.fetch(MISSING, list(ADDED_COLUMNS)):
                    column = row["column_name"]
                    await connection.execute(
                        f"ALTER TABLE graceful_jobs ADD COLUMN {column} {ADDED_COLUMNS[column]}"
                    )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StoreUnavailable(f"the PostgreSQL job store could not be reached: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _execute(self, query: str, *args: Any) -> Any:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL job store is not open")
        try:
            return await self._pool.fetch(query, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailable(f"the PostgreSQL job store could not be written: {exc}") from exc

    async def insert(self, owner: str, records: Sequence[Record]) -> None:
        await self._execute(INSERT, *_columns(records), owner)

    async def insert_keyed(
        self, owner: str, records: Sequence[Record]
    ) -> dict[str, tuple[str, str]]:
        if self._pool is None:
            raise StoreUnavailable("the PostgreSQL job store is not open")
        try:
            async with self._pool.acquire() as connection:
                inserted = await connection.fetch(INSERT_KEYED, *_columns(records), owner)
                # A statement of its own: it sees the rows the insert found in its way.
                rows = await connection.fetch(
                    "SELECT id, name, args FROM graceful_jobs WHERE id = ANY($1::text[])",
                    [record.id for record in records],
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailable(f"the PostgreSQL job store could not be written: {exc}") from exc
        written = {row["id"] for row in inserted}
        return {
            row["id"]: (row["name"], row["args"]) for row in rows if row["id"] not in written
        }

    async def complete(self, ids: Sequence[str]) -> None:
        await self._execute(
            "UPDATE graceful_jobs SET state = 'succeeded', finished = now(), owner = NULL "
            "WHERE id = ANY($1::text[]) AND state = 'ready'",
            list(ids),
        )

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        await self._execute(
            "UPDATE graceful_jobs SET owner = NULL, run_after = now() "
            "WHERE id = ANY($1::text[]) AND owner = $2",
            list(ids),
            owner,
        )

    async def fail(self, owner: str, record: Record, failure: Failure) -> bool:
        return await self._settle(FAIL, owner, record, failure, failure.delay)

    async def take_over(
        self, owner: str, lost_owner: str, record: Record, failure: Failure
    ) -> bool:
        taker, next_attempt = (None, 0) if failure.dead else (owner, 1)
        return await self._settle(TAKE_OVER, lost_owner, record, failure, taker, next_attempt)

    async def _settle(
        self, query: str, holder: str, record: Record, failure: Failure, *then: Any
    ) -> bool:
        """Write ``failure`` (and ``then``) while ``holder`` holds ``record`` as it was read."""
        held = (record.id, holder, record.failures)
        decided = (failure.failures, failure.error, "dead" if failure.dead else "ready")
        return bool(await self._execute(query + " RETURNING id", *held, *decided, *then))

    async def heartbeat(self, owner: str, lease: float) -> None:
        await self._execute(
            "INSERT INTO graceful_owners (owner, expires) "
            "VALUES ($1, now() + make_interval(secs => $2)) "
            "ON CONFLICT (owner) DO UPDATE SET expires = excluded.expires",
            owner,
            lease,
        )
        await self._execute(
            "DELETE FROM graceful_owners o WHERE o.expires < now() - make_interval(secs => $1) "
            "AND NOT EXISTS (SELECT 1 FROM graceful_jobs j WHERE j.owner = o.owner)",
            lease,
        )

    async def forget_owner(self, owner: str) -> None:
        await self._execute("DELETE FROM graceful_owners WHERE owner = $1", owner)

    async def lost(self, names: Sequence[str], limit: int) -> list[tuple[str, Record]]:
        rows = await self._execute(LOST, list(names), limit)
        return [(row["owner"], _record(row)) for row in rows]

    async def claim(self, owner: str, names: Sequence[str], limit: int) -> list[Record]:
        if not names:
            return []
        return [_record(row) for row in await self._execute(CLAIM, owner, list(names), limit)]

    async def dead_jobs(self) -> list[DeadJob]:
        rows = await self._execute(
            "SELECT id, name, args, failures, error FROM graceful_jobs "
            "WHERE state = 'dead' ORDER BY created"
        )
        return [
            _dead_job(row["id"], row["name"], row["args"], row["failures"], row["error"])
            for row in rows
        ]

    async def retry_dead(self, ids: Sequence[str]) -> int:
        rows = await self._execute(
            "UPDATE graceful_jobs SET state = 'ready', failures = 0, owner = NULL, "
            "run_after = now() WHERE id = ANY($1::text[]) AND state = 'dead' RETURNING id",
            list(ids),
        )
        return len(rows)

    async def steps(self, job_id: str) -> dict[str, str]:
        rows = await self._execute(
            "SELECT name, result FROM graceful_steps WHERE job_id = $1", job_id
        )
        return {row["name"]: row["result"] for row in rows}

    async def record_steps(self, steps: Sequence[tuple[str, str, str]]) -> None:
        await self._execute(
            "INSERT INTO graceful_steps (job_id, name, result) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*steps, strict=True)),
        )

    async def status(self, job_id: str) -> Stored | None:
        rows = await self._execute(STATUS, job_id)
        return Stored(*rows[0].values()) if rows else None

    async def cancel(self, job_id: str) -> bool:
        rows = await self._execute(
            "UPDATE graceful_jobs SET state = 'cancelled', finished = now(), owner = NULL "
            "WHERE id = $1 AND state = 'ready' RETURNING id",
            job_id,
        )
        return bool(rows)

    async def cancelled(self, ids: Sequence[str]) -> list[str]:
        rows = await self._execute(
            "SELECT id FROM graceful_jobs WHERE id = ANY($1::text[]) AND state = 'cancelled'",
            list(ids),
        )
        return [row["id"] for row in rows]

    async def purge(self, retention: float) -> int:
        rows = await self._execute(PURGE, retention)
        return int(rows[0]["purged"])

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        rows = await self._execute(
            "SELECT name, count(*) AS waiting FROM graceful_jobs WHERE state = 'ready' "
            "AND NOT (name = ANY($1::text[])) GROUP BY name",
            list(names),
        )
        return {row["name"]: row["waiting"] for row in rows}


def _columns(records: Sequence[Record]) -> tuple[list[Any], ...]:
    return (
        [r.id for r in records],
        [r.name for r in records],
        [r.args for r in records],
        [r.max_attempts for r in records],
    )


def _record(row: Any) -> Record:
    return Record(
        row["id"], row["name"], row["args"], row["max_attempts"], row["attempt"], row["failures"]
    )
