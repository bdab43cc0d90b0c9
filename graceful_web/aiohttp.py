"""aiohttp adapter: ``graceful_middleware`` marks requests as protected, ``setup(app)`` ties
the drain into aiohttp's own shutdown.

aiohttp stops in this order: close the listeners, close idle keep-alive connections, send
``on_shutdown``, wait ``shutdown_timeout`` for handlers and cancel them, send ``on_cleanup``;
``run_app`` then cancels every task left. The drain runs as the last ``on_shutdown``
handler, after the listeners are closed and before anything is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Unpack

from aiohttp import __version__ as aiohttp_version
from aiohttp import web

from . import _aiohttp_long_lived, _census, _listeners
from . import durable as _durable
from ._aiohttp_stop import AiohttpServer, close_idle_connections
from ._config import Config, ServerSettings, config_of
from ._current import current_drain, request_done
from ._drain import Drain, process
from ._report import (
    DrainReport,
)
from ._stop import StopSequence
from ._work import inside_protected

__all__ = ["graceful_middleware", "setup"]

logger = logging.getLogger("graceful_web")

MIN_AIOHTTP = (3, 14)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _AppState:
    config: Config
    handle_signals: bool
    drain: Drain | None = None
    server: AiohttpServer | None = None
    sequence: StopSequence | None = None
    watching_listeners: asyncio.Task[None] | None = None


_STATE = web.AppKey("graceful_web_state", _AppState)


def _check_aiohttp_version() -> None:
    try:
        found = tuple(int(part) for part in aiohttp_version.split(".")[:2])
    except ValueError:
        return  # a development build: trust it
    if found < MIN_AIOHTTP:
        raise RuntimeError(
            f"graceful_web.aiohttp needs aiohttp {'.'.join(map(str, MIN_AIOHTTP))} or newer, "
            f"found {aiohttp_version}: pip install -U 'graceful-web[aiohttp]'"
        )


def setup(
    app: web.Application,
    *,
    handle_signals: bool = True,
    **settings: Unpack[ServerSettings],
) -> None:
    """Tie graceful draining into ``app``'s startup and shutdown.

    Adds ``graceful_middleware`` if the app does not have it yet. ``drain_timeout`` (else
    ``GRACEFUL_DRAIN_TIMEOUT``, else 25 s) is the one deadline from the signal to the end of the
    drain; ``pre_stop_delay`` (else ``GRACEFUL_PRE_STOP_DELAY``, else 0) keeps serving, with
    readiness answering 503, before the listeners close. ``handle_signals=False`` leaves the
    signals to you: start the drain by calling ``runner.cleanup()``.

    ``readiness_path`` (``None`` for none) becomes a route of ``app``, for any method: 200 while
    serving, 503 from the moment the drain begins. The app must not have a route there already.

    While draining, a progress line is logged every ``progress_interval`` seconds (else
    ``GRACEFUL_PROGRESS_INTERVAL``, else 1; 0 turns it off). ``on_drain_started(reason)`` and
    ``on_drain_finished(report)``, plain or async, run as the drain starts and ends, each
    bounded by the deadline.

    Once the listeners close, connections with no request in progress stay open for
    ``idle_connection_grace`` seconds (else ``GRACEFUL_IDLE_CONNECTION_GRACE``, else 1, at most
    a quarter of the deadline less ``pre_stop_delay``): a request already on its way on one is
    answered, with ``Connection: close``, instead of being cut off.
    """
    _check_aiohttp_version()
    if not isinstance(app, web.Application):
        raise TypeError(f"setup() takes an aiohttp web.Application, got {app!r}")
    if _STATE in app:
        raise RuntimeError("graceful_web.aiohttp.setup() was already called for this app")
    config = config_of("setup()", dict(settings), ServerSettings)
    if config.readiness_path is not None:
        _add_readiness_route(app, config.readiness_path)
    app[_STATE] = _AppState(config=config, handle_signals=handle_signals)
    if graceful_middleware not in app.middlewares:
        app.middlewares.append(graceful_middleware)
    app.on_startup.append(_on_startup)


def _add_readiness_route(app: web.Application, path: str) -> None:
    # A route, not a check in the middleware: while serving, every other request then pays
    # nothing for readiness. During the drain the middleware answers it before any handler.
    for resource in app.router.resources():
        if resource.canonical == path:
            raise ValueError(
                f"the app already has a route at {path!r}, where graceful_web answers "
                f"readiness: pass readiness_path=None to keep yours (answer 503 while "
                f"graceful_web.shutting_down()), or another path"
            )
    app.router.add_route("*", path, _readiness_route)


async def _readiness_route(request: web.Request) -> web.Response:
    return _readiness(current_drain())


async def _on_startup(app: web.Application) -> None:
    state = app[_STATE]
    drain = current_drain()
    drain.configure(state.config)
    state.drain = drain
    state.server = AiohttpServer(app, asyncio.current_task())
    drain.long_lived.find_with(_aiohttp_long_lived.finder(state.config.websocket_close_code))
    loop = asyncio.get_running_loop()
    await _durable.startup()
    if _durable.active():
        # A response the handler prepares itself (streamed) leaves before the middleware
        # sees it: its jobs are recorded here, as its headers are about to go.
        app.on_response_prepare.append(_records_before_headers)
    if state.handle_signals:
        # aiohttp (run_app, AppRunner(handle_signals=True)) and gunicorn's worker installed
        # their handlers before startup; ours replace them and call them when it is time.
        state.sequence = StopSequence(drain, state.server)
        state.sequence.install(state.config.signals)
    # Appended during startup, so they run after every handler the app registered itself
    # (closing websockets in on_shutdown keeps working, and is then part of the drain).
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    state.watching_listeners = loop.create_task(_listeners.warn_if_reuse_port_resets())


async def _on_shutdown(app: web.Application) -> None:
    state = app[_STATE]
    if state.sequence is not None and state.sequence.installed is not None:
        # run_app shuts down in a second run of the loop; uvloop takes the wakeup fd back for
        # it, and a second signal during the drain must still come here first.
        state.sequence.installed.retake()
    drain = state.drain
    if drain is not None:
        await drain.wait("shutdown")
    await _durable.shutdown()
    await close_idle_connections()


async def _on_cleanup(app: web.Application) -> None:
    state = app[_STATE]
    if state.watching_listeners is not None:
        state.watching_listeners.cancel()
    if state.sequence is not None:
        state.sequence.uninstall()
    drain = state.drain
    report: DrainReport | None = drain.report if drain is not None else None
    if report is None or not report.reason.startswith("SIG"):
        return
    if report.exit_code or (state.server is not None and state.server.cancelled_server_task):
        # Tell the orchestrator whether work was abandoned (run_app and gunicorn pass this
        # on), and end a task we cancelled with its status rather than a CancelledError.
        raise SystemExit(report.exit_code)


class _GracefulMiddleware:
    """Protects each request from the first byte of the handler to its response."""

    @property
    def __middleware_version__(self) -> int:
        # aiohttp reads this once, as the application freezes after its startup hooks ran:
        # the one moment before any request where a missing setup() can be noticed.
        _warn_if_unwired()
        return 1

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not process.serving:
            drain = current_drain()
            # Whatever the router took for the readiness route (a request to it goes no
            # further, and is no work to drain).
            if request.match_info.handler is _readiness_route:
                return _readiness(drain)
            if drain.draining:
                return await _served_during_the_drain(drain, request, handler)
        # Serving: nothing is registered. Should the drain begin while the handler runs, it
        # finds this request by this call (_census), named from ``request``, aged from
        # ``started``, and each line below then sees the process is no longer serving. (The
        # one await above, in the drain's own branch, comes after the census was taken.)
        started = _monotonic()  # noqa: F841  (read from this frame by _census)
        try:
            response = await (_recorded(request, handler) if _durable_jobs else handler(request))
        except web.HTTPException as exc:
            if not process.serving and current_drain().draining:
                exc.force_close()
            raise
        except asyncio.CancelledError:
            if process.serving or not _ending_streams:
                raise
            ended = await _stream_ended_by_the_drain(_request_name(request))
            if ended is None:
                raise
            response = ended
        finally:
            if not process.serving:
                request_done()
        if not process.serving and current_drain().draining:
            response.force_close()
        return response

    def __repr__(self) -> str:
        return "graceful_web.aiohttp.graceful_middleware"


async def _served_during_the_drain(
    drain: Drain, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """A request that came in through an already-open connection once the drain had begun: it
    is registered as it comes, is protected, and its response closes the connection."""
    task = asyncio.current_task()
    assert task is not None
    entered = drain.enter_request(task, _request_name, request)
    token = inside_protected.set(True)
    try:
        response = await (_recorded(request, handler) if _durable_jobs else handler(request))
    except web.HTTPException as exc:
        exc.force_close()
        raise
    except asyncio.CancelledError:
        ended = await _stream_ended_by_the_drain(_request_name(request))
        if ended is None:
            raise
        response = ended
    finally:
        inside_protected.reset(token)
        if entered:
            drain.exit_request(task)
    response.force_close()
    return response


_records_of_request = _durable.records_of_request
_ending_streams = _aiohttp_long_lived.ending
_stream_ended_by_the_drain = _aiohttp_long_lived.stream_ended_by_the_drain
_durable_jobs = _durable.functions  # empty unless this process has durable jobs


async def _recorded(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In a process with durable jobs: the handler's response, once the jobs it spawned are
    recorded (a drain that begins meanwhile waits for this request)."""
    records = _records_of_request()
    response = await handler(request)
    return await _once_recorded(response, records) if records else response


