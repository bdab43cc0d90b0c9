"""Figure 1: throughput and latency of ``GET /fast`` (and of ``GET /work``, 1 ms of awaited
work and a JSON body), bare server against the same app with graceful_web, loaded by wrk from
its own process.

The variants run at once, each in its own process on the server core; wrk loads one at a
time: bare, with graceful_web, and bare behind an empty middleware (one that only passes each
request on), which shows what the server charges for having any middleware at all. The order
rotates round by round (A B C, B C A, C A B, …), so that no variant always runs first, right
after the others' load. Besides wrk's requests per second and p50/p99, the server's own CPU time per
request is read from ``/stats`` around every run: on a machine that also runs other work it
moves far less than throughput, and it is what the library adds to each request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ._harness import LoadResult, Server, Spread, http_get, running, wrk

CONNECTIONS = 32
WARMUP_S = 1
RUN_S = 3


@dataclass
class Sample:
    load: LoadResult
    cpu_us_per_request: float


VARIANTS = ("bare", "graceful", "middleware")


@dataclass
class Comparison:
    server: str
    path: str = "/fast"
    bare: list[Sample] = field(default_factory=list)
    graceful: list[Sample] = field(default_factory=list)
    middleware: list[Sample] = field(default_factory=list)  # bare + an empty middleware

    def samples(self, variant: str) -> list[Sample]:
        return {"bare": self.bare, "graceful": self.graceful, "middleware": self.middleware}[
            variant
        ]

    def spread(self, variant: str, what: str) -> Spread:
        samples = self.samples(variant)
        if what == "cpu":
            return Spread.of([s.cpu_us_per_request for s in samples])
        return Spread.of([getattr(s.load, what) for s in samples])

    def _pairs(self, variant: str) -> list[tuple[Sample, Sample]]:
        return list(zip(self.bare, self.samples(variant), strict=True))

    def ratios(self, variant: str = "graceful") -> Spread:
        """Throughput of ``variant`` over bare, pair by pair."""
        return Spread.of(
            [v.load.requests_per_s / b.load.requests_per_s for b, v in self._pairs(variant)]
        )

    def cpu_ratios(self, variant: str = "graceful") -> Spread:
        """Requests per CPU second of ``variant`` over bare, pair by pair."""
        return Spread.of(
            [b.cpu_us_per_request / v.cpu_us_per_request for b, v in self._pairs(variant)]
        )

    def extra_cpu_us(self, variant: str = "graceful") -> Spread:
        return Spread.of(
            [v.cpu_us_per_request - b.cpu_us_per_request for b, v in self._pairs(variant)]
        )

    def errors(self) -> int:
        return sum(s.load.errors for s in self.bare + self.graceful + self.middleware)


def _cpu(server: Server) -> float:
    status, body = http_get(server.port, "/stats")
    if status != 200:
        raise RuntimeError(f"{server.label} answered /stats with {status}")
    return float(json.loads(body)["cpu"])


def _measure(server: Server, path: str, seconds: float) -> Sample:
    before = _cpu(server)
    load = wrk(server.port, path, seconds, CONNECTIONS)
    after = _cpu(server)
    requests = load.requests_per_s * seconds
    return Sample(load, (after - before) / max(requests, 1) * 1e6)


def compare(
    server: str, rounds: int, seconds: float = RUN_S, path: str = "/fast", warmup: float = WARMUP_S
) -> Comparison:
    result = Comparison(server, path)
    empty = {"EMPTY_MIDDLEWARE": "1"}
    with (
        running(server, graceful=False) as bare,
        running(server, graceful=True) as graceful,
        running(server, graceful=False, env=empty, variant="+ empty middleware") as middleware,
    ):
        for warm in (bare, graceful, middleware):
            wrk(warm.port, path, warmup, CONNECTIONS)
        servers = {"bare": bare, "graceful": graceful, "middleware": middleware}
        for round_ in range(rounds):
            turn = round_ % len(VARIANTS)
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                result.samples(variant).append(_measure(servers[variant], path, seconds))
    return result


def show(result: Comparison) -> str:
    lines = [f"{result.server} GET {result.path}: {len(result.bare)} rounds"]
    for variant in VARIANTS:
        lines.append(
            f"  {variant:8s} {result.spread(variant, 'requests_per_s').show(0)} req/s, "
            f"p50 {result.spread(variant, 'p50_ms').show(2)} ms, "
            f"p99 {result.spread(variant, 'p99_ms').show(2)} ms, "
            f"cpu {result.spread(variant, 'cpu').show(1)} µs/req"
        )
    lines.append(
        f"  ratio {result.ratios().show(3)} "
        f"(empty middleware {result.ratios('middleware').show(3)}); "
        f"per CPU second {result.cpu_ratios().show(3)}; extra {result.extra_cpu_us().show(2)} "
        f"µs/req; empty middleware {result.extra_cpu_us('middleware').show(2)} µs/req; "
        f"errors {result.errors()}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from ._harness import pin_cpus

    pin_cpus()
    # python -m bench.throughput [SERVER[:PATH] ...], e.g. aiohttp-uvloop uvicorn:/work
    for spec in sys.argv[1:] or ["aiohttp"]:
        name, _, path = spec.partition(":")
        print(show(compare(name, rounds=4, path=path or "/fast")), flush=True)
