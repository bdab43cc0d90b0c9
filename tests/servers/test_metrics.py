"""Prometheus metrics of the drain, scraped from real demo services while they drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import httpx
import pytest

from tests.support.clients import post_job, slow_request
from tests.support.metrics import Samples, parse, value
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.servers import ROOT, StartServer

#: The demo service of each adapter: aiohttp's, and Starlette in GracefulLifespan on uvicorn.
SERVICES = ["demo_services.aiohttp_service", "demo_services.asgi_service"]


def scrape(port: int) -> Samples:
    return parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_move_during_a_real_drain(start_server: StartServer, service: str) -> None:
    metrics_port = free_port()
    server = start_server(service, env={"METRICS_PORT": str(metrics_port)})
    short, long = slow_request(server, 1000), slow_request(server, 4000)
    post_job(server, "m-short", 1000)
    post_job(server, "m-long", 4000)
    wait_until(
        lambda: value(scrape(metrics_port), "graceful_requests_in_flight") == 2,
        10,
        "two requests in flight",
    )
    serving = scrape(metrics_port)
    assert value(serving, "graceful_jobs_in_flight") == 2
    assert value(serving, "graceful_drain_state", state="serving") == 1
    assert value(serving, "graceful_drained_total", kind="request") == 0

    server.send(signal.SIGTERM)
    seen: list[Samples] = []

    def short_ones_drained() -> bool:
        seen.append(scrape(metrics_port))
        return (
            value(seen[-1], "graceful_drained_total", kind="request") == 1
            and value(seen[-1], "graceful_drained_total", kind="job") == 1
        )

    wait_until(short_ones_drained, 10, "the short request and job to be counted as drained")
    draining = seen[-1]
    assert value(draining, "graceful_drain_state", state="draining") == 1
    assert value(draining, "graceful_requests_in_flight") == 1
    assert value(draining, "graceful_jobs_in_flight") == 1
    assert value(draining, "graceful_abandoned_total", kind="job") == 0
    assert server.wait_exit() == 0
    assert short.result().status_code == long.result().status_code == 200
    assert sorted(server.jobs()) == ["m-long", "m-short"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_core_and_the_adapter_never_import_prometheus_client() -> None:
    result = run_python(
        """
        import asyncio, sys
        import graceful_web, graceful_web.aiohttp, graceful_web.asgi
        from graceful_web._current import current_drain

        async def main():
            current_drain().spawn(asyncio.sleep(0.01))
            await current_drain().wait("test")

        asyncio.run(main())
        print("prometheus_client" in sys.modules)
        """
    )
    assert result.stdout.strip() == "False", result.stderr


def test_without_prometheus_client_the_error_names_the_extra() -> None:
    result = run_python(
        """
        import sys
        sys.modules["prometheus_client"] = None
        import graceful_web.prometheus
        """
    )
    assert "pip install 'graceful-web[prometheus]'" in result.stderr
