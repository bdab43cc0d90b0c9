"""What every in-process test of durable jobs shares: its module's jobs registered for it alone,
and a store of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from graceful_web.durable import DurableFunction, _functions, _settings


@pytest.fixture(autouse=True, scope="module")
def jobs_of_this_module_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """The module's jobs are registered for its tests alone: left registered, they would make
    every later in-process startup open a store."""
    mine = {
        job.name: job.registered
        for job in vars(request.module).values()
        if isinstance(job, DurableFunction)
    }
    _functions.functions.update(mine)
    yield
    for name in mine:
        _functions.functions.pop(name, None)


@pytest.fixture(autouse=True)
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A new SQLite store for each test, and no settings left from another."""
    path = tmp_path / "jobs.sqlite3"
    monkeypatch.setenv("GRACEFUL_DURABLE_URL", f"sqlite:///{path}")
    yield path
    _settings._configured.clear()
