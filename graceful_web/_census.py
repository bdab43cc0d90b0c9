"""Requests in flight, learnt from the event loop's tasks at the moment the drain asks.

While serving, a request registers nothing: the adapter's request function keeps its start
time in a local variable, ``started``, and awaits the application. When the drain begins (or
a gauge asks), each task's chain of awaits is walked for a call of such a function: that
call's task is the request's. Its locals are read only when the drain needs them: ``started``
ages the request, the request's own object (aiohttp's request, the ASGI scope) names it, and
tells its follow-up work from anyone else's: a task the request started (Starlette's
``BaseHTTPMiddleware`` runs the endpoint in one) holds that object on its stack.

Coroutines are read through ``cr_code``/``cr_await``/``cr_frame`` (``gi_*`` for generators),
the attributes ``inspect`` documents; the task that asks walks its own stack instead, as a
running coroutine has no ``cr_await``. A canary in tests/unit/test_quirks.py checks both ways.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Container, Iterator, Mapping
from types import CodeType, CoroutineType, FrameType, GeneratorType
from typing import Any

#: The adapters' request functions: code object → the local that holds the request's own
#: object, and how to name the request from that object.
_watched: dict[CodeType, tuple[str, Callable[[Any], str]]] = {}
#: What a call of a watched function may await instead of serving a request (an ASGI
#: adapter's lifespan and websockets): such a call is passed by.
_apart: set[CodeType] = set()


def watch(
    function: Callable[..., Any],
    source: str,
    name_of: Callable[[Any], str],
    *,
    unless_awaiting: Callable[..., Any] | None = None,
) -> None:
    """Requests are served inside ``function``, whose local ``source`` is the request's own
    object; ``name_of(that object)`` names the request. A suspended call of ``function`` must
    be a request in flight: it sets ``started`` before its first ``await``, unless it awaits
    a call of ``unless_awaiting``, which serves no request (or serves it elsewhere)."""
    _watched[function.__code__] = (source, name_of)
    if unless_awaiting is not None:
        _apart.add(unless_awaiting.__code__)


def requests_in_flight(loop: asyncio.AbstractEventLoop) -> dict[asyncio.Task[Any], Any]:
    """Each request in flight on ``loop``: its task → the call of the watched function (a
    coroutine, or the frame of the task asking), from which ``started``, ``name`` and
    ``source`` read the rest when it is needed. Asks no frame for its locals: at the signal,
    10 000 requests are learnt in some 10 ms."""
    found: dict[asyncio.Task[Any], Any] = {}
    if not _watched:
        return found
    running = asyncio.events._get_running_loop() is loop
    current = asyncio.current_task(loop) if running else None
    for task in asyncio.all_tasks(loop):
        call = _watched_on_stack() if task is current else _watched_awaited(task)
        if call is not None:
            found[task] = call
    return found


def count(loop: asyncio.AbstractEventLoop) -> int:
    return len(requests_in_flight(loop))


def started(call: Any) -> float:
    value = _locals(call).get("started")
    return value if isinstance(value, float) else time.monotonic()


def name(call: Any) -> str:
    source, name_of = _watched[_code(call)]
    return name_of(_locals(call).get(source))


def source(call: Any) -> object:
    return _locals(call).get(_watched[_code(call)][0])


def _locals(call: Any) -> Mapping[str, Any]:
    frame = call if isinstance(call, FrameType) else getattr(call, "cr_frame", None)
    frame = frame or getattr(call, "gi_frame", None)
    return {} if frame is None else frame.f_locals


def _code(call: Any) -> CodeType:
    if isinstance(call, FrameType):
        return call.f_code
    return getattr(call, "cr_code", None) or call.gi_code  # type: ignore[no-any-return]


def stack_holds(ids: Container[int]) -> object | None:
    """The first object on the caller's stack (a local of any frame) whose id is in ``ids``."""
    for frame in _stack():
        value: object
        for value in frame.f_locals.values():
            if id(value) in ids:
                return value
    return None


def _watched_awaited(task: asyncio.Task[Any]) -> Any:
    """The outer call of a watched function among what ``task`` awaits (a nested app's own
    middleware serves the same request). Only codes are compared: a coroutine makes its frame
    object when asked for it."""
    try:
        awaited: Any = task.get_coro()
    except Exception:  # a task-like object of a server's own (granian's Rust scheduler)
        return None
    watched = _watched
    while awaited is not None:
        kind = type(awaited)
        if kind is CoroutineType:
            if awaited.cr_code in watched and not _serves_apart(awaited.cr_await):
                return awaited
            awaited = awaited.cr_await
        elif kind is GeneratorType:
            if awaited.gi_code in watched and not _serves_apart(awaited.gi_yieldfrom):
                return awaited
            awaited = awaited.gi_yieldfrom
        else:  # a future (the end of the chain), or a coroutine of another make
            code = getattr(awaited, "cr_code", None)
            inner = getattr(awaited, "cr_await", None)
            if code is not None and code in watched and not _serves_apart(inner):
                return awaited
            awaited = inner
    return None


def _serves_apart(awaited: Any) -> bool:
    """Whether a watched call awaiting ``awaited`` is passed by (see ``watch``)."""
    return bool(_apart) and getattr(awaited, "cr_code", None) in _apart


def _watched_on_stack() -> FrameType | None:
    frames = list(_stack())
    for frame, called in zip(frames, [*frames[1:], None], strict=True):
        if frame.f_code in _watched and (called is None or called.f_code not in _apart):
            return frame
    return None


def _stack() -> Iterator[FrameType]:
    frames = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    # From the task's first frame down, as the awaits of a suspended task are walked.
    return reversed(frames)


def awaited_locals(call: Any) -> Iterator[Mapping[str, Any]]:
    """The locals of ``call`` and of each coroutine it awaits, outermost first: where a
    request's handler keeps its response (read only when the drain asks)."""
    if isinstance(call, FrameType):
        yield call.f_locals
        return
    awaited = call
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            yield frame.f_locals
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
