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
import atexit
import contextlib
import inspect
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import anyio
import anyio.abc

from . import _census, _quirks, _signals
from ._config import Config
from ._current import current_drain, request_done
from ._drain import Drain, process
from ._report import (
    AbandonedCallback,
    DrainFinishedCallback,
    DrainReport,
    DrainStartedCallback,
    forced_exit_code,
)
from ._watchdog import exit_now
from ._work import inside_protected

__all__ = ["GracefulLifespan"]

logger = logging.getLogger("graceful_web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Websockets still open this long after the drain started are closed with 1001 (Going Away),
#: unless the drain timeout is shorter (then half of it).
DEFAULT_WEBSOCKET_CLOSE_GRACE = 5.0
#: How often a worker of a multi-process hypercorn looks at its parent's stop event.
SHUTDOWN_EVENT_POLL = 0.05
#: After a drain that abandoned work, how long the server gets to send lifespan shutdown, and
#: how long the inner app's shutdown may then take, before the process exits with the drain's
#: status. Both fit inside the watchdog's margin after the deadline.
SERVER_SHUTDOWN_WAIT = 0.1
INNER_SHUTDOWN_BOUND = 0.3

_READY = b"ready\n"
_DRAINING = b"draining\n"
_READINESS_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"cache-control", b"no-store"),
]


