"""A service whose durable jobs have steps, idempotency keys, a status and a cancel, for the
tests that kill, stop and restart it (Starlette under uvicorn).

``POST /steps?run=R&n=N&ms=M`` spawns ``in_steps(R, N, M)``: N steps named ``part``, each
sleeping M ms then noting ``step R <i> <pid> <attempt>`` (its side effect, after the sleep, so
a step cut while running left none) and giving i*i; the job then notes
``result R <json list> <pid>``. ``POST /plain?...`` spawns the same work without steps.
``POST /keyed?payload=P`` with an ``Idempotency-Key`` header spawns ``keyed(P)`` under it (409
for the key with another payload). ``POST /long?run=R&ms=M`` spawns a job that notes
``start``, sleeps, then ``end`` (``cancelled`` when cancelled). ``POST /fails?run=R`` spawns a
job that always raises (2 attempts). Each answers 202 ``{"id": ...}`` with ``Location:
/jobs/{id}``; ``GET /jobs/{id}`` is its status, ``DELETE /jobs/{id}`` cancels it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

from demo_services._contract import append_job_record, configure_logging
from graceful_web import ShutdownInProgress, durable


def _note(*words: object) -> None:
    append_job_record(" ".join(str(word) for word in words))


async def part(run: str, i: int, ms: int) -> int:
    await asyncio.sleep(ms / 1000)
    _note("step", run, i, os.getpid(), durable.current().attempt)
    return i * i


@durable.job(name="tests.in_steps")
async def in_steps(run: str, n: int, ms: int) -> None:
    results = [await durable.step("part", part, run, i, ms) for i in range(1, n + 1)]
    _note("result", run, json.dumps(results, separators=(",", ":")), os.getpid())


@durable.job(name="tests.without_steps")
async def without_steps(run: str, n: int, ms: int) -> None:
    _note("start", run, os.getpid(), durable.current().attempt)
    await asyncio.sleep(n * ms / 1000)
    _note("result", run, json.dumps([i * i for i in range(1, n + 1)]), os.getpid())


@durable.job(name="tests.keyed")
async def keyed(payload: str) -> None:
    _note("keyed", payload, os.getpid())
    await asyncio.sleep(0.3)


@durable.job(name="tests.long")
async def long(run: str, ms: int) -> None:
    _note("start", run, os.getpid(), durable.current().attempt)
    try:
        await asyncio.sleep(ms / 1000)
    except asyncio.CancelledError:
        _note("cancelled", run, os.getpid())
        raise
    _note("end", run, os.getpid())


@durable.job(name="tests.fails", max_attempts=2)
async def fails(run: str) -> None:
    _note("start", run, os.getpid(), durable.current().attempt)
    raise RuntimeError(f"{run} fails on purpose")


def app_() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from graceful_web.asgi import GracefulLifespan

    async def accepted(call: durable.DurableCall[None], key: str | None = None) -> Response:
        try:
            job_id = await durable.spawn(call, key=key)
        except ShutdownInProgress:
            return PlainTextResponse("draining\n", status_code=503)
        except durable.KeyConflict as exc:
            return PlainTextResponse(f"{exc}\n", status_code=409)
        location = {"Location": f"/jobs/{job_id}"}
        answer = {"id": job_id, "pid": os.getpid()}
        return JSONResponse(answer, status_code=202, headers=location)

    def work(request: Request) -> tuple[str, int, int]:
        query = request.query_params
        return query["run"], int(query.get("n", "10")), int(query.get("ms", "100"))

    async def steps(request: Request) -> Response:
        return await accepted(in_steps(*work(request)))

    async def plain(request: Request) -> Response:
        return await accepted(without_steps(*work(request)))

    async def keyed_(request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        return await accepted(keyed(request.query_params["payload"]), key)

    async def long_(request: Request) -> Response:
        query = request.query_params
        return await accepted(long(query["run"], int(query.get("ms", "1000"))))

    async def fails_(request: Request) -> Response:
        return await accepted(fails(request.query_params["run"]))

    async def job(request: Request) -> Response:
        job_id = request.path_params["id"]
        if request.method == "DELETE":
            return JSONResponse({"cancelled": await durable.cancel(job_id)})
        return JSONResponse(dataclasses.asdict(await durable.status(job_id)))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    inner = Starlette(
        routes=[
            Route("/steps", steps, methods=["POST"]),
            Route("/plain", plain, methods=["POST"]),
            Route("/keyed", keyed_, methods=["POST"]),
            Route("/long", long_, methods=["POST"]),
            Route("/fails", fails_, methods=["POST"]),
            Route("/jobs/{id}", job, methods=["GET", "DELETE"]),
            Route("/healthz", healthz),
        ]
    )
    return GracefulLifespan(inner)


configure_logging()
app = app_()
