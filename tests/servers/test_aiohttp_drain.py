"""aiohttp: a real ``web.run_app`` process, a real signal, and what clients and jobs saw."""

from __future__ import annotations

import signal
import socket
import sys
import time

import httpx
import pytest

from tests.support.clients import Background, post_job, slow_request
from tests.support.polling import wait_until
from tests.support.ports import connect_refused
from tests.support.servers import StartServer

APP = "tests.apps.aiohttp_app"


# -- 1. nothing protected is cancelled before the deadline --------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_in_flight_request_gets_its_full_response(start_server: StartServer, sig: int) -> None:
    server = start_server(APP)
    pending = slow_request(server, 1500)
    server.wait_in_flight(requests=1)
    server.send(sig)
    response = pending.result()
    assert response.status_code == 200
    assert response.text == "slept 1500 ms\n"
    assert response.headers["connection"] == "close"  # sent during the drain
    assert server.wait_exit() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_protected_job_survives_run_apps_final_cancel(start_server: StartServer, sig: int) -> None:
    server = start_server(APP)
    post_job(server, "receipt-1", 1500)
    server.wait_in_flight(jobs=1)
    server.send(sig)
    assert server.wait_exit() == 0
    assert server.jobs() == ["receipt-1"]


def test_unprotected_task_is_cancelled_as_before(start_server: StartServer) -> None:
    server = start_server(APP)
    assert httpx.post(f"{server.url}/unprotected?ms=5000&id=plain", timeout=10).status_code == 202
    post_job(server, "protected", 1000)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["protected"]
    assert "cancelled:plain" in server.events()


def test_handler_outlives_aiohttps_own_shutdown_timeout(start_server: StartServer) -> None:
    server = start_server(APP, env={"SHUTDOWN_TIMEOUT": "0.2"})
    pending = slow_request(server, 1500)
    server.wait_in_flight(requests=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0


def test_keyboard_interrupt_path_drains_too(start_server: StartServer) -> None:
    # run_app(handle_signals=False): SIGINT reaches Python's own handler (KeyboardInterrupt).
    server = start_server(APP, env={"HANDLE_SIGNALS": "0"})
    pending = slow_request(server, 1200)
    post_job(server, "after-ctrl-c", 1200)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGINT)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    assert server.jobs() == ["after-ctrl-c"]


def test_sigterm_without_aiohttp_signal_handling_still_drains_and_exits(
    start_server: StartServer,
) -> None:
    server = start_server(APP, env={"HANDLE_SIGNALS": "0"})
    post_job(server, "term", 800)
    server.wait_in_flight(jobs=1)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["term"]


# -- 2. the listener, keep-alive connections, Connection: close, readiness -----------------


def test_new_connections_are_refused_once_the_drain_starts(start_server: StartServer) -> None:
    server = start_server(APP)
    pending = slow_request(server, 2000)
    server.wait_in_flight(requests=1)
    server.send(signal.SIGTERM)
    wait_until(lambda: connect_refused(server.port), 2.0, "new connections to be refused")
    assert server.proc.poll() is None, "the server must still be draining"
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0


def test_idle_keep_alive_connection_is_closed(start_server: StartServer) -> None:
    server = start_server(APP)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        idle.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        first = idle.recv(65536)
        while not first.endswith(b"ok\n"):  # headers and body may come in two pieces
            piece = idle.recv(65536)
            assert piece, f"closed before the whole response: {first!r}"
            first += piece
        assert first.startswith(b"HTTP/1.1 200")
        assert b"Connection: close" not in first
        pending = slow_request(server, 1500)
        server.wait_in_flight(requests=1)
        server.send(signal.SIGTERM)
        # The server closes the idle connection: recv returns end-of-file well before the
        # slow request ends.
        assert idle.recv(65536) == b""
        assert pending.result().status_code == 200
    finally:
        idle.close()
    assert server.wait_exit() == 0


def test_during_pre_stop_delay_readiness_is_503_and_responses_close(
    start_server: StartServer,
) -> None:
    server = start_server(APP, env={"GRACEFUL_PRE_STOP_DELAY": "1.5"})
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    server.send(signal.SIGTERM)

    def not_ready() -> bool:
        return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503

    wait_until(not_ready, 5.0, "/readyz to answer 503")
    response = httpx.get(f"{server.url}/fast", timeout=5)
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    # The delay ends, the listener closes, the process exits.
    wait_until(lambda: connect_refused(server.port), 10.0, "the listener to close")
    assert server.wait_exit() == 0


def test_readiness_says_ready_and_nothing_else(start_server: StartServer) -> None:
    server = start_server(APP)
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 200
    assert response.text == "ready\n"
    assert response.headers["cache-control"] == "no-store"
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


# -- 3. the one deadline, the abandoned report and the exit status -------------------------


def test_deadline_abandons_the_rest_reports_it_and_exits_75(start_server: StartServer) -> None:
    server = start_server(APP, env={"GRACEFUL_DRAIN_TIMEOUT": "1"})
    post_job(server, "too-long", 60_000)
    post_job(server, "quick", 200)
    endless = slow_request(server, 60_000)
    server.wait_in_flight(requests=1, jobs=2)
    server.send(signal.SIGTERM)
    assert server.wait_exit(timeout=15) == 75
    assert server.jobs() == ["quick"]
    with pytest.raises(httpx.HTTPError):
        endless.result()  # the abandoned request's connection is closed, not answered
    # The on_abandoned callback received the work by name, so the app could re-queue it.
    assert {"abandoned:job:job-too-long", "abandoned:request:GET /slow"} <= set(server.events())
    log = server.log()
    assert "abandoned job 'job-too-long' after 1." in log
    assert "abandoned request 'GET /slow' after 1." in log
    assert "abandoned 2" in log


