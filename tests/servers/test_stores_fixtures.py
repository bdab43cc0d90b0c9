"""The real-store fixtures themselves: each server answers, and PostgreSQL does not run as root."""

from __future__ import annotations

import pwd
import socket
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.support.stores import PostgresServer


async def test_postgres_answers_in_its_own_database_as_the_postgres_user(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    connection = await asyncpg.connect(postgres_url, timeout=10)
    try:
        assert await connection.fetchval("select 1") == 1
        database = await connection.fetchval("select current_database()")
    finally:
        await connection.close()
    assert database == urlsplit(postgres_url).path.lstrip("/")
    assert database.startswith("test_")
    # The PID the fixture stops is the postmaster's, and it belongs to postgres, not to root.
    process = Path(f"/proc/{postgres_server.pid}")
    assert (process / "comm").read_text().strip() == "postgres"
    owner = process.stat().st_uid
    assert owner != 0
    assert pwd.getpwuid(owner).pw_name == "postgres"


def test_redis_answers_ping(redis_url: str) -> None:
    address = urlsplit(redis_url)
    assert address.hostname == "127.0.0.1"
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
