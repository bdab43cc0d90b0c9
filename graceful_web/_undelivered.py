"""A response sent during the drain that the server can no longer deliver, its connection
closed under it: the request is named in the report and not counted as drained.

Servers drop such a response without a word (uvicorn, hypercorn) or raise from ``send``; the
handler returns as if it had been answered. Only responses sent while draining are looked at:
serving pays nothing for it.
"""

from __future__ import annotations

import asyncio

from . import _quirks
from ._asgi_lifespan import Message, Send
from ._current import current_drain


async def send_or_note_undelivered(send: Send, message: Message) -> None:
    if _quirks.connection_gone(send):
        # Not handed to the server at all: it would drop it, or (hypercorn's HTTP/2) wait
        # for ever to send it.
        _undeliverable()
        return
    try:
        await send(message)
    except Exception:
        _undeliverable()
        raise


def _undeliverable() -> None:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return  # trio: its requests are not looked at
    if task is not None:
        current_drain().undeliverable(task)
