"""Requests in flight, learnt from the event loop's tasks at the moment the drain asks.

While serving, a request registers nothing: the adapter's request function keeps its start
time in a local variable, ``started``, and awaits the application. When the drain begins (or
a gauge asks), each task's chain of awaits is walked for a frame of such a function: that
frame's task is the request's, its locals name it, ``started`` ages it. A frame without
``started`` is not a request in flight (a readiness answer, or one registered by hand).

Each request's own object (aiohttp's request, the ASGI scope) is noted too: a task started
by the request (Starlette's ``BaseHTTPMiddleware`` runs the endpoint in one) holds it in its
frames, which tells its follow-up work from anyone else's during the drain.

Coroutine frames are read through ``cr_await``/``cr_frame`` and ``gi_yieldfrom``/``gi_frame``,
the attributes ``inspect`` documents; the task that asks walks its own stack instead, as a
running coroutine has no ``cr_await``. A canary in tests/test_quirks.py checks both ways.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Container, Iterator, Mapping
from types import CodeType, FrameType
from typing import Any, NamedTuple

#: The adapters' request functions: code object → how to name a request from its locals,
#: and the local that holds the request's own object.
_watched: dict[CodeType, tuple[Callable[[Mapping[str, Any]], str], str]] = {}


class Found(NamedTuple):
    task: asyncio.Task[Any]
    name: str
    started: float
    source: object  # the request's own object (aiohttp's request, the ASGI scope)


def watch(
    function: Callable[..., Any], name_of: Callable[[Mapping[str, Any]], str], source: str
) -> None:
    """Requests are served inside ``function``; ``name_of(its locals)`` names one, its local
    ``source`` is the request's own object."""
    _watched[function.__code__] = (name_of, source)


def requests_in_flight(loop: asyncio.AbstractEventLoop) -> list[Found]:
    """Each request in flight on ``loop``: its task, name, start and own object."""
    found = []
    for task, frame in _request_frames(loop):
        local = frame.f_locals
        started = local.get("started")
        if isinstance(started, float):
            name_of, source = _watched[frame.f_code]
            found.append(Found(task, name_of(local), started, local.get(source)))
    return found


def count(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for _, frame in _request_frames(loop) if "started" in frame.f_locals)


def stack_holds(ids: Container[int]) -> object | None:
    """The first object on the caller's stack (a local of any frame) whose id is in ``ids``."""
    for frame in _stack():
        value: object
        for value in frame.f_locals.values():
            if id(value) in ids:
                return value
    return None


def _request_frames(
    loop: asyncio.AbstractEventLoop,
) -> Iterator[tuple[asyncio.Task[Any], FrameType]]:
    if not _watched:
        return
    running = asyncio.events._get_running_loop() is loop
    current = asyncio.current_task(loop) if running else None
    for task in asyncio.all_tasks(loop):
        frames = _stack() if task is current else _awaited_frames(task)
        for frame in frames:
            if frame.f_code in _watched:
                yield task, frame
                break  # the outer one: a nested app's own middleware is the same request


def _awaited_frames(task: asyncio.Task[Any]) -> Iterator[FrameType]:
    try:
        awaited: Any = task.get_coro()
    except Exception:  # a task-like object of a server's own (granian's Rust scheduler)
        return
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            yield frame
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)


def _stack() -> Iterator[FrameType]:
    frames = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    # From the task's first frame down, as the awaits of a suspended task are walked.
    return reversed(frames)
