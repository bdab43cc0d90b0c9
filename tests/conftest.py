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


# -- what runs under every Python and with the lowest versions -------------------------------
# `make test` runs every test once, on the machine's Python. `make test-pythons` (each newer
# Python) and `make test-lowest` (the lowest dependency versions) run `make test-portable`: only
# the tests marked portable here, what a Python version or an older dependency can break on its
# own. That is every in-process test, and as real processes: every server on each of its loops,
# the connections graceful_web finds inside each server, each server's log format, the stores,
# websockets and run(). The long scenarios (faults, the drain's cases, durable fleets, docs,
# demo, soak) depend on neither and run once.
PORTABLE = (
    "tests/unit/",
    "tests/servers/test_servers_and_loops.py",
    "tests/servers/test_without_lifespan.py::test_requests_and_jobs_in_flight_are_drained",
    "tests/servers/test_without_lifespan.py::test_daphne_websockets_through_channels_are_closed_by_the_drain",
    "tests/servers/test_connections_at_stop.py::test_an_idle_keep_alive_connection_gets_its_next_request_answered",
    "tests/servers/test_connections_at_stop.py::test_a_connection_still_idle_after_the_grace_is_closed_and_the_process_exits",
    "tests/servers/test_log_output.py::test_lines_appear_once_in_the_servers_own_format",
    "tests/servers/test_durable_jobs.py::test_a_job_that_keeps_failing_is_kept_as_dead_after_its_attempts",
    "tests/servers/test_asgi_drain.py::test_websockets_are_closed_with_1012_after_the_grace",
    "tests/servers/test_run.py::test_protected_jobs_finish_and_unprotected_tasks_are_cancelled",
)  # fmt: skip


def _portable(nodeid: str, entry: str) -> bool:
    """A folder or a file covers what it holds; a test, each of its parameters."""
    if entry.endswith(("/", ".py")):
        return nodeid.startswith(entry if entry.endswith("/") else entry + "::")
    return nodeid == entry or nodeid.startswith(entry + "[")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    used = set()
    for item in items:
        for entry in PORTABLE:
            if _portable(item.nodeid, entry):
                item.add_marker(pytest.mark.portable)
                used.add(entry)
    # A renamed file or test must not fall out of the portable runs unseen (an entry whose file
    # this run did not collect, as in the uvloop run of a few files, is simply not here).
    if config.getoption("markexpr") == "portable":
        collected = {item.nodeid.split("::")[0] for item in items}
        for entry in set(PORTABLE) - used:
            path = entry.split("::")[0]
            if not (config.rootpath / path).exists() or path in collected:
                raise pytest.UsageError(f"PORTABLE in tests/conftest.py: nothing is {entry}")


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
