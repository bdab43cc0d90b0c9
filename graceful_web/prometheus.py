"""Prometheus metrics of the drain, for either adapter.

``pip install 'graceful-web[prometheus]'``, then call ``register()`` once at startup and expose
the registry as usual (``prometheus_client.start_http_server(9100)`` keeps answering while the
web listener is closed for the drain). Gauges are read from the drain state at scrape time, so
serving a request costs nothing more than without metrics; the core never imports this module.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

from . import _current, _drain
from . import durable as _durable
from ._drain import Drain, Phase
from ._report import DrainReport

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "graceful_web.prometheus needs prometheus_client: pip install 'graceful-web[prometheus]'"
    ) from exc

__all__ = ["DURATION_BUCKETS", "DrainCollector", "register"]

#: Upper bounds (seconds) of the drain duration histogram; they span the usual deadlines.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0, 120.0)

KINDS = ("request", "job")


class DrainCollector(Collector):
    """Reads every event loop's drain when scraped; folds in each drain's report as it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reported: weakref.WeakSet[Drain] = weakref.WeakSet()
        self._drained = dict.fromkeys(KINDS, 0)
        self._abandoned = dict.fromkeys(KINDS, 0)
        self._refused_jobs = 0
        self._bucket_counts = [0] * len(DURATION_BUCKETS)
        self._duration_count = 0
        self._duration_sum = 0.0
        _collectors.add(self)

    def _add_report(self, drain: Drain, report: DrainReport) -> None:
        with self._lock:
            if drain in self._reported:
                return
            self._reported.add(drain)
            self._drained["request"] += report.drained_requests
            self._drained["job"] += report.drained_jobs
            for work in report.abandoned:
                self._abandoned[work.kind] += 1
            self._refused_jobs += report.refused_jobs
            self._duration_count += 1
            self._duration_sum += report.duration
            for index, bound in enumerate(DURATION_BUCKETS):
                if report.duration <= bound:
                    self._bucket_counts[index] += 1

    def collect(self) -> Iterator[Metric]:
        drains = _live_drains()
        requests = jobs = 0
        states = dict.fromkeys((phase.value for phase in Phase), 0)
        with self._lock:
            drained = dict(self._drained)
            abandoned = dict(self._abandoned)
            refused = self._refused_jobs
            for drain in drains:
                requests += drain.requests_in_flight
                jobs += drain.jobs_in_flight
                states[drain.phase.value] += 1
                if drain.started_at is None or drain.report is not None or drain in self._reported:
                    continue
                # A drain still running: its work counts the moment it finishes.
                drained["request"] += drain.drained_requests
                drained["job"] += drain.drained_jobs
                for work in tuple(drain._abandoned):
                    abandoned[work.kind] += 1
                refused += drain.refused_jobs
            buckets = [
                (_bound(bound), count)
                for bound, count in zip(DURATION_BUCKETS, self._bucket_counts, strict=True)
            ]
            buckets.append(("+Inf", self._duration_count))
            duration_sum = self._duration_sum

        yield GaugeMetricFamily(
            "graceful_requests_in_flight", "Protected requests in flight.", value=requests
        )
        yield GaugeMetricFamily(
            "graceful_jobs_in_flight", "Protected background jobs in flight.", value=jobs
        )
        state = GaugeMetricFamily(
            "graceful_drain_state",
            "1 for the drain state of the event loop (serving, draining, stopped).",
            labels=["state"],
        )
        for name, count in states.items():
            state.add_metric([name], count)
        yield state
        yield HistogramMetricFamily(
            "graceful_drain_duration_seconds",
            "Seconds from the start of a drain to the end of its waiting.",
            buckets=buckets,
            sum_value=duration_sum,
        )
        drained_family = CounterMetricFamily(
            "graceful_drained",
            "Protected requests and jobs that finished during a drain.",
            labels=["kind"],
        )
        abandoned_family = CounterMetricFamily(
            "graceful_abandoned",
            "Protected requests and jobs cancelled at the deadline or by a second signal.",
            labels=["kind"],
        )
        for kind in KINDS:
            drained_family.add_metric([kind], drained[kind])
            abandoned_family.add_metric([kind], abandoned[kind])
        yield drained_family
        yield abandoned_family
        yield CounterMetricFamily(
            "graceful_refused_jobs",
            "Jobs refused with ShutdownInProgress because the drain had started.",
            value=refused,
        )
        durable_family = CounterMetricFamily(
            "graceful_durable_jobs",
            "Durable jobs of this process by what befell them: recorded, refused (the store "
            "could not record them: answered 503), completed, failed (an attempt raised), dead "
            "(out of attempts: kept, never run again), handed_over (cancelled at the deadline, "
            "left for a successor), recovered (claimed from the store: retries, or left by "
            "other processes).",
            labels=["outcome"],
        )
        for outcome, count in tuple(_durable.counts.items()):
            durable_family.add_metric([outcome], count)
        yield durable_family


def _bound(bound: float) -> str:
    return repr(float(bound))


def _live_drains() -> list[Drain]:
    # Scrapes may come from another thread (prometheus_client's HTTP server) while a loop
    # creates its drain; a retry covers the rare "changed size during iteration".
    for _ in range(5):
        try:
            return list(_current.drains.values())
        except RuntimeError:
            continue
    return []


_collectors: weakref.WeakSet[DrainCollector] = weakref.WeakSet()
_registered: weakref.WeakKeyDictionary[CollectorRegistry, DrainCollector] = (
    weakref.WeakKeyDictionary()
)
_register_lock = threading.Lock()


def _on_report(drain: Drain, report: DrainReport) -> None:
    for collector in tuple(_collectors):
        collector._add_report(drain, report)


if _on_report not in _drain.report_listeners:
    _drain.report_listeners.append(_on_report)


def register(registry: CollectorRegistry = REGISTRY) -> DrainCollector:
    """Add the drain metrics to ``registry`` (prometheus_client's default one unless given).

    Calling it again for the same registry returns the collector already registered.
    """
    with _register_lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = DrainCollector()
            registry.register(collector)
            _registered[registry] = collector
        return collector
