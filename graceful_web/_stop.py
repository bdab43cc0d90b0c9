"""The one stop sequence of every server: what happens from the stop signal to the server's own
stop, timed from the drain's one deadline.

1. The signal: the drain begins (readiness answers 503, responses close their connection) and
   the watchdog is armed, so the process ends by the deadline whatever the work does.
2. The pre-stop delay (``pre_stop_delay``, inside the deadline): the server keeps serving while
   load balancers notice the 503.
3. The listeners close, once what waits in their accept queue was accepted (``_listeners``).
4. The idle-connection grace (``idle_connection_grace``, inside what the delay leaves): a request
   already on its way on an idle connection is answered, with ``Connection: close``.
5. Websockets and reconnectable streams are ended politely (``_long_lived``) once
   ``long_lived_grace`` is over.
6. The server is told to stop, the way its own signal handler would: it closes what is left and
   sends its shutdown, whose end the drain holds back until protected work is done.

A second signal forces: protected work is cancelled and the server told to stop at once.

Each server gives a small handle (``ServerHandle``): its connections when they can be reached,
and how to tell it to stop. Where they are out of reach (granian, hypercorn's single process,
under trio), the server is told to stop in the signal handler itself, as bare: no loop turn in
between, so nothing reaches it meanwhile that it would then drop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from . import _listeners, _signals
from ._config import CLOSE_FLUSH_TIME
from ._drain import Drain
from ._long_lived import WEBSOCKETS

logger = logging.getLogger("graceful_web")


@dataclass
class Connections:
    """A server's connections, as the stop sequence reaches them."""

    #: The listening servers (``asyncio.Server`` or alike: ``sockets``, ``close()``).
    listeners: Sequence[Any]
    #: How many connections have no request in progress; None when that cannot be read (then
    #: there is no grace: the server closes them as it stops).
    idle: Callable[[], int | None]
    #: Run once the listeners are closed (aiohttp takes its closed sites out of its runner).
    after_close: Callable[[], Awaitable[None]] | None = None


class ServerHandle(Protocol):
    """What the stop sequence asks of one server."""

    #: A drain that began without a signal has already stopped the server (aiohttp's drain
    #: runs in its own shutdown): a signal during it forces.
    stopped_when_draining: bool
    #: A second signal is handed to the server too (uvicorn's second signal is its force exit).
    stop_again_when_forced: bool
    #: Told to stop, the server closes websockets itself (uvicorn: at once, with its own code):
    #: it is told only once the drain's ends went out. (aiohttp's stop waits for the drain.)
    closes_long_lived_itself: bool

    def connections(self) -> Connections | None:
        """The server's connections, or None where they are out of reach."""

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        """Tell the server to stop, as its own handler for ``sig`` would."""

    def forced(self, sig: signal.Signals) -> None:
        """After a second signal forced the drain: what this server needs besides."""


def start_drain(drain: Drain, reason: str) -> bool:
    """The first step, for every way a drain starts on a stop: begin, and arm the watchdog."""
    began = drain.begin(reason)
    drain.arm_watchdog()
    return began


class StopSequence:
    """The stop of one server process, with the drain in front."""

    def __init__(self, drain: Drain, server: ServerHandle) -> None:
        self.drain = drain
        self.config = drain.config
        self.server = server
        self.installed: _signals.Installed | None = None
        self.signalled = False  # the drain was started by a stop signal (or the server's stop)
        self.server_told = False

    def install(self, signals: Iterable[signal.Signals]) -> None:
        """Put the sequence in front of the server's own handlers for ``signals``."""
        signals = list(signals)
        if _running_loop() is not None:
            self.installed = _signals.install(asyncio.get_running_loop(), signals, self.on_signal)
        else:
            self.installed = _signals.install_trio(signals, self.on_signal)

    def uninstall(self) -> None:
        if self.installed is not None:
            self.installed.uninstall()
            self.installed = None

    def begin(self, reason: str) -> None:
        """The drain starts on a stop the server saw first (a hypercorn worker's parent)."""
        self.signalled = True
        start_drain(self.drain, reason)

    def on_signal(self, sig: signal.Signals) -> None:
        drain = self.drain
        if drain.draining and (self.signalled or self.server.stopped_when_draining):
            drain.force(sig.name)
            self._tell_server(sig, again=self.server.stop_again_when_forced)
            self.server.forced(sig)
            return
        self.begin(sig.name)
        delay = self.config.pre_stop_delay
        if delay > 0:
            logger.info("pre-stop delay: serving %.1f s more before the server stops", delay)
            _spawn(self._stop_listening_after, delay, sig)
        else:
            self._stop_listening(sig)

    async def _stop_listening_after(self, delay: float, sig: signal.Signals) -> None:
        await anyio.sleep(delay)
        self._stop_listening(sig)

    def _stop_listening(self, sig: signal.Signals) -> None:
        if self.server_told:
            return  # a second signal during the delay told it already
        connections = self.server.connections()
        if connections is None:
            long_lived = self.drain.long_lived
            if long_lived.any_open(WEBSOCKETS):
                _spawn(self._close_websockets_then_stop, sig)
                return
            self._tell_server(sig)
            return
        _spawn(self._close_then_stop, sig, connections)

    async def _close_websockets_then_stop(self, sig: signal.Signals) -> None:
        """A server out of reach may close websockets unannounced as it stops (granian: 1006
        at once): they are closed first, with no grace, and it is told once their clients
        answered (the close was on the wire), at most a close handshake later."""
        try:
            await self.drain.long_lived.end_all(WEBSOCKETS)
            await anyio.sleep(CLOSE_FLUSH_TIME)
        finally:
            self._tell_server(sig)

    async def _close_then_stop(self, sig: signal.Signals, connections: Connections) -> None:
        """Close the listeners now, answer what was already accepted and what idle keep-alive
        clients send within the grace, then let the server stop as it does, closing what is
        left."""
        try:
            await _listeners.close_listeners(connections.listeners)
            if connections.after_close is not None:
                await connections.after_close()
            if connections.idle() is not None:
                await _listeners.answer_idle_connections(
                    lambda: connections.idle() or 0, self.config.idle_connection_grace
                )
            long_lived = self.drain.long_lived
            if self.server.closes_long_lived_itself and long_lived.any_open():
                # A server closes what is left as it stops, websockets unannounced or with
                # a code of its own: the drain's ends go first.
                with anyio.move_on_after(self.drain.remaining()):
                    await long_lived.wait_sent()
        finally:
            self._tell_server(sig)

    def _tell_server(self, sig: signal.Signals, *, again: bool = False) -> None:
        if self.server_told and not again:
            return
        self.server_told = True
        self.server.stop(sig, self.installed)


def _spawn(function: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
    """Run ``function(*args)`` beside the server: an asyncio task, or a trio system task."""
    if _running_loop() is not None:
        task = asyncio.get_running_loop().create_task(function(*args))
        _background.add(task)
        task.add_done_callback(_background.discard)
    else:
        sys.modules["trio"].lowlevel.spawn_system_task(function, *args)


_background: set[asyncio.Task[None]] = set()
_running_loop = asyncio.events._get_running_loop  # None, not an exception, under trio