def test_invalid_deadline_in_environment_fails_at_startup(start_server: StartServer) -> None:
    server = start_server(APP, env={"GRACEFUL_DRAIN_TIMEOUT": "soon"}, ready_path=None)
    assert server.wait_exit(timeout=20) != 0
    assert "GRACEFUL_DRAIN_TIMEOUT='soon' is not a number of seconds" in server.log()


# -- 4. a second signal forces the exit ---------------------------------------------------


def test_second_signal_cancels_everything_and_exits_now(start_server: StartServer) -> None:
    server = start_server(APP, env={"GRACEFUL_DRAIN_TIMEOUT": "60"})
    post_job(server, "endless", 60_000)
    pending = slow_request(server, 60_000)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)
    server.wait_for_log("drain started (SIGTERM)")
    server.send(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 128 + signal.SIGTERM
    with pytest.raises(httpx.HTTPError):
        pending.result()
    log = server.log()
    assert "second signal (SIGTERM)" in log
    assert "abandoned job 'job-endless'" in log
    assert "abandoned request 'GET /slow'" in log


# -- 5. jobs spawned during the drain -----------------------------------------------------


def test_job_spawned_by_an_in_flight_request_during_the_drain_is_kept(
    start_server: StartServer,
) -> None:
    server = start_server(APP)
    url = f"{server.url}/spawn-after?ms=800&id=follow"
    pending = Background(lambda: httpx.get(url, timeout=30))
    server.wait_in_flight(requests=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    assert "follow" in server.jobs()


def test_job_spawned_from_elsewhere_during_the_drain_is_refused_loudly(
    start_server: StartServer,
) -> None:
    server = start_server(APP)
    pending = slow_request(server, 800)
    server.wait_in_flight(requests=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    assert "outsider-accepted" not in server.jobs()
    refused = [line for line in server.events() if line.startswith("outsider-refused")]
    assert len(refused) == 1
    assert "this job was not started" in refused[0]
    assert "refused 1 jobs" in server.log()


# -- 6. a failing job does not stop the others ---------------------------------------------


def test_failing_job_is_logged_with_traceback_and_others_still_drain(
    start_server: StartServer,
) -> None:
    server = start_server(APP)
    assert httpx.post(f"{server.url}/failing?id=boom&ms=300", timeout=10).status_code == 202
    post_job(server, "survivor", 800)
    server.wait_in_flight(jobs=2)
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert server.jobs() == ["survivor"]
    log = server.log()
    assert "protected job 'fail-boom' failed" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: job boom exploded" in log
    assert "drained 0 requests and 2 jobs (1 failed)" in log


# -- 7. one log line at the start, one at the end -----------------------------------------


def test_drain_logs_one_line_when_it_starts_and_one_when_it_ends(start_server: StartServer) -> None:
    server = start_server(APP)
    pending = slow_request(server, 700)
    post_job(server, "logged", 700)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    log = server.log()
    assert log.count("drain started") == 1
    assert "drain started (SIGTERM): 1 requests and 1 jobs in flight, deadline in 25.0 s" in log
    assert log.count("drain finished") == 1
    assert "drained 1 requests and 1 jobs (0 failed), refused 1 jobs, abandoned 0" in log


# -- 8. AppRunner / TCPSite and gunicorn --------------------------------------------------


def test_app_runner_and_tcp_site_drain_on_sigterm(start_server: StartServer) -> None:
    server = start_server(APP, env={"MODE": "runner"})
    pending = slow_request(server, 1200)
    post_job(server, "runner-job", 1200)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    assert server.jobs() == ["runner-job"]


def test_gunicorn_aiohttp_worker_drains_on_sigterm(start_server: StartServer) -> None:
    server = start_server(
        [
            sys.executable, "-m", "gunicorn", "tests.apps.aiohttp_app:build()",
            "--worker-class", "aiohttp.GunicornWebWorker", "--bind", "127.0.0.1:{port}",
            "--workers", "1", "--graceful-timeout", "30",
        ]
    )
    pending = slow_request(server, 1500)
    post_job(server, "gunicorn-job", 1500)
    server.wait_in_flight(requests=1, jobs=1)
    server.send(signal.SIGTERM)  # to the arbiter, which passes it to its worker
    assert pending.result().status_code == 200
    assert server.wait_exit() == 0
    assert server.jobs() == ["gunicorn-job"]


# -- middleware without setup() ------------------------------------------------------------


def test_middleware_without_setup_warns_once_at_startup(start_server: StartServer) -> None:
    server = start_server(APP, env={"MODE": "unwired"})
    log = server.log()
    assert log.count("graceful_middleware is installed but graceful_web.aiohttp.setup(app)") == 1
    httpx.get(f"{server.url}/healthz", timeout=5)
    assert server.log().count("setup(app) was not called") == 1


# -- 9. nothing to drain ------------------------------------------------------------------


def test_nothing_to_drain_exits_at_once_with_status_0(start_server: StartServer) -> None:
    server = start_server(APP)
    started = time.monotonic()
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    elapsed = time.monotonic() - started
    assert "drained 0 requests and 0 jobs" in server.log()
    # Not a speed assertion (bench/ measures that): only that it did not sit out the deadline.
    assert elapsed < 25.0
