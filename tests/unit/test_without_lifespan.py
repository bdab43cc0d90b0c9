"""In-process checks of GracefulLifespan's start without lifespan
(graceful_web/_without_lifespan.py); the servers themselves: tests/servers/test_without_lifespan.py.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from graceful_web.asgi import GracefulLifespan

WARNING = "the server sent no lifespan startup before this request"


async def hello(request: Request) -> Response:
    await asyncio.sleep(0.01)
    return PlainTextResponse("hello\n")


async def test_a_test_client_without_lifespan_is_served_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A process that does not handle SIGTERM is no server's: nothing is installed there.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    app = GracefulLifespan(Starlette(routes=[Route("/hello", hello)]), drain_timeout=5)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.INFO, logger="graceful_web"):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(*(client.get("/hello") for _ in range(5)))
            responses.append(await client.get("/hello"))
    assert [r.text for r in responses] == ["hello\n"] * 6
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "nothing in this process handles SIGTERM" in warnings[0]
    assert "--lifespan on" in warnings[0]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
