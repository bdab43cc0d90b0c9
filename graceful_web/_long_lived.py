"""Connections that never end by themselves, ended politely by the drain.

A websocket or a server-sent-events feed stays open for as long as the server lets it: waited
for, it holds every stop to the deadline and is then cut (1006, a reset, a payload error).
Instead, once the pre-stop delay and ``long_lived_grace`` have passed, each websocket is sent a
close (``websocket_close_code``, 1012 by default) and each *reconnectable* stream the proper end
of its body: clients reconnect, to another instance, at once, and the process exits as soon as
the work that must finish is done. A *finishing* stream (an answer, a download) is drained to
its end like any request; it is not here.

Adapters hand in what is open: each connection as it opens (``add``), or a finder that learns
them from the requests in flight when the time comes (aiohttp's: nothing registered while
serving). Each connection comes with its ``End``: it sends the close, then gives its handler
``CLOSE_HANDSHAKE_TIME`` to return before cancelling it; the adapter counts it (``ended``) once
its handler is done.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

import anyio

from ._config import CLOSE_HANDSHAKE_TIME

logger = logging.getLogger("graceful_web")

Kind = Literal["websocket", "stream"]
StreamKind = Literal["finishing", "reconnectable"]
#: Ends one connection: the close (or the body's end) sent, the handler given its moment.
End = Callable[[], Awaitable[None]]
#: Learns the connections open at the moment it is called: (key, kind, end) each.
Finder = Callable[[], Iterable[tuple[object, Kind, End]]]


class LongLived:
    """The websockets and reconnectable streams of one event loop."""

    def __init__(self) -> None:
        self._open: dict[object, tuple[Kind, End]] = {}
        self._finders: list[Finder] = []
        self.ending = False  # the ends are being sent: what opens now is ended at once
        self._done = False
        self._done_waiters: list[Callable[[], None]] = []
        self.websockets_closed = 0
        self.streams_ended = 0

    def add(self, key: object, kind: Kind, end: End) -> bool:
        """A connection opened; False when the ends were sent already: end it now."""
        if self.ending:
            return False
        self._open[key] = (kind, end)
        return True

    def discard(self, key: object) -> None:
        self._open.pop(key, None)

    def find_with(self, finder: Finder) -> None:
        if finder not in self._finders:
            self._finders.append(finder)

    def ended(self, kind: Kind) -> None:
        """A connection this drain ended is done: counted apart from drained requests."""
        if kind == "websocket":
            self.websockets_closed += 1
        else:
            self.streams_ended += 1

    @property
    def count(self) -> int:
        return self.websockets_closed + self.streams_ended

    @property
    def any_open(self) -> bool:
        """Whether there may be anything to end (a finder learns it only when asked)."""
        return bool(self._open or self._finders) and not self._done

    async def wait_done(self) -> None:
        """Until every end was sent (``end_all`` returned)."""
        if self._done:
            return
        event = anyio.Event()
        self._done_waiters.append(event.set)
        await event.wait()

    async def end_all(self) -> None:
        """Send every open connection its end, all at once; return when each was sent (or its
        handler had its moment)."""
        if self.ending:
            await self.wait_done()
            return
        self.ending = True
        found = dict(self._open)
        self._open.clear()
        for finder in self._finders:
            try:
                found.update((key, (kind, end)) for key, kind, end in finder())
            except Exception:
                logger.exception("finding the open websockets and streams failed")
        try:
            if found:
                websockets = sum(kind == "websocket" for kind, _ in found.values())
                logger.info(
                    "ending %d websockets and %d streams: the drain's grace for long-lived "
                    "connections is over",
                    websockets,
                    len(found) - websockets,
                    extra={
                        "graceful_websockets": websockets,
                        "graceful_streams": len(found) - websockets,
                    },
                )
                async with anyio.create_task_group() as task_group:
                    for _, end in found.values():
                        task_group.start_soon(_end_one, end)
        finally:
            self._done = True
            waiters, self._done_waiters = self._done_waiters, []
            for wake in waiters:
                wake()


async def _end_one(end: End) -> None:
    # Each end is bounded by itself; this bound only keeps a broken one from holding the rest.
    with anyio.move_on_after(CLOSE_HANDSHAKE_TIME * 2):
        try:
            await end()
        except Exception:
            logger.exception("ending a websocket or stream failed")


# -- which streams are reconnectable ----------------------------------------------------------

_EVENT_STREAM = "text/event-stream"
_marked: contextvars.ContextVar[StreamKind | None] = contextvars.ContextVar(
    "graceful_web_stream", default=None
)
# The same marks by task: aiohttp's finder reads them from outside the handler's task.
_marked_tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], StreamKind] = (
    weakref.WeakKeyDictionary()
)


def mark_stream(kind: StreamKind) -> None:
    """Say what the response this handler streams is, before it starts.

    ``"finishing"``: an answer, a download, a report streamed as it is made: drained to its
    end within the deadline, like any request (an LLM answer sent as server-sent events needs
    this). ``"reconnectable"``: a feed a client reconnects to: ended properly once the drain's
    ``long_lived_grace`` is over. Unmarked, a ``text/event-stream`` response is reconnectable
    and every other one finishing. Call it in the handler's own task (async code): the mark
    follows the handler's context.
    """
    if kind not in ("finishing", "reconnectable"):
        raise ValueError(
            f"mark_stream() takes 'finishing' (drained to its end) or 'reconnectable' (ended "
            f"once the drain's grace is over, the client reconnects), got {kind!r}"
        )
    _marked.set(kind)
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None  # trio: only the context carries the mark
    if task is not None:
        _marked_tasks[task] = kind


def reconnectable(content_type: str, task: asyncio.Task[Any] | None = None) -> bool:
    """Whether a streamed response of ``content_type`` is ended by the drain: marked so, or an
    unmarked event stream. The mark is read from ``task`` when given, else from the context."""
    mark = _marked.get() if task is None else _marked_tasks.get(task)
    if mark is not None:
        return mark == "reconnectable"
    return content_type.startswith(_EVENT_STREAM)
