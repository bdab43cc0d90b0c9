"""ASGI adapter: ``GracefulLifespan(app)`` protects every request of any ASGI 3 app and drains
protected work before the server's own shutdown can cancel it.

Servers stop in roughly this order: a signal handler notes the stop, the listeners close,
open connections are waited for (uvicorn: forever by default; hypercorn: ``graceful_timeout``),
the lifespan ``shutdown`` is sent, and finally the event loop is torn down, cancelling every
task left. The drain therefore starts in the signal handler (chained in front of the
server's own) and its end is awaited inside lifespan ``shutdown``, before the inner app's own
shutdown and before anything is torn down.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from types import MethodType
from typing import Any, Unpack

import anyio
import anyio.abc

from . import _census
from . import durable as _durable
from ._asgi_lifespan import ASGIApp, Lifespan, Message, Receive, Scope, Send
from ._asgi_send import (
    Unrecorded,
    answer_readiness,
    recorded_and_closing,
    records_written,
    send_closing_when_draining,
    with_connection_close,
)
from ._asgi_stream import end_stream, is_ending, note_start
from ._asgi_websocket import serve_websocket
from ._config import AsgiSettings, config_of
from ._current import current_drain, request_done
from ._drain import Drain, process
from ._hypercorn import warn_h2_under_trio
from ._undelivered import send_or_note_undelivered
from ._without_lifespan import WithoutLifespan
from ._work import inside_protected

__all__ = ["GracefulLifespan"]

logger = logging.getLogger("graceful_web")


class GracefulLifespan:
    """Wrap an ASGI 3 application so restarts lose nothing.

    ``drain_timeout`` (else ``GRACEFUL_DRAIN_TIMEOUT``, else 25 s) is the one deadline from the
    stop signal to the end of the drain; ``pre_stop_delay`` (else ``GRACEFUL_PRE_STOP_DELAY``,
    else 0) keeps serving, readiness answering 503, before the server is told to stop.
    Websockets and reconnectable streams (server-sent events) still open ``long_lived_grace``
    seconds after the pre-stop delay are ended politely: websockets closed with
    ``websocket_close_code`` (1012), streams given the proper end of their body.
    ``handle_signals=False`` leaves the signals to the server alone: the drain then starts at
    lifespan shutdown.

    Under uvicorn (and gunicorn's UvicornWorker), once the listeners close, connections with
    no request in progress stay open for ``idle_connection_grace`` seconds (else
    ``GRACEFUL_IDLE_CONNECTION_GRACE``, else 1, at most a quarter of the deadline less
    ``pre_stop_delay``): a request already on its way on one is answered, with
    ``Connection: close``, instead of being cut off.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        handle_signals: bool = True,
        **settings: Unpack[AsgiSettings],
    ) -> None:
        _check_asgi3(app)
        self.app = app
        self.config = config_of("GracefulLifespan()", dict(settings), AsgiSettings)
        self.handle_signals = handle_signals
        self._readiness_path = self.config.readiness_path
        # Set by lifespan startup; a request arriving while it is still False means the server
        # never sends lifespan (daphne, uvicorn --lifespan off): that request starts it all.
        self._lifespan_started = False
        self._serve_plainly = False
        self._without_lifespan = WithoutLifespan(
            self.config, handle_signals=handle_signals, on_startup=self._note_lifespan
        )

    def __repr__(self) -> str:
        return f"GracefulLifespan({self.app!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self._serve_plainly
            or not process.serving
            or scope["path"] == self._readiness_path
        ) and await self._uncommon(scope, receive, send):
            return
        # Serving: nothing is registered, and nothing is awaited before the app. Should the
        # drain begin while the app runs, it finds this request by this call (_census), named
        # from ``scope``, aged from ``started``.
        started = _monotonic()  # noqa: F841  (read from this frame by _census)
        try:
            # Starlette/FastAPI background tasks run inside this call, after the response:
            # they are protected for as long as the request is.
            await self.app(
                scope,
                receive,
                _bind(send_closing_when_draining, send)
                if not _durable_jobs
                else recorded_and_closing(send, _records_of_request()),
            )
        except Unrecorded:
            pass  # answered 503 in place of the app's response
        except BaseException as exc:
            if process.serving or not _ended_by_the_drain(send, exc):
                raise
        finally:
            if not process.serving:
                if is_ending(send):
                    await end_stream(send, _request_name(scope))
                request_done()

    async def _uncommon(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Everything but a request served plainly; False for an HTTP request that is to be
        served plainly after all (a server without lifespan, or a process that drained
        another event loop's work already). (A call of ``__call__`` awaiting this one serves
        no request: _census passes it by.)"""
        scope_type = scope["type"]
        if scope_type == "http":
            if not self._lifespan_started:
                await self._without_lifespan.start()
            return await self._http_uncommon(scope, receive, send)
        elif scope_type == "websocket":
            if not self._lifespan_started:
                await self._without_lifespan.start()
            await serve_websocket(self.app, self.config, scope, receive, send)
        elif scope_type == "lifespan":
            await Lifespan(
                self.app,
                self.config,
                scope,
                receive,
                send,
                handle_signals=self.handle_signals,
                on_startup=self._note_lifespan,
            ).run()
        else:
            await self.app(scope, receive, send)
        return True

    def _note_lifespan(self) -> None:
        self._lifespan_started = True
        # Requests are served without registering only where the drain can learn them later
        # from the loop's tasks: on asyncio's loop (or uvloop), not under trio.
        self._serve_plainly = _running_loop() is not None

    # -- requests ------------------------------------------------------------------------

    async def _http_uncommon(self, scope: Scope, receive: Receive, send: Send) -> bool:
        drain = current_drain()
        if scope["path"] == self._readiness_path:
            await answer_readiness(drain, send)
        elif drain.draining or _running_loop() is None:
            await self._http_registered(drain, scope, receive, send)
        else:
            return False  # served plainly, as the server's lifespan would have let it be
        return True

    async def _http_registered(
        self, drain: Drain, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A request registered as it comes: during the drain (through an already-open
        connection), or under trio, whose tasks cannot be learnt later."""

        records = _records_of_request() if _durable_jobs else None

        task = _current_asyncio_task()
        request_scope = anyio.CancelScope()

        async def send_closing_when_draining(message: Message) -> None:
            if message["type"] == "http.response.start":
                if records and not await records_written(send, records):
                    raise Unrecorded
                # Under trio the drain ends a stream by this request's scope.
                note_start(send, message, None if task is not None else request_scope.cancel)
                if drain.draining:
                    message = with_connection_close(message)
            elif is_ending(send):
                return  # the drain is ending this stream: the app's own chunks stop here
            await send_or_note_undelivered(send, message)

        if task is None:
            # trio: cancelling the request means cancelling a scope around it.
            warn_h2_under_trio(scope)
            work = drain.request_started(_request_name(scope), request_scope.cancel)
            try:
                with request_scope:
                    try:
                        await self._protected(scope, receive, send_closing_when_draining)
                    except Exception:
                        if not is_ending(send):
                            raise
                # Out of the cancelled scope: the body's end can be sent.
                if is_ending(send):
                    await end_stream(send, _request_name(scope))
            finally:
                drain.long_lived.discard(send)
                drain.discard(work)
            return
        entered = drain.enter_request(task, _request_name, scope)
        try:
            await self._protected(scope, receive, send_closing_when_draining)
        except BaseException as exc:
            if not _ended_by_the_drain(send, exc):
                raise
        finally:
            if is_ending(send):
                await end_stream(send, _request_name(scope))
            if entered:
                drain.exit_request(task)

    async def _protected(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app serving a registered request: what it starts is its follow-up work."""
        token = inside_protected.set(True)
        try:
            await self.app(scope, receive, send)
        except Unrecorded:
            pass  # answered 503 in place of the app's response
        finally:
            inside_protected.reset(token)


def _ended_by_the_drain(send: Send, exc: BaseException) -> bool:
    """Whether the app unwound with ``exc`` because the drain ended its request: a stream it
    ends (the body's end follows), or, cancelled, a request cut at the deadline or by a second
    signal (the drain's own line names it: no traceback from the server besides). The drain's
    cancel is taken back, so the request ends as one that returned."""
    if is_ending(send):
        if not isinstance(exc, asyncio.CancelledError):
            logger.debug("a stream ended by the drain unwound with %r", exc)
            return True
    elif isinstance(exc, asyncio.CancelledError):
        drain = current_drain()
        if not (drain.forced or (drain.deadline is not None and drain.remaining() <= 0)):
            return False
    else:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


def _current_asyncio_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # trio


def _request_name(scope: Scope) -> str:
    return f"{scope['method']} {scope['path']}"


_monotonic = time.monotonic
_bind = MethodType
_running_loop = asyncio.events._get_running_loop  # None, not an exception, under trio
_census.watch(
    GracefulLifespan.__call__, "scope", _request_name, unless_awaiting=GracefulLifespan._uncommon
)


_records_of_request = _durable.records_of_request
_durable_jobs = _durable.functions  # empty unless this process has durable jobs

def _check_asgi3(app: object) -> None:
    what_to_do = "pass the ASGI 3 application itself, an async callable app(scope, receive, send)"
    if inspect.isclass(app):
        raise TypeError(
            f"GracefulLifespan got the class {app.__name__}, which looks like an ASGI 2 app: "
            f"{what_to_do} (asgiref.compatibility.guarantee_single_callable converts ASGI 2)"
        )
    if not callable(app):
        raise TypeError(f"GracefulLifespan got {app!r}, which is not callable: {what_to_do}")
    if inspect.isfunction(app) and not inspect.iscoroutinefunction(app):
        raise TypeError(
            f"GracefulLifespan got {app.__name__}, a plain function (a WSGI app?): {what_to_do}"
        )
    try:
        parameters = list(inspect.signature(app).parameters.values())
    except (TypeError, ValueError):
        return  # no signature to read (a builtin or C callable): trust it
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 3:
        raise TypeError(
            f"GracefulLifespan got {app!r}, which takes {len(positional)} positional "
            f"arguments, not 3: {what_to_do}"
        )