async def _once_recorded(
    response: web.StreamResponse, records: list[asyncio.Future[None]]
) -> web.StreamResponse:
    """The durable jobs the request spawned are recorded before its response leaves; when they
    could not be, they were not accepted: 503 in place of the app's response."""
    if response.prepared:
        return response  # already gone (checked as it went, by _records_before_headers)
    if not await _durable.written(records):
        status, headers = _durable.UNRECORDED_STATUS, _durable.UNRECORDED_HEADERS
        return web.Response(status=status, text=_UNRECORDED, headers=headers)
    return response


async def _records_before_headers(request: web.Request, response: web.StreamResponse) -> None:
    # A response the handler prepares itself: its records are those made so far.
    records = _durable.request_records.get()
    if records and not await _durable.written(records):
        raise _unrecorded()


_UNRECORDED = _durable.UNRECORDED_TEXT


def _unrecorded() -> web.HTTPServiceUnavailable:
    return web.HTTPServiceUnavailable(text=_UNRECORDED, headers=_durable.UNRECORDED_HEADERS)


def _request_name(request: web.Request) -> str:
    return f"{request.method} {request.path}"


_monotonic = time.monotonic
_census.watch(_GracefulMiddleware.__call__, "request", _request_name)


def _readiness(drain: Drain) -> web.Response:
    # Says ready or not ready, nothing more: the path is reachable by anyone.
    if drain.draining:
        response = web.Response(status=503, text="draining\n")
        response.force_close()
    else:
        response = web.Response(status=200, text="ready\n")
    response.headers["Cache-Control"] = "no-store"
    return response


_warned_unwired = False


def _warn_if_unwired() -> None:
    global _warned_unwired
    try:
        drain = current_drain()
    except RuntimeError:
        return
    if drain.wired or _warned_unwired:
        return
    _warned_unwired = True
    logger.warning(
        "graceful_middleware is installed but graceful_web.aiohttp.setup(app) was not called: "
        "requests are tracked but nothing will be drained on shutdown. Call setup(app) "
        "before running the app."
    )


graceful_middleware = _GracefulMiddleware()