class GracefulLifespan:
    """Wrap an ASGI 3 application so restarts lose nothing.

    ``drain_timeout`` (else ``GRACEFUL_DRAIN_TIMEOUT``, else 25 s) is the one deadline from the
    stop signal to the end of the drain; ``pre_stop_delay`` (else ``GRACEFUL_PRE_STOP_DELAY``,
    else 0) keeps serving, readiness answering 503, before the server is told to stop.
    Websockets still open ``websocket_close_grace`` seconds into the drain are closed with
    1001. ``handle_signals=False`` leaves the signals to the server alone: the drain then
    starts at lifespan shutdown.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        drain_timeout: float | None = None,
        pre_stop_delay: float | None = None,
        readiness_path: str | None = "/readyz",
        websocket_close_grace: float | None = None,
        on_abandoned: AbandonedCallback | None = None,
        signals: Iterable[signal.Signals | int | str] | None = None,
        handle_signals: bool = True,
        progress_interval: float | None = None,
        on_drain_started: DrainStartedCallback | None = None,
        on_drain_finished: DrainFinishedCallback | None = None,
    ) -> None:
        _check_asgi3(app)
        self.app = app
        self.config = Config.build(
            drain_timeout=drain_timeout,
            pre_stop_delay=pre_stop_delay,
            on_abandoned=on_abandoned,
            signals=signals,
            readiness_path=readiness_path,
            progress_interval=progress_interval,
            on_drain_started=on_drain_started,
            on_drain_finished=on_drain_finished,
        )
        if websocket_close_grace is None:
            websocket_close_grace = min(
                DEFAULT_WEBSOCKET_CLOSE_GRACE, self.config.drain_timeout / 2
            )
        elif isinstance(websocket_close_grace, bool) or not isinstance(
            websocket_close_grace, (int, float)
        ):
            raise TypeError(
                f"websocket_close_grace must be a number of seconds, got {websocket_close_grace!r}"
            )
        elif not 0 <= websocket_close_grace < self.config.drain_timeout:
            raise ValueError(
                f"websocket_close_grace ({websocket_close_grace:g} s) must be zero or more and "
                f"shorter than drain_timeout ({self.config.drain_timeout:g} s)"
            )
        self.websocket_close_grace = float(websocket_close_grace)
        self.handle_signals = handle_signals
        self._readiness_path = self.config.readiness_path
        # Set by lifespan startup; a request arriving while it is still False means the server
        # never sends lifespan, so nothing would be drained: said once, at that request.
        self._lifespan_started = False

    def __repr__(self) -> str:
        return f"GracefulLifespan({self.app!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "http":
            if not self._lifespan_started:
                self._warn_without_lifespan()
            await self._http(scope, receive, send)
        elif scope_type == "websocket":
            if not self._lifespan_started:
                self._warn_without_lifespan()
            await self._websocket(scope, receive, send)
        elif scope_type == "lifespan":
            await _Lifespan(self, scope, receive, send).run()
        else:
            await self.app(scope, receive, send)

    def _warn_without_lifespan(self) -> None:
        self._lifespan_started = True  # say it once
        logger.warning(
            "the server sent no lifespan startup before this request (uvicorn "
            "--lifespan off, granian --interface asginl, or a server without lifespan "
            "support): nothing will be drained on shutdown, and protected jobs are cancelled "
            "when the process exits. Run the server with lifespan on (uvicorn --lifespan on; "
            "GracefulLifespan answers lifespan itself even when the wrapped app, e.g. "
            "Django's, does not support it)"
        )

    # -- requests ------------------------------------------------------------------------

    def _http(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if (
            not process.serving
            or scope["path"] == self._readiness_path
            or _running_loop() is None  # trio
        ):
            return self._http_uncommon(scope, receive, send)
        return self._served(scope, receive, send)

    async def _http_uncommon(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = current_drain()
        if scope["path"] == self._readiness_path:
            await _answer_readiness(drain, send)
        elif drain.draining or _running_loop() is None:
            await self._http_registered(drain, scope, receive, send)
        else:
            await self._served(scope, receive, send)

    async def _served(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Serving: nothing is registered. Should the drain begin while the app runs, it finds
        # this request by this call (_census), named from ``scope``, aged from ``started``.
        started = _monotonic()  # noqa: F841  (read from this frame by _census)

        def send_closing_when_draining(message: Message) -> Awaitable[None]:
            # Once draining, the connection must not be reused: the client's next request
            # goes to another instance instead of to a closing socket.
            if (
                not process.serving
                and message["type"] == "http.response.start"
                and current_drain().draining
            ):
                message = _with_connection_close(message)
            return send(message)

        try:
            # Starlette/FastAPI background tasks run inside this call, after the response:
            # they are protected for as long as the request is.
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            if not process.serving:
                request_done()

    async def _http_registered(
        self, drain: Drain, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A request registered as it comes: during the drain (through an already-open
        connection), or under trio, whose tasks cannot be learnt later."""

        async def send_closing_when_draining(message: Message) -> None:
            if message["type"] == "http.response.start" and drain.draining:
                message = _with_connection_close(message)
            await send(message)

        task = _current_asyncio_task()
        if task is None:
            # trio: cancelling the request means cancelling a scope around it.
            with anyio.CancelScope() as request_scope:
                work = drain.request_started(_request_name(scope), request_scope.cancel)
                token = inside_protected.set(True)
                try:
                    await self.app(scope, receive, send_closing_when_draining)
                finally:
                    inside_protected.reset(token)
                    drain.discard(work)
            return
        entered = drain.enter_request(task, _request_name, scope)
        token = inside_protected.set(True)
        try:
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            inside_protected.reset(token)
            if entered:
                drain.exit_request(task)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = current_drain()
        path = scope.get("path", "")
        send_lock = anyio.Lock()
        closed_by_us = False
        app_done = False

        async def locked_send(message: Message) -> None:
            async with send_lock:
                await send(message)

        async def close_when_grace_is_over(app_scope: anyio.CancelScope) -> None:
            nonlocal closed_by_us
            await drain.wait_shutting_down()
            await anyio.sleep(self.websocket_close_grace)
            if app_done or drain.forced:
                return
            closed_by_us = True
            logger.info("closing websocket %s with 1001 (going away): drain grace is over", path)
            with contextlib.suppress(Exception):
                async with send_lock:
                    await send({"type": "websocket.close", "code": 1001, "reason": "going away"})
            app_scope.cancel()

        token = inside_protected.set(True)
        outer = anyio.CancelScope()
        work = drain.request_started(f"WEBSOCKET {path}", outer.cancel)
        try:
            with outer:
                async with anyio.create_task_group() as task_group:
                    app_scope = anyio.CancelScope()
                    task_group.start_soon(close_when_grace_is_over, app_scope)
                    try:
                        with app_scope:
                            await self.app(scope, receive, locked_send)
                    except Exception:
                        if not closed_by_us:
                            raise
                    finally:
                        app_done = True
                        task_group.cancel_scope.cancel()
        finally:
            inside_protected.reset(token)
            drain.discard(work)


