"""Progress lines while draining: counts, the oldest piece of work, time left, as JSON fields."""

from __future__ import annotations

import signal

from tests.support.clients import (
    ADAPTERS,
    FIELDS,
    WATCH_APP,
    json_records,
    post_job,
    progress_records,
    slow_request,
)
from tests.support.servers import StartServer


@ADAPTERS
def test_draining_logs_progress_with_counts_oldest_and_time_left_as_json_fields(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(
        WATCH_APP,
        env={
            "ADAPTER": adapter,
            "GRACEFUL_PROGRESS_INTERVAL": "0.2",
            "GRACEFUL_DRAIN_TIMEOUT": "20",
        },
    )
    pending = slow_request(server, 2000)
    server.wait_in_flight(requests=1)
    post_job(server, "p1", 800)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert pending.result().status_code == 200

    progress = progress_records(server)
    assert len(progress) >= 3, server.log()
    assert all(record.keys() >= FIELDS for record in progress), progress[0]
    first, last = progress[0], progress[-1]
    assert (first["graceful_requests"], first["graceful_jobs"]) == (1, 1)
    assert (last["graceful_requests"], last["graceful_jobs"]) == (1, 0)  # the job ended first
    # The request came before the job: it is the oldest, and it ages while the deadline nears.
    assert {r["graceful_oldest_name"] for r in progress} == {"GET /slow"}
    assert {r["graceful_oldest_kind"] for r in progress} == {"request"}
    ages = [r["graceful_oldest_age_s"] for r in progress]
    remaining = [r["graceful_remaining_s"] for r in progress]
    assert ages == sorted(ages) and ages[0] < ages[-1]
    assert remaining == sorted(remaining, reverse=True) and remaining[0] <= 20
    assert "draining: 1 requests and 1 jobs left, oldest request 'GET /slow'" in first["message"]


@ADAPTERS
def test_progress_is_silent_when_nothing_is_left(start_server: StartServer, adapter: str) -> None:
    # A slow drain-started hook keeps the drain open with no protected work in flight.
    server = start_server(
        WATCH_APP,
        env={
            "ADAPTER": adapter,
            "GRACEFUL_PROGRESS_INTERVAL": "0.1",
            "STARTED_HOOK": "slow",
            "HOOK_MS": "1000",
        },
    )
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert "started-hook-done" in server.events()  # the drain lasted ten intervals
    messages = [r["message"] for r in json_records(server)]
    assert any(m.startswith("drain finished") for m in messages), messages
    assert progress_records(server) == []
