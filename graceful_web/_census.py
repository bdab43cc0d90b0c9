"""Requests in flight, learnt from the event loop's tasks at the moment the drain asks.

While serving, a request registers nothing: the adapter's request function keeps its start
time in a local variable, ``started``, and awaits the application. When the drain begins (or
a gauge asks), each task's chain of awaits is walked for a frame of such a function: that
frame's task is the request's, its locals name it, ``started`` ages it. A frame without
``started`` is not a request in flight (a readiness answer, or one registered by hand).

Coroutine frames are read through ``cr_await``/``cr_frame`` and ``gi_yieldfrom``/``gi_frame``,
the attributes ``inspect`` documents; the task that asks walks its own stack instead, as a
running coroutine has no ``cr_await``. A canary in tests/test_quirks.py checks both ways.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator, Mapping
from types import CodeType, FrameType
from typing import Any

#: The adapters' request functions: code object → how to name a request from its locals.
_watched: dict[CodeType, Callable[[Mapping[str, Any]], str]] = {}


def watch(function: Callable[..., Any], name_of: Callable[[Mapping[str, Any]], str]) -> None:
    """Requests are served inside ``function``; ``name_of(its locals)`` names one."""
    _watched[function.__code__] = name_of


def requests_in_flight(
    loop: asyncio.AbstractEventLoop,
) -> list[tuple[asyncio.Task[Any], str, float]]:
    """Each request in flight on ``loop``: its task, its name, when it started."""
    found = []
    for task, frame in _request_frames(loop):
        local = frame.f_locals
        started = local.get("started")
        if isinstance(started, float):
            found.append((task, _watched[frame.f_code](local), started))
    return found


def count(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for _, frame in _request_frames(loop) if "started" in frame.f_locals)


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
