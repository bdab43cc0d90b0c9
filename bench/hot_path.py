"""Figure 6: what serving one request costs inside the library, with the server taken out.

Throughput on a shared machine moves by more than the library's whole cost per request, so
this figure times the request path itself: in a fresh interpreter, on the server's core, each
request's coroutine is driven to its end by hand (``coro.send(None)``; nothing in it waits),
hundreds of thousands of times. Four ways to serve the same request alternate, and each keeps
its fastest repetition, the one least disturbed by the rest of the machine:

- aiohttp: the handler called as aiohttp calls a middleware chain (``partial(m,
  handler=...)``), behind an empty middleware, and behind ``graceful_middleware``; the
  request is one ``make_mocked_request`` whose cached ``path`` is cleared each time, as a new
  request has none;
- ASGI: a plain ASGI app sending a response start and body, wrapped in an empty ASGI wrapper,
  and wrapped in ``GracefulLifespan`` after its lifespan startup, on asyncio's loop.

The difference between graceful_web and the empty middleware (wrapper) is the library's own
cost per request while serving: the floor under the throughput figures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ._harness import PY, Spread, child_json, on_server_cpu

CALLS = 200_000
REPETITIONS = 7
VARIANTS = ("handler", "empty", "graceful")


def _drive(coroutine: Coroutine[Any, Any, Any]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise RuntimeError("the request waited on something: the figure needs a path that does not")


def _time_ns(call: Callable[[], None], calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - started) / calls


def _aiohttp_calls() -> dict[str, Callable[[], None]]:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from graceful_web.aiohttp import graceful_middleware

    response = web.Response(text="ok")
    request = make_mocked_request("GET", "/fast")
    cache = request._cache  # reify's cache: a new request has no ``path`` yet

    async def handler(request: web.Request) -> web.StreamResponse:
        return response

    @web.middleware
    async def passes_on(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        return await handler(request)

    chains = {
        "handler": handler,
        "empty": partial(passes_on, handler=handler),
        "graceful": partial(graceful_middleware, handler=handler),
    }

    def serving(chain: Callable[[web.Request], Coroutine[Any, Any, Any]]) -> Callable[[], None]:
        def call() -> None:
            cache.pop("path", None)
            _drive(chain(request))

        return call

    return {variant: serving(chain) for variant, chain in chains.items()}


async def _asgi_calls(measure: Callable[[dict[str, Callable[[], None]]], None]) -> None:
    from asgi_lifespan import LifespanManager

    from graceful_web.asgi import GracefulLifespan

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain")],
    }
    body = {"type": "http.response.body", "body": b"ok"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(start)
        await send(body)

    class Passes:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await self.app(scope, receive, send)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/fast",
        "raw_path": b"/fast",
        "query_string": b"",
        "headers": [],
    }
    apps = {"handler": app, "empty": Passes(app), "graceful": GracefulLifespan(app)}
    async with LifespanManager(apps["graceful"]):
        measure(
            {
                variant: partial(_drive_app, each, scope, receive, send)
                for variant, each in apps.items()
            }
        )


def _drive_app(app: Any, scope: Any, receive: Any, send: Any) -> None:
    _drive(app(scope, receive, send))


def child(calls: int, repetitions: int) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {}

    def measure_into(family: str) -> Callable[[dict[str, Callable[[], None]]], None]:
        def measure(ways: dict[str, Callable[[], None]]) -> None:
            runs = figures.setdefault(family, {variant: [] for variant in VARIANTS})
            for way in ways.values():
                _time_ns(way, calls // 10)  # warm-up
            for repetition in range(repetitions):
                turn = repetition % len(VARIANTS)
                for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                    runs[variant].append(_time_ns(ways[variant], calls))

        return measure

    measure_into("aiohttp")(_aiohttp_calls())
    asyncio.run(_asgi_calls(measure_into("asgi")))
    return figures


@dataclass
class HotPath:
    calls: int
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def fastest(self, family: str, variant: str) -> float:
        return min(self.runs[family][variant])

    def spread(self, family: str, variant: str) -> Spread:
        return Spread.of(self.runs[family][variant])

    def extra_ns(self, family: str, over: str = "empty") -> float:
        """graceful_web's cost per request over ``over``, fastest against fastest."""
        return self.fastest(family, "graceful") - self.fastest(family, over)


def measure(calls: int = CALLS, repetitions: int = REPETITIONS) -> HotPath:
    argv = on_server_cpu([PY, "-m", "bench.hot_path", str(calls), str(repetitions)])
    return HotPath(calls, child_json(argv, timeout=300))


def show(figures: HotPath) -> str:
    lines = [f"the request path in process, {figures.calls} calls a repetition"]
    for family in figures.runs:
        cells = ", ".join(
            f"{variant} {figures.spread(family, variant).show(0)} ns" for variant in VARIANTS
        )
        lines.append(
            f"  {family}: {cells}; graceful_web over empty "
            f"{figures.extra_ns(family):+.0f} ns (fastest runs)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(child(int(sys.argv[1]), int(sys.argv[2]))))
    else:
        from ._harness import pin_cpus

        pin_cpus()
        print(show(measure()), flush=True)
