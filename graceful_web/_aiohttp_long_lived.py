"""aiohttp's websockets and reconnectable streams, found for the drain when it ends them.

While serving nothing is registered: when ``long_lived_grace`` is over, each request in flight
(``_census``) is looked through for a prepared ``WebSocketResponse`` or streamed response in
its handler's locals. A websocket is closed with aiohttp's own ``close()``, which hands the
handler's ``receive()`` (``async for msg in ws``) the end of the connection; a stream's
handler is cancelled, and the middleware then ends its body (``write_eof``) and returns it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator, Mapping
from functools import partial
from typing import Any

import anyio
from aiohttp import web

from . import _census
from ._config import CLOSE_HANDSHAKE_TIME
from ._current import current_drain
from ._long_lived import End, Finder, Kind, LongLived, reconnectable

logger = logging.getLogger("graceful_web")

#: The stream of each request task the drain is ending, until the middleware ended its body.
ending: dict[asyncio.Task[Any], web.StreamResponse] = {}


def finder(close_code: int) -> Finder:
    """What finds this process's open websockets and reconnectable streams."""

    def open_connections() -> Iterator[tuple[object, Kind, End]]:
        long_lived = current_drain().long_lived
        for task, call in _census.requests_in_flight(asyncio.get_running_loop()).items():
            for local_values in _census.awaited_locals(call):
                found = _connection(local_values, task, call, close_code, long_lived)
                if found is not None:
                    yield task, *found
                    break

    return open_connections


def _connection(
    local_values: Mapping[str, Any],
    task: asyncio.Task[Any],
    call: Any,
    code: int,
    long_lived: LongLived,
) -> tuple[Kind, End] | None:
    for value in local_values.values():
        if isinstance(value, web.WebSocketResponse):
            if value.prepared and not value.closed:
                return "websocket", partial(_close_websocket, value, task, call, code, long_lived)
        elif (
            isinstance(value, web.StreamResponse)
            and not isinstance(value, web.Response)
            and value.prepared
            and reconnectable(value.content_type, task)
        ):
            return "stream", partial(_end_stream, value, task)
    return None


async def _close_websocket(
    websocket: web.WebSocketResponse,
    task: asyncio.Task[Any],
    call: Any,
    code: int,
    long_lived: LongLived,
) -> Awaitable[None]:
    # close() hands the handler's receive() the end, then waits for the client's answer
    # (bounded with every other close by the drain, _long_lived).
    try:
        await websocket.close(code=code, message=b"service restart")
    except asyncio.CancelledError:
        # close() waits for the handler's receive() to take the end (then for the client's
        # answer): a handler that never receives is cancelled here, its one line said.
        if not task.done():
            _handler_cancelled(task, call, code)
        raise
    finally:
        if websocket.closed:
            long_lived.ended("websocket")
    return _handler_returns(task, call, code)


async def _handler_returns(task: asyncio.Task[Any], call: Any, code: int) -> None:
    try:
        await asyncio.wait({task})
    finally:
        if not task.done():
            _handler_cancelled(task, call, code)


def _handler_cancelled(task: asyncio.Task[Any], call: Any, code: int) -> None:
    logger.warning(
        "websocket %s: its handler did not return within %.1f s of the close (%d): cancelled",
        _census.name(call),
        CLOSE_HANDSHAKE_TIME,
        code,
    )
    task.cancel()


def _end_stream(response: web.StreamResponse, task: asyncio.Task[Any]) -> None:
    ending[task] = response
    task.cancel()  # the middleware ends the body as the cancellation comes through


async def stream_ended_by_the_drain(name: str) -> web.StreamResponse | None:
    """In the middleware, as a handler's cancellation comes through: the stream the drain
    ended, its body now properly ended (the cancel taken back); None when the cancel is not
    the drain's."""
    task = asyncio.current_task()
    response = ending.pop(task, None) if task is not None else None
    if response is None or task is None:
        return None
    task.uncancel()
    try:
        with anyio.fail_after(CLOSE_HANDSHAKE_TIME):
            await response.write_eof()
    except Exception as exc:
        logger.warning("stream %s: its end could not be sent (%r)", name, exc)
    else:
        current_drain().long_lived.ended("stream")
    return response
