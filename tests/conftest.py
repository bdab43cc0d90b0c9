"""Fixtures that start real server processes and stores on 127.0.0.1 and stop them by PID
(what they are made of lives in tests/support)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.servers import Servers, StartServer
from tests.support.stores import PostgresServer, fresh_database, run_postgres, run_redis

# tests/docker needs a Docker engine and builds images: `make test-docker` runs it.
collect_ignore = [] if os.environ.get("GRACEFUL_DOCKER_TESTS") == "1" else ["docker"]
collect_ignore += [] if os.environ.get("GRACEFUL_SWARM_TESTS") == "1" else ["swarm"]
# tests/reload runs every server through its own reload signal under load: `make test-reload`.
collect_ignore += [] if os.environ.get("GRACEFUL_RELOAD_TESTS") == "1" else ["reload"]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """``start(argv, env=None, ready_path="/healthz", port=None, name="server")`` (see
    tests/support/servers.py): every process is killed by PID when the test ends, whatever
    happened."""
    servers = Servers(tmp_path)
    try:
        yield servers.start
    finally:
        servers.stop_all()


# Real stores (tests/support/stores.py): one PostgreSQL and one Redis server per session, on free
# ports of 127.0.0.1, from the packages `make test` installs; missing ones fail the test, never
# skip.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server run by the postgres user; ``.url`` is its ``postgres`` database."""
    with run_postgres(free_port()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a database made for this test alone (test_<random>), dropped after it."""
    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a redis-server that persists nothing."""
    with run_redis(free_port()) as url:
        yield url