class _Lifespan:
    """One lifespan conversation: the server on one side, the inner app on the other, the
    drain in between."""

    def __init__(self, owner: GracefulLifespan, scope: Scope, receive: Receive, send: Send):
        self.owner = owner
        self.scope = scope
        self.receive = receive
        self.send = send
        self.drain: Drain | None = None
        self.installed: _signals.Installed | None = None
        self.signalled = False  # the drain was started by a stop signal (or the server's stop)
        # uvicorn re-raises the stop signal once it is done, so a clean drain would still end
        # "killed by SIGTERM"; it is told to forget the signals the drain took care of.
        self.captured_signals: list[int] | None = None
        self.report: DrainReport | None = None
        self.drained = anyio.Event()
        to_inner, self.inner_receive_stream = anyio.create_memory_object_stream[Message](4)
        self.to_inner = to_inner
        from_inner_send, from_inner = anyio.create_memory_object_stream[Message | None](4)
        self.from_inner = from_inner
        self.from_inner_send = from_inner_send
        self.inner_error: BaseException | None = None
        self.inner_has_lifespan = False
        self.inner_shutdown_lock = anyio.Lock()
        self.inner_shutdown_reply: Message | None = None
        self.shutdown_requested = anyio.Event()  # the server sent lifespan.shutdown
        # The signal that stops the server, for each signal the drain starts on: the same
        # one, or SIGTERM (else SIGINT) for a signal the server does not act on itself.
        self.server_stop: dict[signal.Signals, signal.Signals] = {}

    async def run(self) -> None:
        message = await self.receive()
        if message["type"] != "lifespan.startup":
            raise RuntimeError(f"expected lifespan.startup, got {message['type']!r}")
        drain = self.drain = current_drain()
        drain.configure(self.owner.config)
        self.owner._lifespan_started = True
        startup_failed = False
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._run_inner)
            await self.to_inner.send({"type": "lifespan.startup"})
            reply = await self.from_inner.receive()
            if reply is not None and reply["type"] == "lifespan.startup.failed":
                startup_failed = True
                await self.send(reply)
                # The inner app usually raises right after: let the server see its error.
                with anyio.move_on_after(1):
                    await self.from_inner.receive()
                task_group.cancel_scope.cancel()
            else:
                if reply is None and self.inner_error is not None:
                    logger.debug(
                        "the wrapped app does not support lifespan (%r): serving without it",
                        self.inner_error,
                    )
                await self._serve(task_group, drain, inner_has_lifespan=reply is not None)
        if startup_failed and self.inner_error is not None:
            raise self.inner_error

    async def _serve(
        self, task_group: anyio.abc.TaskGroup, drain: Drain, *, inner_has_lifespan: bool
    ) -> None:
        self.inner_has_lifespan = inner_has_lifespan
        self._install_signals()
        task_group.start_soon(self._drain_once_shutting_down, drain)
        task_group.start_soon(self._watch_hypercorn_parent, drain)
        await self.send({"type": "lifespan.startup.complete"})

        await self.receive()  # lifespan.shutdown
        self.shutdown_requested.set()
        drain.begin("shutdown")
        await self.drained.wait()
        shutdown_reply = await self._shut_inner_down()
        self._uninstall_signals()
        self._exit_if_work_was_lost()
        await self.send(shutdown_reply)
        task_group.cancel_scope.cancel()

    async def _shut_inner_down(self) -> Message:
        """Run the inner app's lifespan shutdown, once, whoever asks first."""
        async with self.inner_shutdown_lock:
            if self.inner_shutdown_reply is not None:
                return self.inner_shutdown_reply
            reply: Message = {"type": "lifespan.shutdown.complete"}
            if self.inner_has_lifespan:
                await self.to_inner.send({"type": "lifespan.shutdown"})
                inner_reply = await self.from_inner.receive()
                if inner_reply is not None:
                    reply = inner_reply
                elif self.inner_error is not None:
                    reply = {"type": "lifespan.shutdown.failed", "message": repr(self.inner_error)}
            self.inner_shutdown_reply = reply
            return reply

    async def _run_inner(self) -> None:
        try:
            await self.owner.app(self.scope, self.inner_receive_stream.receive, self._from_inner)
        except Exception as exc:
            self.inner_error = exc
        finally:
            # The app returned (or raised): whoever waits for its next message gets None.
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.from_inner_send.send(None)

    async def _from_inner(self, message: Message) -> None:
        await self.from_inner_send.send(message)

    async def _drain_once_shutting_down(self, drain: Drain) -> None:
        # Runs the drain from its first moment, so the deadline is kept even while the
        # server is still waiting for connections to close.
        await drain.wait_shutting_down()
        report = self.report = await drain.wait(drain.reason or "shutdown")
        self.drained.set()
        if not self.signalled or report.exit_code == 0:
            return
        # Work was abandoned or the drain was forced, and a server may now wait on without
        # end (uvicorn, for a connection whose response can never be flushed) or skip lifespan
        # shutdown altogether (uvicorn after a second SIGINT). Give it a moment to send the
        # shutdown; otherwise shut the inner app down here and exit with the drain's status,
        # well before the watchdog's hard exit.
        with anyio.move_on_after(SERVER_SHUTDOWN_WAIT):
            await self.shutdown_requested.wait()
        if self.shutdown_requested.is_set():
            return
        with anyio.move_on_after(INNER_SHUTDOWN_BOUND):
            await self._shut_inner_down()
        self._uninstall_signals()
        exit_now(report.exit_code)

    # -- signals -------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self.owner.handle_signals:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._install_trio_signals()
            return
        # The server's way to stop: its handler for SIGTERM (or SIGINT). A signal the server
        # does not handle itself but the app chose (SIGHUP, say) stops it that same way.
        stop_signal = next(
            (sig for sig in (signal.SIGTERM, signal.SIGINT) if _signals.server_handles(sig)), None
        )
        if stop_signal is None:
            # Nothing here stops the server on a signal (a worker whose parent decides, as in
            # multi-process hypercorn): leave every signal its meaning; the drain follows the
            # server's own stop.
            return
        self.captured_signals = _quirks.uvicorn_captured_signals(stop_signal)
        for sig in self.owner.config.signals:
            self.server_stop[sig] = sig if _signals.server_handles(sig) else stop_signal
        self.installed = _signals.install(
            loop, list(self.server_stop), lambda sig: self._on_signal(loop, sig)
        )

    def _install_trio_signals(self) -> None:
        trio = sys.modules.get("trio")
        if trio is None:
            return
        token = trio.lowlevel.current_trio_token()
        previous: dict[signal.Signals, Any] = {}
        installed = _signals.Installed()

        def on_signal(signum: int, frame: Any) -> None:
            sig = signal.Signals(signum)
            with contextlib.suppress(RuntimeError):  # the run has already ended
                token.run_sync_soon(self._on_trio_signal, sig, previous)

        for sig in self.owner.config.signals:
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):
                continue
            installed.previous[sig] = previous[sig]
        self.installed = installed

    def _on_trio_signal(self, sig: signal.Signals, previous: dict[signal.Signals, Any]) -> None:
        drain = self.drain
        assert drain is not None
        if drain.draining and self.signalled:
            drain.force(sig.name)
            _register_forced_exit(drain)
            return
        self.signalled = True
        drain.begin(sig.name)
        drain.arm_watchdog()
        # trio stops its servers on KeyboardInterrupt; hypercorn's trio worker then closes
        # the listeners and runs lifespan shutdown. Deliver it as trio's own SIGINT handler
        # would, from inside the run, after the pre-stop delay.
        handler = previous.get(signal.SIGINT)
        if not callable(handler):
            handler = signal.getsignal(signal.SIGINT)

        def stop() -> None:
            if callable(handler):
                handler(signal.SIGINT, sys._getframe())

        delay = self.owner.config.pre_stop_delay
        if delay > 0:
            trio = sys.modules["trio"]
            token = trio.lowlevel.current_trio_token()

            async def stop_later() -> None:
                await anyio.sleep(delay)
                token.run_sync_soon(stop)

            trio.lowlevel.spawn_system_task(stop_later)
        else:
            stop()

    def _on_signal(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        drain = self.drain
        assert drain is not None
        stop_signal = self.server_stop.get(sig)
        installed = self.installed

        def stop_server() -> None:
            if installed is not None and stop_signal is not None:
                installed.deliver(stop_signal)

        if drain.draining and self.signalled:
            drain.force(sig.name)
            _register_forced_exit(drain)
            stop_server()
            # The forced status is the one to leave with, not a re-raised first signal.
            self._forget_captured_signals()
            return
        self.signalled = True
        drain.begin(sig.name)
        drain.arm_watchdog()
        delay = self.owner.config.pre_stop_delay
        if delay > 0:
            logger.info("pre-stop delay: serving %.1f s more before the server stops", delay)
            loop.call_later(delay, stop_server)
        else:
            stop_server()

    def _forget_captured_signals(self) -> None:
        captured = self.captured_signals
        if captured is not None:
            handled = set(self.owner.config.signals) | {signal.SIGINT, signal.SIGTERM}
            captured[:] = [sig for sig in captured if sig not in handled]

    def _uninstall_signals(self) -> None:
        if self.installed is not None:
            self.installed.uninstall()
            self.installed = None

    async def _watch_hypercorn_parent(self, drain: Drain) -> None:
        # A hypercorn worker process ignores SIGINT and never sees the SIGTERM its parent got:
        # the parent sets a shared event, which the worker polls. Watch the same event.
        stop_event = _quirks.hypercorn_parent_stop_event()
        if stop_event is None:
            return
        _warn_if_hypercorn_grace_is_short(self.owner.config.drain_timeout)
        while not stop_event.is_set():
            await anyio.sleep(SHUTDOWN_EVENT_POLL)
        if not drain.draining:
            self.signalled = True
            drain.begin("SIGTERM")
            drain.arm_watchdog()

    # -- exit status ---------------------------------------------------------------------

    def _exit_if_work_was_lost(self) -> None:
        report = self.report
        if report is None or not self.signalled:
            return
        if report.exit_code == 0:
            self._forget_captured_signals()
            return
        # Servers exit 0 (or re-raise the signal) whatever the app lost; the status is the
        # one way an orchestrator learns that work was abandoned, so it is set here, once the
        # inner app has shut down.
        exit_now(report.exit_code)


def _register_forced_exit(drain: Drain) -> None:
    # A server may skip lifespan shutdown after a second signal (uvicorn's force exit) and
    # leave with status 0: the exit status still says the drain was forced.
    code = forced_exit_code(drain.reason)
    atexit.register(exit_now, 1 if code is None else code)


def _warn_if_hypercorn_grace_is_short(drain_timeout: float) -> None:
    graceful_timeout = _quirks.hypercorn_graceful_timeout()
    if graceful_timeout is not None and graceful_timeout < drain_timeout:
        logger.warning(
            "hypercorn's graceful_timeout (%g s) is shorter than drain_timeout (%g s): "
            "hypercorn cancels requests still running after it. Start hypercorn with "
            "--graceful-timeout %g",
            graceful_timeout,
            drain_timeout,
            drain_timeout,
        )


def _current_asyncio_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # trio


def _request_name(scope: Scope) -> str:
    return f"{scope['method']} {scope['path']}"


_monotonic = time.monotonic
_running_loop = asyncio.events._get_running_loop  # None, not an exception, under trio
_census.watch(GracefulLifespan._served, "scope", _request_name)


def _with_connection_close(message: Message) -> Message:
    headers = [
        (name, value)
        for name, value in message.get("headers", ())
        if name.lower() != b"connection"
    ]
    headers.append((b"connection", b"close"))
    return {**message, "headers": headers}


async def _answer_readiness(drain: Drain, send: Send) -> None:
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
