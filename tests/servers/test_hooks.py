"""Drain-started and drain-finished hooks: when they run, what they get, how they are bounded."""

from __future__ import annotations

import signal

from tests.support.clients import ADAPTERS, WATCH_APP, post_job, slow_request
from tests.support.servers import StartServer


@ADAPTERS
def test_drain_started_hook_runs_at_the_signal_while_work_is_in_flight(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(WATCH_APP, env={"ADAPTER": adapter})
    pending = slow_request(server, 1500)
    server.wait_in_flight(requests=1)
    post_job(server, "h1", 1500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert pending.result().status_code == 200
    assert server.events()[0] == "started:SIGTERM:requests=1:jobs=1"


@ADAPTERS
def test_drain_finished_hook_receives_the_report(start_server: StartServer, adapter: str) -> None:
    server = start_server(WATCH_APP, env={"ADAPTER": adapter})
    pending = slow_request(server, 1000)
    server.wait_in_flight(requests=1)
    post_job(server, "h2", 500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert pending.result().status_code == 200
    assert server.events()[-1] == "finished:SIGTERM:requests=1:jobs=1:abandoned=0"
    assert server.jobs() == ["h2"]


@ADAPTERS
def test_drain_waits_for_an_async_started_hook(start_server: StartServer, adapter: str) -> None:
    server = start_server(
        WATCH_APP, env={"ADAPTER": adapter, "STARTED_HOOK": "slow", "HOOK_MS": "800"}
    )
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    events = server.events()
    assert events[1:] == ["started-hook-done", "finished:SIGTERM:requests=0:jobs=0:abandoned=0"]


@ADAPTERS
def test_a_hung_started_hook_is_cancelled_at_the_deadline(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(
        WATCH_APP, env={"ADAPTER": adapter, "STARTED_HOOK": "hang", "GRACEFUL_DRAIN_TIMEOUT": "1"}
    )
    post_job(server, "h3", 100)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0  # no protected work was abandoned
    assert "started-hook-cancelled" in server.events()
    assert "on_drain_started hook was still running at the deadline: cancelled" in server.log()
    assert server.jobs() == ["h3"]


@ADAPTERS
def test_a_failing_started_hook_is_logged_and_the_drain_goes_on(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(WATCH_APP, env={"ADAPTER": adapter, "STARTED_HOOK": "raise"})
    post_job(server, "h4", 500)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["h4"]
    assert "RuntimeError: service discovery is down" in server.log()
    assert server.events()[-1] == "finished:SIGTERM:requests=0:jobs=1:abandoned=0"


@ADAPTERS
def test_a_hung_finished_hook_is_cancelled_at_the_deadline_and_the_process_exits_0(
    start_server: StartServer, adapter: str
) -> None:
    server = start_server(
        WATCH_APP, env={"ADAPTER": adapter, "FINISHED_HOOK": "hang", "GRACEFUL_DRAIN_TIMEOUT": "1"}
    )
    post_job(server, "h5", 100)
    server.send(signal.SIGTERM)
    # Cancelled at the deadline, before the watchdog's hard exit (status 70) could fire.
    assert server.wait_exit() == 0
    assert server.jobs() == ["h5"]
    assert server.events()[-2:] == [
        "finished:SIGTERM:requests=0:jobs=1:abandoned=0",
        "finished-hook-cancelled",
    ]
    assert "on_drain_finished hook was still running after" in server.log()
    assert "hard exit" not in server.log()
