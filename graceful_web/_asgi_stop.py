"""How the stop sequence (``_stop``) reaches each ASGI server, and the exit status after it.

Servers stop on SIGTERM and SIGINT; a signal the app chose that the server does not act on
(SIGHUP, say) stops it as SIGTERM does. uvicorn's connections are reached (its listeners and
idle connections, through ``_quirks``); granian's and hypercorn's are not, so those are told to
stop at once, as bare. Under trio, the stop is the KeyboardInterrupt that trio's own SIGINT
handler would raise. A hypercorn worker follows its parent (``_hypercorn``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import sys

from . import _hypercorn, _quirks, _signals
from ._drain import Drain
from ._report import forced_exit_code
from ._stop import Connections, StopSequence
from ._watchdog import exit_now

logger = logging.getLogger("graceful_web")


class AsyncioServer:
    """An ASGI server on asyncio's loop (or uvloop), stopped by its handler for a signal."""

    stopped_when_draining = False
    stop_again_when_forced = True
    closes_long_lived_itself = True  # uvicorn's second signal is its force exit

    def __init__(self, drain: Drain, stop_signal: signal.Signals) -> None:
        self.drain = drain
        # The signal that stops the server, for each signal the drain starts on: the same
        # one, or ``stop_signal`` for a signal the server does not act on itself.
        self.server_stop = {
            sig: sig if _signals.server_handles(sig) else stop_signal
            for sig in drain.config.signals
        }
        # uvicorn re-raises the stop signal once it is done, so a clean drain would still end
        # "killed by SIGTERM"; it is told to forget the signals the drain took care of (read
        # once the drain's handlers are in front of uvicorn's).
        self.captured_signals: list[int] | None = None

    def connections(self) -> Connections | None:
        server = _quirks.uvicorn_server(asyncio.get_running_loop())
        listeners = _quirks.uvicorn_listeners(server) if server is not None else []
        if not listeners or _quirks.uvicorn_idle_connections(server) is None:
            _warn_if_uvicorn_unread()
            return None
        return Connections(listeners, lambda: _quirks.uvicorn_idle_connections(server))

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        stop_signal = self.server_stop.get(sig)
        _hypercorn.go_away_h2(asyncio.get_running_loop())
        if installed is not None and stop_signal is not None:
            installed.deliver(stop_signal)

    def forced(self, sig: signal.Signals) -> None:
        _register_forced_exit(self.drain)
        # The forced status is the one to leave with, not a re-raised first signal.
        self.forget_captured_signals()

    def forget_captured_signals(self) -> list[int]:
        """Take the drain's signals out of uvicorn's list of signals to re-raise; returns
        those taken out."""
        captured = self.captured_signals
        if captured is None:
            return []
        handled = set(self.drain.config.signals) | {signal.SIGINT, signal.SIGTERM}
        forgotten = [sig for sig in captured if sig in handled]
        captured[:] = [sig for sig in captured if sig not in handled]
        return forgotten


class TrioServer:
    """An ASGI server under trio (hypercorn's trio worker): trio stops its servers on
    KeyboardInterrupt, delivered as trio's own SIGINT handler would, from inside the run."""

    stopped_when_draining = False
    stop_again_when_forced = False
    closes_long_lived_itself = True

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def connections(self) -> None:
        return None

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        handler = installed.previous.get(signal.SIGINT) if installed is not None else None
        if not callable(handler):
            handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            return

        def interrupt() -> None:
            handler(signal.SIGINT, sys._getframe())

        sys.modules["trio"].lowlevel.current_trio_token().run_sync_soon(interrupt)

    def forced(self, sig: signal.Signals) -> None:
        _register_forced_exit(self.drain)


def stop_sequence(drain: Drain, *, handle_signals: bool) -> StopSequence:
    """The stop sequence of this server process, with its signals installed where the drain
    is to start on them. Not where the server alone decides when it stops (signals left to it,
    a hypercorn worker, whose parent gets the signal): the drain then follows its stop."""
    if asyncio.events._get_running_loop() is None:  # trio
        sequence = StopSequence(drain, TrioServer(drain))
        if handle_signals and "trio" in sys.modules:
            sequence.install(drain.config.signals)
        return sequence
    stop_signal = server_stop_signal()
    server = AsyncioServer(drain, stop_signal or signal.SIGTERM)
    sequence = StopSequence(drain, server)
    if handle_signals and stop_signal is not None:
        server.captured_signals = _quirks.uvicorn_captured_signals(stop_signal)
        sequence.install(drain.config.signals)
    return sequence


def server_stop_signal() -> signal.Signals | None:
    """The server's way to stop: its handler for SIGTERM (or SIGINT); None when nothing in
    the process acts on either."""
    return next(
        (sig for sig in (signal.SIGTERM, signal.SIGINT) if _signals.server_handles(sig)), None
    )


def end_clean_drain(server: object) -> None:
    """After a clean drain: status 0, ending where the bare server would have ended.

    uvicorn re-raises the stop signal once it has shut down; with the default handler back in
    place, the bare process dies of it there and then, before Python's teardown of every
    module (50 to 100 ms for a Starlette app). Taken out of that list, the signal no longer
    ends the process, so the process ends about then, once the tasks the event loop cancels
    last have cleaned up, with status 0. Where something would still run after the server (a
    handler of the user's for the signal; gunicorn's worker, which runs its worker_exit hook),
    Python's own exit proceeds."""
    if not isinstance(server, AsyncioServer):
        return
    forgotten = server.forget_captured_signals()
    if not forgotten or "gunicorn.arbiter" in sys.modules:
        return
    task = asyncio.get_running_loop().create_task(_exit_at_teardown(forgotten, 0))
    _teardown_watchers.add(task)
    task.add_done_callback(_teardown_watchers.discard)


def _warn_if_uvicorn_unread() -> None:
    if "uvicorn.server" in sys.modules:
        logger.warning(
            "uvicorn %s: its server, listeners or connections were not found where "
            "graceful_web looks for them; uvicorn stops as it does on its own, closing idle "
            "and just-accepted connections unanswered",
            _quirks.version_of("uvicorn"),
        )


_teardown_watchers: set[asyncio.Task[None]] = set()


async def _exit_at_teardown(signals: list[int], code: int) -> None:
    try:
        await asyncio.get_running_loop().create_future()  # until the loop cancels what is left
    except asyncio.CancelledError:
        # The server is done and has put back the handlers it found: the default one means
        # the bare server would now die of the signal it re-raises.
        if all(signal.getsignal(sig) is signal.SIG_DFL for sig in signals):
            # The loop cancelled every task left at once: theirs still get to clean up
            # (a task that never ends is the watchdog's, armed since the signal).
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others)
            logging.shutdown()  # every handler flushed and closed, as at a normal exit
            exit_now(code)
        raise


def _register_forced_exit(drain: Drain) -> None:
    # A server may skip lifespan shutdown after a second signal (uvicorn's force exit) and
    # leave with status 0: the exit status still says the drain was forced.
    code = forced_exit_code(drain.reason)
    atexit.register(exit_now, 1 if code is None else code)

