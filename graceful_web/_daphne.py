"""daphne, the server of Django Channels: Twisted's reactor running on asyncio's loop, which
never sends lifespan. What the stop sequence (``_stop``) asks of it, through Twisted's public
interfaces only.

daphne stops when the reactor does: on SIGTERM or SIGINT (Twisted's handlers), its "before
shutdown" trigger cancels every application instance still running, then the reactor closes
every connection. So the reactor hears of the stop only once the drain is over
(``_without_lifespan`` holds it); before that, the listening ports stop listening. Should the
reactor stop by another way (``reactor.stop()``, signals left to Twisted), a "before shutdown"
trigger of our own starts the drain and holds the reactor's shutdown until it is over:
daphne's own trigger has cancelled every application instance by then, the protected jobs
still finish.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _listeners, _quirks, _signals
from ._asgi_stop import AsyncioServer
from ._config import UNSENT_FLUSH_BOUND
from ._drain import Drain
from ._stop import Connections, start_drain


def running_reactor() -> Any:
    """Twisted's reactor when it runs this process on asyncio's loop (daphne's), or None."""
    reactor = sys.modules.get("twisted.internet.reactor")
    asyncioreactor = sys.modules.get("twisted.internet.asyncioreactor")
    if reactor is None or asyncioreactor is None:
        return None
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        return None
    return reactor if getattr(reactor, "running", False) else None


class ListeningPort:
    """A Twisted listening port as ``_listeners.close_listeners`` closes a listener: its
    socket (a port has ``fileno()``), and ``close()``."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.sockets = (port,)

    def close(self) -> None:
        self.port.stopListening()


class TwistedServer(AsyncioServer):
    """daphne's reactor: stopped by Twisted's own handler for the signal."""

    # Twisted answers a second stop with ReactorNotRunning: the forced drain ends the process.
    stop_again_when_forced = False

    def __init__(self, drain: Drain, reactor: Any, stop_signal: signal.Signals) -> None:
        super().__init__(drain, stop_signal)
        self.reactor = reactor
        # The drain closes websockets with 1012 or 1001, which daphne cannot send as it is.
        _quirks.daphne_sends_server_close_codes()

    def connections(self) -> Connections:
        # Twisted builds a connection's protocol as it accepts it, and the reactor closes
        # every connection only once the drain is over: no idle grace to give.
        return Connections(self.listeners(), lambda: None)

    def listeners(self) -> list[ListeningPort]:
        interfaces = sys.modules["twisted.internet.interfaces"]
        return [
            ListeningPort(reader)
            for reader in self.reactor.getReaders()
            if interfaces.IListeningPort.providedBy(reader)
        ]

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        task = asyncio.get_running_loop().create_task(self._stop_once_sent(sig, installed))
        _stopping.add(task)
        task.add_done_callback(_stopping.discard)

    async def _stop_once_sent(
        self, sig: signal.Signals, installed: _signals.Installed | None
    ) -> None:
        # The reactor drops every connection at its shutdown, unsent data and all: the last
        # response, a websocket's close frame. Twisted's writers are the transports with data
        # still to send.
        give_up = time.monotonic() + min(UNSENT_FLUSH_BOUND, self.drain.remaining())
        while self.reactor.getWriters() and time.monotonic() < give_up:
            await asyncio.sleep(_listeners.IDLE_POLL)
        stop_signal = self.server_stop.get(sig)
        if installed is not None and stop_signal is not None and installed.deliver(stop_signal):
            return
        if self.reactor.running:
            self.reactor.stop()  # no handler of Twisted's to hand the signal to

    def hold_shutdown(self, drained: Callable[[], Awaitable[object]]) -> None:
        """Hold the reactor's shutdown until the drain is over, however it comes."""

        def before_shutdown() -> Any:
            if self.drain.report is not None:
                return None
            start_drain(self.drain, "shutdown")
            future = asyncio.ensure_future(drained())
            return sys.modules["twisted.internet.defer"].Deferred.fromFuture(future)

        self.reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


_stopping: set[asyncio.Task[None]] = set()
