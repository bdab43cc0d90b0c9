"""What a response carries on its way out under ``GracefulLifespan``: ``Connection: close``
once draining, the durable jobs its request spawned recorded first (503 in its place when they
could not be), and the readiness answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from . import _long_lived
from . import durable as _durable
from ._asgi_lifespan import Message, Send
from ._asgi_stream import is_ending, note_start
from ._current import current_drain
from ._drain import Drain, process
from ._undelivered import send_or_note_undelivered

#: An event stream's header as frameworks write it, looked for in one C-level pass: a request
#: served plainly pays for nothing more (a stream spelt otherwise can be marked reconnectable).
_EVENT_STREAM = frozenset(
    (b"content-type", value)
    for value in (b"text/event-stream", b"text/event-stream; charset=utf-8")
)
_READY = b"ready\n"
_DRAINING = b"draining\n"
_READINESS_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"cache-control", b"no-store"),
]


def send_closing_when_draining(send: Send, message: Message) -> Awaitable[None]:
    """The ``send`` a request served plainly is given, bound to the server's as a method: a
    method object costs less to make than a closure, and one is made for every request."""
    if process.serving:
        if message["type"] == "http.response.start" and (
            _long_lived.marked or not _EVENT_STREAM.isdisjoint(message.get("headers", ()))
        ):
            note_start(send, message)
        return send(message)
    return _send_draining(send, message)


def _send_draining(send: Send, message: Message) -> Awaitable[None]:
    if message["type"] == "http.response.start":
        note_start(send, message)
        # Once draining, the connection must not be reused: the client's next request goes to
        # another instance instead of to a closing socket.
        if current_drain().draining:
            message = with_connection_close(message)
    elif is_ending(send):
        return _dropped()  # the drain is ending this stream: the app's own chunks stop here
    return send_or_note_undelivered(send, message)


async def _dropped() -> None:
    pass


def recorded_and_closing(send: Send, records: list[asyncio.Future[None]]) -> Send:
    """``send`` for a request served plainly in a process with durable jobs: once the request
    has spawned any, its response waits for their records."""

    def send_recorded_and_closing(message: Message) -> Awaitable[None]:
        if records:
            return _send_once_recorded(send, message, records)
        return send_closing_when_draining(send, message)

    return send_recorded_and_closing


_UNRECORDED = _durable.UNRECORDED_TEXT.encode()
_UNRECORDED_HEADERS = [
    (name.lower().encode(), value.encode()) for name, value in _durable.UNRECORDED_HEADERS.items()
]


async def records_written(send: Send, records: list[asyncio.Future[None]]) -> bool:
    """Before a response leaves: the durable jobs its request spawned are recorded. When they
    could not be, they were not accepted: answer 503 in place of the app's response (False)."""
    if not await _durable.written(records):
        await send(
            {
                "type": "http.response.start",
                "status": _durable.UNRECORDED_STATUS,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_UNRECORDED)).encode()),
                    *_UNRECORDED_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": _UNRECORDED})
        return False
    return True


class Unrecorded(Exception):
    """The jobs a request spawned could not be recorded: 503 went out in place of the app's
    response, and the app's own response stops here."""


async def _send_once_recorded(
    send: Send, message: Message, records: list[asyncio.Future[None]]
) -> None:
    if message["type"] == "http.response.start" and not await records_written(send, records):
        raise Unrecorded
    await send_closing_when_draining(send, message)


def with_connection_close(message: Message) -> Message:
    headers = [
        (name, value)
        for name, value in message.get("headers", ())
        if name.lower() != b"connection"
    ]
    headers.append((b"connection", b"close"))
    return {**message, "headers": headers}


async def answer_readiness(drain: Drain, send: Send) -> None:
    # Says ready or not ready, nothing more: the path is reachable by anyone.
    draining = drain.draining
    body = _DRAINING if draining else _READY
    headers = [*_READINESS_HEADERS, (b"content-length", str(len(body)).encode())]
    if draining:
        headers.append((b"connection", b"close"))
    await send(
        {"type": "http.response.start", "status": 503 if draining else 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})
