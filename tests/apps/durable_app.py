"""A service whose work is durable jobs, for the tests that kill, stop and reload it.

``POST /jobs?id=X&ms=N`` spawns ``record_run(X, N)`` and answers 202 once it is recorded;
``POST /jobs?id=X&fail=1`` spawns a job that always raises. Every run of a job writes
``start <id> <attempt> <pid> <time>`` to JOBS_FILE as it begins and ``end ...`` when it has
finished, so a test can count what ran, what ran twice and whether two runs overlapped.

APP=asgi (default: Starlette under any ASGI server, ``app``) | aiohttp (``aiohttp_app()`` for
gunicorn's aiohttp workers; ``python -m tests.apps.durable_app`` serves it with run_app).
"""

from __future__ import annotations

import asyncio
import os
import time

from demo_services._contract import append_job_record, configure_logging
from graceful_web import ShutdownInProgress, durable, spawn
from graceful_web._current import current_drain
from graceful_web.durable import _journal


def _note(event: str, job_id: str) -> None:
    info = durable.current()
    append_job_record(f"{event} {job_id} {info.attempt} {os.getpid()} {time.time():.6f}")


@durable.job(name="tests.record_run")
async def record_run(job_id: str, ms: int) -> None:
    _note("start", job_id)
    await asyncio.sleep(ms / 1000)
    _note("end", job_id)


@durable.job(name="tests.always_fails", max_attempts=2)
async def always_fails(job_id: str) -> None:
    _note("start", job_id)
    raise RuntimeError(f"job {job_id} fails on purpose")


def _accept(job_id: str, ms: int, fail: bool) -> tuple[int, str]:
    try:
        spawn(always_fails(job_id) if fail else record_run(job_id, ms))
    except ShutdownInProgress:
        return 503, "draining\n"
    return 202, f"accepted {job_id}\n"


def _stats() -> dict[str, int]:
    drain = current_drain()
    return {"jobs": drain.jobs_in_flight, "unwritten": _journal.state.unwritten, "pid": os.getpid()}


async def _dead() -> list[dict[str, object]]:
    return [
        {"id": job.id, "name": job.name, "args": job.args, "failures": job.failures,
         "error": job.error}
        for job in await durable.dead_jobs()
    ]


def asgi_app() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from graceful_web.asgi import GracefulLifespan

    async def jobs(request: Request) -> Response:
        status, text = _accept(
            request.query_params["id"],
            int(request.query_params.get("ms", "100")),
            request.query_params.get("fail") == "1",
        )
        return PlainTextResponse(text, status_code=status)

    async def stats(request: Request) -> Response:
        return JSONResponse(_stats())

    async def dead(request: Request) -> Response:
        return JSONResponse(await _dead())

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    inner = Starlette(
        routes=[
            Route("/jobs", jobs, methods=["POST"]),
            Route("/_stats", stats),
            Route("/dead", dead),
            Route("/healthz", healthz),
        ]
    )
    return GracefulLifespan(inner)


def aiohttp_app() -> object:
    from aiohttp import web

    import graceful_web.aiohttp

    async def jobs(request: web.Request) -> web.Response:
        query = request.query
        status, text = _accept(query["id"], int(query.get("ms", "100")), query.get("fail") == "1")
        return web.Response(status=status, text=text)

    async def streamed(request: web.Request) -> web.StreamResponse:
        # Prepared by the handler itself: its headers leave before the middleware sees it.
        spawn(record_run(request.query["id"], int(request.query.get("ms", "100"))))
        response = web.StreamResponse(status=202)
        await response.prepare(request)
        await response.write(b"accepted\n")
        return response

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(_stats())

    async def dead(request: web.Request) -> web.Response:
        return web.json_response(await _dead())

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_post("/jobs", jobs)
    app.router.add_post("/jobs-streamed", streamed)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/dead", dead)
    app.router.add_get("/healthz", healthz)
    graceful_web.aiohttp.setup(app)
    return app


configure_logging()
app = asgi_app() if os.environ.get("APP", "asgi") == "asgi" else None

if __name__ == "__main__":
    from aiohttp import web

    loop_kind = os.environ.get("LOOP", "asyncio")
    if loop_kind == "uvloop":
        import uvloop

        uvloop.install()
    web.run_app(aiohttp_app(), host="127.0.0.1", port=int(os.environ["PORT"]))  # type: ignore[arg-type]
