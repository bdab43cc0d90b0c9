"""Streamed responses under ``GracefulLifespan``: a reconnectable one (server-sent events, or
marked so) is noted as its headers go out, so that the drain can end its body properly once
``long_lived_grace`` is over; a finishing one is drained like any request.

The drain ends a stream by cancelling the task that streams it (the app sees what a client's
disconnect looks like); the call that serves the request then sends the body's end on the
app's behalf (``end_stream``) and returns as a request does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio

from ._asgi_lifespan import Message, Send
from ._config import CLOSE_HANDSHAKE_TIME
from ._current import current_drain
from ._long_lived import reconnectable

logger = logging.getLogger("graceful_web")

#: The server ``send`` of each stream the drain is ending, until its end went out.
ending: set[Send] = set()
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


def note_start(send: Send, message: Message, cancel: Callable[[], object] | None = None) -> None:
    """At a response's start: a streamed (no length), reconnectable one is handed to the
    drain. ``cancel`` stops the app (trio); by default, the task sending the start."""
    content_type = b""
    for name, value in message.get("headers", ()):
        if name == b"content-length":
            return
        if name == b"content-type":
            content_type = value
    if not reconnectable(content_type.decode("latin-1")):
        return
    long_lived = current_drain().long_lived
    task: asyncio.Task[Any] | None = None
    if cancel is None:
        task = asyncio.current_task()
        assert task is not None
        cancel = task.cancel
    stop_app = cancel

    def end() -> None:
        ending.add(send)
        stop_app()  # the call serving the request sends the body's end as the app unwinds

    if long_lived.add(send, "stream", end) and task is not None:
        task.add_done_callback(lambda _: long_lived.discard(send))


def is_ending(send: Send) -> bool:
    return bool(ending) and send in ending


async def end_stream(send: Send, name: str) -> None:
    """The app of a stream the drain ended has unwound: the body's proper end goes out."""
    ending.discard(send)
    long_lived = current_drain().long_lived
    long_lived.discard(send)
    try:
        with anyio.fail_after(CLOSE_HANDSHAKE_TIME):
            await send(_END)
    except Exception as exc:
        logger.warning("stream %s: its end could not be sent (%r)", name, exc)
        return
    long_lived.ended("stream")
