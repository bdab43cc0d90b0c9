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
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Literal

import anyio

from ._config import CLOSE_HANDSHAKE_TIME

logger = logging.getLogger("graceful_web")

Kind = Literal["websocket", "stream"]
StreamKind = Literal["finishing", "reconnectable"]
KINDS: tuple[Kind, ...] = ("websocket", "stream")
WEBSOCKETS: tuple[Kind, ...] = ("websocket",)
#: Ends one connection. None when that was all (a stream: its handler is cancelled, and the
#: body's end follows as it unwinds); else what sends the close and then returns what waits
#: for the handler to return (cancelling one that does not), or None.
End = Callable[[], "Awaitable[Awaitable[None] | None] | None"]
#: Learns the connections open at the moment it is called: (key, kind, end) each.
Finder = Callable[[], Iterable[tuple[object, Kind, End]]]


class LongLived:
    """The websockets and reconnectable streams of one event loop."""

    def __init__(self) -> None:
        self._open: dict[object, tuple[Kind, End]] = {}
        self._finders: list[Finder] = []
        self._ending: set[Kind] = set()  # what opens now of these kinds is ended at once
        self._sent: set[Kind] = set()
        self._sent_waiters: list[Callable[[], None]] = []
        self.websockets_closed = 0
        self.streams_ended = 0

    def add(self, key: object, kind: Kind, end: End) -> bool:
        """A connection opened; False when the ends of its kind were sent already."""
        if kind in self._ending:
            return False
        self._open[key] = (kind, end)
        return True

    def discard(self, key: object) -> None:
        self._open.pop(key, None)

    def find_with(self, finder: Finder) -> None:
        if finder not in self._finders:
            self._finders.append(finder)

    def ended(self, kind: Kind) -> None:
        """A connection this drain ended: counted apart from drained requests."""
        if kind == "websocket":
            self.websockets_closed += 1
        else:
            self.streams_ended += 1

    @property
    def count(self) -> int:
        return self.websockets_closed + self.streams_ended

    def any_open(self, kinds: Collection[Kind] = KINDS) -> bool:
        """Whether there may be anything of ``kinds`` to end (a finder learns only when
        asked)."""
        if any(kind not in self._sent for kind in kinds) and self._finders:
            return True
        return any(kind in kinds for kind, _ in self._open.values())

    async def wait_sent(self) -> None:
        """Until every end of every kind was sent."""
        if self._sent.issuperset(KINDS):
            return
        event = anyio.Event()
        self._sent_waiters.append(event.set)
        await event.wait()

    def drain_over(self) -> None:
        """The drain is over (nothing was left to end): whoever waits for the ends goes on."""
        self._sent.update(KINDS)
        self._wake_sent_waiters()

    def _wake_sent_waiters(self) -> None:
        waiters, self._sent_waiters = self._sent_waiters, []
        for wake in waiters:
            wake()

    async def end_all(
        self, kinds: Collection[Kind] = KINDS, on_sent: Callable[[], object] | None = None
    ) -> None:
        """Send every open connection of ``kinds`` its end, all at once; once all are sent,
        call ``on_sent``, then give each handler its moment to return."""
        kinds = [kind for kind in kinds if kind not in self._ending]
        self._ending.update(kinds)
        found = {key: entry for key, entry in self._open.items() if entry[0] in kinds}
        for key in found:
            del self._open[key]
        for finder in self._finders:
            try:
                found.update(
                    (key, (kind, end)) for key, kind, end in finder() if kind in kinds
                )
            except Exception:
                logger.exception("finding the open websockets and streams failed")
        # One bound for all the closes, one for all the handlers: at 10 000 connections a
        # bound (a cancel scope) for each would cost more than the closes themselves.
        follow_ups: list[Awaitable[None]] = []
        try:
            if found:
                _log_ending(found)
                sending = _start_ends(found.values())
                with anyio.move_on_after(CLOSE_HANDSHAKE_TIME):
                    async with anyio.create_task_group() as task_group:
                        for send in sending:
                            task_group.start_soon(_sent, send, follow_ups)
        finally:
            self._sent.update(kinds)
            if self._sent.issuperset(KINDS):
                self._wake_sent_waiters()
            if on_sent is not None:
                on_sent()
        with anyio.move_on_after(CLOSE_HANDSHAKE_TIME):
            async with anyio.create_task_group() as task_group:
                for follow_up in follow_ups:
                    task_group.start_soon(_waited, follow_up)


def _log_ending(found: dict[object, tuple[Kind, End]]) -> None:
    websockets = sum(kind == "websocket" for kind, _ in found.values())
    logger.info(
        "ending %d websockets and %d streams: their grace is over",
        websockets,
        len(found) - websockets,
        extra={"graceful_websockets": websockets, "graceful_streams": len(found) - websockets},
    )


def _start_ends(found: Iterable[tuple[Kind, End]]) -> list[Awaitable[Awaitable[None] | None]]:
    """Streams first: each ends in a call, none waits behind the websockets' closes."""
    sending = []
    for _, end in sorted(found, key=lambda entry: entry[0] != "stream"):
        try:
            send = end()
        except Exception:
            logger.exception("ending a websocket or stream failed")
            continue
        if send is not None:
            sending.append(send)
    return sending


async def _sent(
    send: Awaitable[Awaitable[None] | None], follow_ups: list[Awaitable[None]]
) -> None:
    try:
        follow_up = await send
    except Exception:
        logger.exception("closing a websocket failed")
        return
    if follow_up is not None:
        follow_ups.append(follow_up)


async def _waited(follow_up: Awaitable[None]) -> None:
    try:
        await follow_up
    except Exception:
        logger.exception("waiting for a websocket's handler failed")


# -- which streams are reconnectable ----------------------------------------------------------

_EVENT_STREAM = "text/event-stream"
#: Whether any handler of this process ever marked a stream: until then a response's start is
#: looked at only when it is an event stream (the request path's cost).
marked = False
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
    global marked
    marked = True
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
