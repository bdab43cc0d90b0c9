"""``GracefulLifespan`` under a server that never sends lifespan: daphne (Django Channels'
server) and uvicorn ``--lifespan off``.

What lifespan startup would have done is done at the first request or websocket: the drain
configured, durable jobs started, the stop sequence put in front of the server's signal
handlers. The stop then runs as on every other server (drain begun, pre-stop delay, listeners
closed, idle grace), with one difference: there is no lifespan shutdown to hold the server's
end back, so the server is told to stop only once the drain is over. Where the server's stop
cannot be reached, one warning says so, at that first request, with the fix.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

import anyio

from . import _daphne, _quirks, _signals
from . import durable as _durable
from ._asgi_stop import AsyncioServer, end_clean_drain
from ._config import APP_SHUTDOWN_BOUND, Config
from ._current import current_drain
from ._drain import Drain
from ._report import DrainReport
from ._stop import Connections, StopSequence
from ._watchdog import exit_now

logger = logging.getLogger("graceful_web")


class StopAfterDrain:
    """A server handle whose stop waits for the drain to be over: the stop sequence tells it
    when its turn comes (``told``), the server hears of it once the drain is over too."""

    stopped_when_draining = False
    closes_long_lived_itself = True

    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.stop_again_when_forced = server.stop_again_when_forced
        self.told = anyio.Event()
        self.stop_with: tuple[signal.Signals, _signals.Installed | None] | None = None

    def connections(self) -> Connections | None:
        return self.server.connections()

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        if self.server.drain.forced:
            self.server.stop(sig, installed)
            return
        self.stop_with = (sig, installed)
        self.told.set()

    def forced(self, sig: signal.Signals) -> None:
        self.server.forced(sig)


class WithoutLifespan:
    """The start, at the first request, of a ``GracefulLifespan`` that got no lifespan."""

    def __init__(
        self, config: Config, *, handle_signals: bool, on_startup: Callable[[], None]
    ) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.on_startup = on_startup
        self._starting = False
        self._started: anyio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start once; a request arriving meanwhile waits until it is done."""
        if self._starting:
            if self._started is not None:
                await self._started.wait()
            return
        self._starting = True
        self._started = anyio.Event()
        try:
            await self._start()
        finally:
            self.on_startup()
            self._started.set()

    async def _start(self) -> None:
        reactor = _daphne.running_reactor()
        unreachable = self._unreachable(held_by_reactor=reactor is not None)
        if unreachable:
            logger.warning(
                "the server sent no lifespan startup before this request, and %s: nothing "
                "will be drained on shutdown, and protected jobs are cancelled when the process "
                "exits. %s",
                *unreachable,
            )
            return
        drain = current_drain()
        drain.configure(self.config)
        try:
            await _durable.startup()
        except Exception as exc:
            logger.error("%s", exc)
        stop_signal = signal.SIGTERM  # handled, as _unreachable saw
        server: AsyncioServer
        if reactor is not None:
            server = _daphne.TwistedServer(drain, reactor, stop_signal)
        else:
            server = AsyncioServer(drain, stop_signal)
            server.captured_signals = _quirks.uvicorn_captured_signals(stop_signal)
        held = StopAfterDrain(server)
        sequence = StopSequence(drain, held)
        if self.handle_signals:
            sequence.install(drain.config.signals)
        if isinstance(server, _daphne.TwistedServer):
            server.hold_shutdown(lambda: _drained(drain))
        task = asyncio.get_running_loop().create_task(self._drain_then_stop(sequence, held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info(
            "the server sent no lifespan: graceful_web started with the first request, and "
            "holds the server's stop until the drain is over"
        )

    def _unreachable(self, *, held_by_reactor: bool) -> tuple[str, str] | None:
        """Why the server's stop cannot be reached from here, and the fix; None when it can.
        With the signals left to it, daphne's reactor still waits for its shutdown triggers."""
        if not self.handle_signals and not held_by_reactor:
            return (
                "GracefulLifespan(handle_signals=False) leaves the signals to the server",
                "Leave handle_signals at True, or run the server with lifespan on "
                "(uvicorn --lifespan on)",
            )
        if asyncio.events._get_running_loop() is None:
            why = "under trio only lifespan can start graceful_web"
        elif threading.current_thread() is not threading.main_thread():
            why = "its event loop runs outside the main thread, where signals cannot be handled"
        elif not _signals.server_handles(signal.SIGTERM):
            # Not a server's process, most likely (an in-process test client): nothing to hold.
            why = "nothing in this process handles SIGTERM, as a server would"
        else:
            return None
        return why, _WITH_LIFESPAN

    async def _drain_then_stop(self, sequence: StopSequence, held: StopAfterDrain) -> None:
        drain = sequence.drain
        report = await _drained(drain)
        with anyio.move_on_after(APP_SHUTDOWN_BOUND):
            await _durable.shutdown()
        if not sequence.signalled:
            return  # the server stopped by itself (daphne's reactor): it goes on as it does
        if report.exit_code != 0:
            # Work was abandoned, or a second signal forced the drain: nothing is left to
            # wait for, and the status is the one way an orchestrator learns of it.
            sequence.uninstall()
            exit_now(report.exit_code)
        await held.told.wait()
        assert held.stop_with is not None
        sig, installed = held.stop_with
        held.server.stop(sig, installed)
        sequence.uninstall()
        end_clean_drain(held.server)


async def _drained(drain: Drain) -> DrainReport:
    await drain.wait_shutting_down()
    return await drain.wait(drain.reason or "shutdown")


_WITH_LIFESPAN = (
    "Run the server with lifespan on (uvicorn --lifespan on; GracefulLifespan answers lifespan "
    "itself even when the wrapped app, e.g. Django's, does not support it)"
)
