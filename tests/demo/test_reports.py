"""POST /reports of the demo services (demo_services/_reports.py): a durable job, served only
when GRACEFUL_DURABLE_URL names a store. `make test-swarm` runs it on PostgreSQL through a
rolling update (tests/swarm/test_swarm_durable.py); here each service runs it on SQLite, as real
processes on 127.0.0.1, one stopped with the job in flight and the next one finishing it."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.support.polling import wait_until
from tests.support.servers import StartServer

SERVICES = ["demo_services.aiohttp_service", "demo_services.asgi_service"]


def report_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("module", SERVICES)
def test_reports_are_not_served_without_a_store(
    start_server: StartServer, tmp_path: Path, module: str
) -> None:
    server = start_server(module)
    response = httpx.post(f"{server.url}/reports", params={"id": "r-1", "ms": 0}, timeout=5)
    assert response.status_code == 404
    assert httpx.post(f"{server.url}/jobs", params={"id": "j-1", "ms": 0}).status_code == 202
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["j-1"]
    assert not list(tmp_path.glob("*.sqlite3")), "a durable store was opened without a URL"


@pytest.mark.parametrize("module", SERVICES)
def test_a_report_cut_by_the_deadline_is_finished_by_the_next_process(
    start_server: StartServer, tmp_path: Path, module: str
) -> None:
    reports = tmp_path / "reports.log"
    env = {
        "GRACEFUL_DURABLE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "GRACEFUL_DRAIN_TIMEOUT": "0.5",
        "REPORTS_FILE": str(reports),
    }
    first = start_server(module, env={**env, "REPLICA": "first"}, name="first")
    for report_id, ms in (("quick", 0), ("long", 3000)):
        response = httpx.post(
            f"{first.url}/reports", params={"id": report_id, "ms": ms}, timeout=10
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"id": report_id, "accepted": True}
    wait_until(lambda: report_lines(reports) != [], 10, "the quick report")
    first.send(signal.SIGTERM)
    assert first.wait_exit() == 0, first.log()  # handed over, not abandoned
    assert "handed over job 'report-long'" in first.log()
    assert [line.split()[:3] for line in report_lines(reports)] == [["quick", "1", "first"]]

    second = start_server(module, env={**env, "REPLICA": "second"}, name="second")
    wait_until(lambda: len(report_lines(reports)) == 2, 20, "the long report, run again")
    assert report_lines(reports)[1].split()[:3] == ["long", "2", "second"]
    second.send(signal.SIGTERM)
    assert second.wait_exit() == 0, second.log()
