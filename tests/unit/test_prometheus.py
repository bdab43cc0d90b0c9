"""graceful_web.prometheus in process: a finished drain in the histogram and the counters."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest

import graceful_web.prometheus
from graceful_web import spawn
from graceful_web._config import Config
from graceful_web._current import current_drain
from tests.support.metrics import parse, value


async def test_a_finished_drain_lands_in_the_histogram_and_the_counters_by_kind() -> None:
    registry = CollectorRegistry()
    graceful_web.prometheus.register(registry)
    drain = current_drain()
    drain.configure(Config.build(drain_timeout=0.3, progress_interval=0))
    spawn(asyncio.sleep(0.05), name="quick")
    spawn(asyncio.sleep(30), name="stuck")
    drain.request_started("GET /stuck", lambda: None)  # never ends: abandoned at the deadline
    await drain.wait("test")

    samples = parse(generate_latest(registry).decode())
    assert value(samples, "graceful_drain_duration_seconds_count") == 1
    assert value(samples, "graceful_drain_duration_seconds_bucket", le="0.1") == 0
    assert value(samples, "graceful_drain_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "graceful_drained_total", kind="job") == 1
    assert value(samples, "graceful_abandoned_total", kind="job") == 1
    assert value(samples, "graceful_abandoned_total", kind="request") == 1


def test_register_twice_returns_the_same_collector() -> None:
    registry = CollectorRegistry()
    first = graceful_web.prometheus.register(registry)
    assert graceful_web.prometheus.register(registry) is first
