"""Misbehaving long-lived handlers, added to the long-lived apps with BAD=1: a websocket handler
that ignores the close (it never receives again), a feed that keeps writing to its stream after
the stream was ended (it swallows every error of the write), and a download big enough that a
client that never reads keeps the server waiting to send it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from aiohttp import web
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

CHUNK = b"x" * 65536
DOWNLOAD_CHUNKS = 1600  # 100 MiB: far more than the socket buffers hold


async def deaf_websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    await anyio.sleep(3600)


class StubbornFeed:
    """A plain ASGI app (Starlette would stop a generator's stream at the first failed send)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while True:
            with contextlib.suppress(Exception):  # the stream is gone: write again anyway
                await send({"type": "http.response.body", "body": b"data: tick\n\n",
                            "more_body": True})  # fmt: skip
            await anyio.sleep(0.1)


async def download(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(DOWNLOAD_CHUNKS):
            yield CHUNK

    return StreamingResponse(chunks(), media_type="application/octet-stream")


ASGI_ROUTES = [
    WebSocketRoute("/bad/deaf-ws", deaf_websocket),
    Route("/bad/stubborn-feed", StubbornFeed()),
    Route("/bad/download", download),
]


async def aiohttp_deaf_websocket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await asyncio.sleep(3600)
    return ws


async def aiohttp_stubborn_feed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    while True:
        with contextlib.suppress(Exception):  # the stream is gone: write again anyway
            await response.write(b"data: tick\n\n")
        await asyncio.sleep(0.1)


async def aiohttp_download(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for _ in range(DOWNLOAD_CHUNKS):
        await response.write(CHUNK)
    await response.write_eof()
    return response


def add_aiohttp_routes(app: web.Application) -> None:
    app.router.add_get("/bad/deaf-ws", aiohttp_deaf_websocket)
    app.router.add_get("/bad/stubborn-feed", aiohttp_stubborn_feed)
    app.router.add_get("/bad/download", aiohttp_download)
