"""In-process checks of GracefulLifespan: setup errors and the lifespan conversation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from graceful_web._current import current_drain
from graceful_web.asgi import GracefulLifespan


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello\n")


class Asgi2App:
    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return [b""]


async def two_arguments(scope: Any, receive: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (object(), "not callable"),
        (Asgi2App, "looks like an ASGI 2 app"),
        (wsgi_app, "a plain function (a WSGI app?)"),
        (two_arguments, "takes 2 positional arguments, not 3"),
    ],
)
def test_wrapping_something_that_is_not_an_asgi3_app_fails_at_setup(
    app: Any, message: str
) -> None:
    with pytest.raises(TypeError, match=r"pass the ASGI 3 application itself") as error:
        GracefulLifespan(app)
    assert message in str(error.value)


@pytest.mark.parametrize("grace", [-1, 30, "soon"])
def test_a_long_lived_grace_outside_the_deadline_fails_at_setup(grace: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="long_lived_grace"):
        GracefulLifespan(Starlette(), drain_timeout=10, long_lived_grace=grace)


@pytest.mark.parametrize("code", [1006, 999, 5000, "1012", True])
def test_a_close_code_no_endpoint_may_send_fails_at_setup(code: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="websocket_close_code"):
        GracefulLifespan(Starlette(), websocket_close_code=code)


def test_a_negative_deadline_fails_at_setup() -> None:
    with pytest.raises(ValueError, match="drain_timeout must be more than zero"):
        GracefulLifespan(Starlette(), drain_timeout=-1)


async def test_readiness_answers_ready_then_draining_and_says_nothing_else() -> None:
    app = GracefulLifespan(Starlette(routes=[Route("/hello", hello)]), drain_timeout=5)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ready = await client.get("/readyz?verbose=1")
            assert (ready.status_code, ready.text) == (200, "ready\n")
            current_drain().begin("test")
            draining = await client.get("/readyz")
            assert (draining.status_code, draining.text) == (503, "draining\n")
            served = await client.get("/hello")
            assert served.headers["connection"] == "close"


async def test_an_inner_app_without_lifespan_still_starts_and_stops() -> None:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("only http here")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = GracefulLifespan(plain, drain_timeout=5)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).status_code == 204
    assert current_drain().report is not None  # the drain ran at lifespan shutdown


async def test_an_inner_startup_failure_is_passed_on() -> None:
    async def failing_lifespan(app: Starlette) -> Any:
        raise RuntimeError("no database")
        yield  # pragma: no cover

    import contextlib

    inner = Starlette(lifespan=contextlib.asynccontextmanager(failing_lifespan))
    with pytest.raises(RuntimeError, match="no database"):
        async with LifespanManager(GracefulLifespan(inner, drain_timeout=5)):
            pass


async def test_a_follow_up_job_from_an_endpoint_in_a_task_of_its_own_is_accepted_while_draining(
) -> None:
    # Starlette's BaseHTTPMiddleware runs the endpoint in a task of its own: a job it spawns
    # during the drain is still the follow-up work of a request in flight.
    import asyncio

    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

    import graceful_web

    entered, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def follow_up() -> None:
        ran.append("follow-up")

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        graceful_web.spawn(follow_up(), name="follow-up")
        return PlainTextResponse("done")

    async def passing_on(request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)

    inner = Starlette(
        routes=[Route("/slow", slow)],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=passing_on)],
    )
    app = GracefulLifespan(inner, drain_timeout=5, progress_interval=0)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            pending = asyncio.ensure_future(client.get("/slow"))
            await asyncio.wait_for(entered.wait(), 5)
            drain = current_drain()
            drain.begin("test")
            assert drain.requests_in_flight == 1
            release.set()
            response = await asyncio.wait_for(pending, 5)
            report = await drain.wait("test")
    assert (response.status_code, response.text) == (200, "done")
    assert ran == ["follow-up"]
    assert (report.drained_requests, report.drained_jobs, report.refused_jobs) == (1, 1, 0)
