"""The lifespan conversation of ``GracefulLifespan``: the server on one side, the wrapped
app on the other, the drain in between.

The drain runs from its first moment (the signal) beside the server's own stop, and its end
is awaited inside lifespan ``shutdown``, before the wrapped app's own shutdown and before the
server tears the loop down. A wrapped app without lifespan support is served all the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.abc

from . import _hypercorn, _listeners
from . import durable as _durable
from ._asgi_stop import end_clean_drain, stop_sequence
from ._config import APP_SHUTDOWN_BOUND, SERVER_SHUTDOWN_WAIT, Config
from ._current import current_drain
from ._drain import Drain
from ._report import DrainReport
from ._stop import StopSequence
from ._watchdog import exit_now

logger = logging.getLogger("graceful_web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Lifespan:
    """One lifespan conversation: the server on one side, the inner app on the other, the
    drain in between."""

    def __init__(
        self,
        app: ASGIApp,
        config: Config,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        handle_signals: bool,
        on_startup: Callable[[], None],
    ) -> None:
        self.app = app
        self.config = config
        self.handle_signals = handle_signals
        self.sequence: StopSequence | None = None
        self.on_startup = on_startup
        self.scope = scope
        self.receive = receive
        self.send = send
        self.drain: Drain | None = None
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

    async def run(self) -> None:
        message = await self.receive()
        if message["type"] != "lifespan.startup":
            raise RuntimeError(f"expected lifespan.startup, got {message['type']!r}")
        drain = self.drain = current_drain()
        drain.configure(self.config)
        # Before the app serves: the store opens, and what others left behind starts running.
        try:
            await _durable.startup()
        except Exception as exc:
            # A store that can never work (a damaged file): the server must not start.
            logger.error("%s", exc)
            await self.send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self.on_startup()
        startup_failed = False
        shutdown_reply: Message | None = None
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
                shutdown_reply = await self._serve(
                task_group, drain, inner_has_lifespan=reply is not None
            )
        if shutdown_reply is not None:
            # The last thing this task does: a server may cancel it the moment it reads the
            # reply (hypercorn does), and a task group still winding down would take that
            # cancellation as its own error.
            await self.send(shutdown_reply)
        if startup_failed and self.inner_error is not None:
            raise self.inner_error

    async def _serve(
        self, task_group: anyio.abc.TaskGroup, drain: Drain, *, inner_has_lifespan: bool
    ) -> Message:
        self.inner_has_lifespan = inner_has_lifespan
        sequence = self.sequence = stop_sequence(drain, handle_signals=self.handle_signals)
        task_group.start_soon(self._drain_once_shutting_down, drain)
        task_group.start_soon(_hypercorn.watch_parent, sequence)
        task_group.start_soon(_listeners.warn_if_reuse_port_resets)
        await self.send({"type": "lifespan.startup.complete"})

        await self.receive()  # lifespan.shutdown
        self.shutdown_requested.set()
        drain.begin("shutdown")
        await self.drained.wait()
        await _durable.shutdown()
        shutdown_reply = await self._shut_inner_down()
        sequence.uninstall()
        self._exit_if_work_was_lost()
        task_group.cancel_scope.cancel()
        return shutdown_reply

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
            await self.app(self.scope, self.inner_receive_stream.receive, self._from_inner)
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
        if not self._signalled() or report.exit_code == 0:
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
        with anyio.move_on_after(APP_SHUTDOWN_BOUND):
            await self._shut_inner_down()
        if self.sequence is not None:
            self.sequence.uninstall()
        exit_now(report.exit_code)

    # -- exit status ---------------------------------------------------------------------

    def _signalled(self) -> bool:
        return self.sequence is not None and self.sequence.signalled

    def _exit_if_work_was_lost(self) -> None:
        report = self.report
        if report is None or self.sequence is None or not self._signalled():
            return
        if report.exit_code == 0:
            end_clean_drain(self.sequence.server)
            return
        # Servers exit 0 (or re-raise the signal) whatever the app lost; the status is the
        # one way an orchestrator learns that work was abandoned, so it is set here, once the
        # inner app has shut down.
        exit_now(report.exit_code)
