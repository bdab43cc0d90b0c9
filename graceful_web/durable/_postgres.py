"""The store for fleets: PostgreSQL through asyncpg. Replicas claim with ``FOR UPDATE SKIP
LOCKED``, so two of them never take the same record; time is the server's own clock.

``pip install 'graceful-web[postgres]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._store import MAX_RETRY_DELAY, Claimed, DeadJob, NewRecord, StoreUnavailable
from ._store import dead_job as _dead_job

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
"""

CLAIM = """
WITH picked AS (
    SELECT j.id, j.owner IS NOT NULL AS ran FROM graceful_jobs j
    WHERE j.state = 'ready' AND j.run_after <= now() AND j.name = ANY($2::text[])
      AND (j.owner IS NULL OR NOT EXISTS (
          SELECT 1 FROM graceful_owners o WHERE o.owner = j.owner AND o.expires > now()))
    ORDER BY j.created LIMIT $3
    FOR UPDATE OF j SKIP LOCKED
), counted AS (
    SELECT j.id, j.failures + picked.ran::int AS failures,
           CASE WHEN picked.ran
                THEN 'its process ended while running attempt ' || j.attempt
                ELSE j.error END AS error,
           j.failures + picked.ran::int >= j.max_attempts AS dead
    FROM graceful_jobs j JOIN picked ON picked.id = j.id
)
UPDATE graceful_jobs j SET
    failures = counted.failures,
    error = counted.error,
    state = CASE WHEN counted.dead THEN 'dead' ELSE 'ready' END,
    owner = CASE WHEN counted.dead THEN NULL ELSE $1 END,
    attempt = CASE WHEN counted.dead THEN j.attempt ELSE j.attempt + 1 END
FROM counted WHERE j.id = counted.id
RETURNING j.id, j.name, j.args, j.attempt, j.failures, j.error, counted.dead
"""


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

    async def insert(self, owner: str, records: Sequence[NewRecord]) -> None:
        await self._execute(
            "INSERT INTO graceful_jobs (id, name, args, attempt, max_attempts, owner) "
            "SELECT id, name, args, 1, max_attempts, $5 FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::int[]) "
            "AS r(id, name, args, max_attempts)",
            [r.id for r in records],
            [r.name for r in records],
            [r.args for r in records],
            [r.max_attempts for r in records],
            owner,
        )

    async def complete(self, ids: Sequence[str]) -> None:
        await self._execute("DELETE FROM graceful_jobs WHERE id = ANY($1::text[])", list(ids))

    async def hand_over(self, owner: str, ids: Sequence[str]) -> None:
        await self._execute(
            "UPDATE graceful_jobs SET owner = NULL, run_after = now() "
            "WHERE id = ANY($1::text[]) AND owner = $2",
            list(ids),
            owner,
        )

    async def fail(self, owner: str, job_id: str, error: str, retry_delay: float) -> bool:
        rows = await self._execute(
            "UPDATE graceful_jobs SET failures = failures + 1, owner = NULL, error = $3, "
            "run_after = now() + make_interval(secs => least($4, $5 * power(2, failures))), "
            "state = CASE WHEN failures + 1 >= max_attempts THEN 'dead' ELSE 'ready' END "
            "WHERE id = $1 AND owner = $2 RETURNING state",
            job_id,
            owner,
            error,
            MAX_RETRY_DELAY,
            retry_delay,
        )
        return bool(rows) and rows[0]["state"] == "dead"

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

    async def claim(
        self, owner: str, names: Sequence[str], limit: int
    ) -> tuple[list[Claimed], list[DeadJob]]:
        if not names:
            return [], []
        rows = await self._execute(CLAIM, owner, list(names), limit)
        claimed: list[Claimed] = []
        dead: list[DeadJob] = []
        for row in rows:
            if row["dead"]:
                dead.append(
                    _dead_job(row["id"], row["name"], row["args"], row["failures"], row["error"])
                )
            else:
                claimed.append(Claimed(row["id"], row["name"], row["args"], row["attempt"]))
        return claimed, dead

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

    async def waiting_unknown(self, names: Sequence[str]) -> dict[str, int]:
        rows = await self._execute(
            "SELECT name, count(*) AS waiting FROM graceful_jobs WHERE state = 'ready' "
            "AND NOT (name = ANY($1::text[])) GROUP BY name",
            list(names),
        )
        return {row["name"]: row["waiting"] for row in rows}
