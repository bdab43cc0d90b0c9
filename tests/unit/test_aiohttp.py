"""The aiohttp adapter in process: setup's checks and the readiness route."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from graceful_web._current import current_drain
from graceful_web.aiohttp import graceful_middleware, setup


def test_setup_refuses_what_is_not_an_application() -> None:
    with pytest.raises(TypeError, match=r"setup\(\) takes an aiohttp web\.Application"):
        setup(object())  # type: ignore[arg-type]


def test_setup_twice_is_refused() -> None:
    app = web.Application()
    setup(app)
    with pytest.raises(RuntimeError, match="already called"):
        setup(app)


def test_setup_adds_the_middleware_once() -> None:
    app = web.Application(middlewares=[graceful_middleware])
    setup(app)
    assert list(app.middlewares).count(graceful_middleware) == 1


async def test_in_process_app_answers_readiness(aiohttp_client: Any) -> None:
    app = web.Application()
    setup(app, handle_signals=False)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert response.status == 200
    current_drain().begin("test")
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.text() == "draining\n"


def test_a_route_of_the_app_at_the_readiness_path_is_refused_at_setup() -> None:
    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app = web.Application()
    app.router.add_get("/readyz", mine)
    with pytest.raises(ValueError, match=r"already has a route at '/readyz'.*readiness_path=None"):
        setup(app, handle_signals=False)


async def test_without_a_readiness_path_the_app_keeps_its_own(aiohttp_client: Any) -> None:
    async def mine(request: web.Request) -> web.Response:
        return web.Response(text="mine")

    app = web.Application()
    app.router.add_get("/readyz", mine)
    setup(app, handle_signals=False, readiness_path=None)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.get("/readyz")
    assert (response.status, await response.text()) == (200, "mine")
