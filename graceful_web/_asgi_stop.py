"""The ASGI adapter's side of a server's stop: the drain starts at the signal (or, in a
hypercorn worker, at its parent's stop event), and the server is told to stop after the
pre-stop delay, the way it stops on its own. A second signal forces the exit.

Servers stop on SIGTERM and SIGINT; a signal the app chose that the server does not act on
(SIGHUP, say) stops it as SIGTERM does. Under trio, the stop is the KeyboardInterrupt that
trio's own SIGINT handler would raise.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from . import _listeners, _quirks, _signals
from ._config import Config
from ._drain import Drain
from ._report import forced_exit_code
from ._watchdog import exit_now

logger = logging.getLogger("graceful_web")

#: How often a worker of a multi-process hypercorn looks at its parent's stop event.
SHUTDOWN_EVENT_POLL = 0.05


class ServerStop:
    """How one server process is stopped, with the drain in front."""

    def __init__(self, config: Config, *, handle_signals: bool) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.drain: Drain | None = None
        self.installed: _signals.Installed | None = None
        self.signalled = False  # the drain was started by a stop signal (or the server's stop)
        # uvicorn re-raises the stop signal once it is done, so a clean drain would still end
        # "killed by SIGTERM"; it is told to forget the signals the drain took care of.
        self.captured_signals: list[int] | None = None
        # The signal that stops the server, for each signal the drain starts on: the same
        # one, or SIGTERM (else SIGINT) for a signal the server does not act on itself.
        self.server_stop: dict[signal.Signals, signal.Signals] = {}
        self.server_told = False  # the server has been told to stop
        self.closing: asyncio.Task[None] | None = None

    def install(self, drain: Drain) -> None:
        """Put the drain in front of the server's own stop, for the signals configured."""
        self.drain = drain
        if not self.handle_signals:
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
        for sig in self.config.signals:
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

        for sig in self.config.signals:
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

        delay = self.config.pre_stop_delay
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

        def stop_server(again: bool = False) -> None:
            if self.server_told and not again:
                return  # told already: by a second signal during the grace
            self.server_told = True
            if installed is not None and stop_signal is not None:
                installed.deliver(stop_signal)

        def stop_listening() -> None:
            server = _quirks.uvicorn_server(loop)
            if server is None:
                _warn_if_uvicorn_unread()
                stop_server()  # at once, as bare: this server's connections are its own
                return
            self.closing = loop.create_task(self._answer_accepted_then(server, stop_server))

        if drain.draining and self.signalled:
            drain.force(sig.name)
            _register_forced_exit(drain)
            stop_server(again=True)
            # The forced status is the one to leave with, not a re-raised first signal.
            self.forget_captured_signals()
            return
        self.signalled = True
        drain.begin(sig.name)
        drain.arm_watchdog()
        delay = self.config.pre_stop_delay
        if delay > 0:
            logger.info("pre-stop delay: serving %.1f s more before the server stops", delay)
            loop.call_later(delay, stop_listening)
        else:
            stop_listening()

    async def _answer_accepted_then(self, server: Any, stop_server: Callable[[], None]) -> None:
        """Close uvicorn's listeners now, answer what it had already accepted and what idle
        keep-alive clients send within the grace (with ``Connection: close``), then let it stop
        as it does, closing what is left. (Other servers are told to stop at once, as bare:
        their connections are out of reach.)"""
        try:
            listeners = _quirks.uvicorn_listeners(server)
            if listeners and _quirks.uvicorn_idle_connections(server) is not None:
                await _listeners.close_listeners(listeners)
                await _listeners.answer_idle_connections(
                    lambda: _quirks.uvicorn_idle_connections(server) or 0,
                    self.config.idle_connection_grace,
                )
            else:
                _warn_if_uvicorn_unread()
        finally:
            stop_server()

    def forget_captured_signals(self) -> list[int]:
        """Take the drain's signals out of uvicorn's list of signals to re-raise; returns
        those taken out."""
        captured = self.captured_signals
        if captured is None:
            return []
        handled = set(self.config.signals) | {signal.SIGINT, signal.SIGTERM}
        forgotten = [sig for sig in captured if sig in handled]
        captured[:] = [sig for sig in captured if sig not in handled]
        return forgotten

    def end_clean_drain(self) -> None:
        """After a clean drain: status 0, ending where the bare server would have ended.

        uvicorn re-raises the stop signal once it has shut down; with the default handler
        back in place, the bare process dies of it there and then, before Python's teardown
        of every module (50 to 100 ms for a Starlette app). Taken out of that list, the
        signal no longer ends the process, so the process ends about then, once the tasks
        the event loop cancels last have cleaned up, with status 0. Where something would still run
        after the server (a handler of the user's for the signal; gunicorn's worker, which
        runs its worker_exit hook), Python's own exit proceeds."""
        forgotten = self.forget_captured_signals()
        if not forgotten or "gunicorn.arbiter" in sys.modules:
            return
        task = asyncio.get_running_loop().create_task(_exit_at_teardown(forgotten, 0))
        _teardown_watchers.add(task)
        task.add_done_callback(_teardown_watchers.discard)

    def uninstall(self) -> None:
        if self.installed is not None:
            self.installed.uninstall()
            self.installed = None

    async def watch_listeners(self) -> None:
        await _listeners.warn_if_reuse_port_resets()

    async def watch_hypercorn_parent(self, drain: Drain) -> None:
        # A hypercorn worker process ignores SIGINT and never sees the SIGTERM its parent got:
        # the parent sets a shared event, which the worker polls. Watch the same event.
        stop_event = _quirks.hypercorn_parent_stop_event()
        if stop_event is None:
            return
        _warn_if_hypercorn_grace_is_short(self.config.drain_timeout)
        if _seconds_after_parent() > REPLACEMENT_AFTER:
            # The parent sets the same stop event for SIGHUP as for SIGTERM, and starts new
            # workers only once every old one has exited: a reload paused the whole service.
            logger.warning(
                "this hypercorn worker replaces one stopped by a reload: hypercorn stops every "
                "worker and starts new ones only once all have exited, so new connections "
                "waited in the listen backlog for the old workers' drain (up to %g s) and this "
                "worker's startup. For reloads that overlap, use uvicorn --workers, gunicorn or "
                "granian, which replace workers one at a time",
                self.config.drain_timeout,
            )
        while not stop_event.is_set():
            await anyio.sleep(SHUTDOWN_EVENT_POLL)
        # hypercorn looks at the event every 100 ms, closes every idle connection, and only then
        # its listeners: a client reconnecting meanwhile (the drain answers with Connection:
        # close) reaches this worker only to be dropped. Closed now, the socket the parent
        # holds keeps such connections for the new workers.
        listeners = _quirks.hypercorn_listeners(asyncio.get_running_loop()) if _on_asyncio() else []
        if listeners:
            await _listeners.close_listeners(listeners, accept_queued=False)
        # Once one worker has exited, the parent sends the others SIGTERM, whose default action
        # would end a worker still draining, with its jobs: the drain, bounded by its deadline
        # and its watchdog, decides when this worker ends.
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, _drain_goes_on)
        if not drain.draining:
            self.signalled = True
            drain.begin("SIGTERM")
            drain.arm_watchdog()


#: A hypercorn worker started this long after its parent replaces one (the first ones start
#: with the parent, within a second).
REPLACEMENT_AFTER = 3.0


def _seconds_after_parent() -> float:
    """How long after its parent this process started (0 where /proc cannot tell)."""
    try:
        own = _start_ticks("self")
        parent = _start_ticks(str(os.getppid()))
    except (OSError, ValueError, IndexError):
        return 0.0
    return (own - parent) / os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name, in parentheses, may hold spaces: count the fields after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _warn_if_uvicorn_unread() -> None:
    if "uvicorn.server" in sys.modules:
        logger.warning(
            "uvicorn %s: its server, listeners or connections were not found where "
            "graceful_web looks for them; uvicorn stops as it does on its own, closing idle "
            "and just-accepted connections unanswered",
            _quirks.version_of("uvicorn"),
        )


def _on_asyncio() -> bool:
    return asyncio.events._get_running_loop() is not None  # None, not an error, under trio


def _drain_goes_on(signum: int, frame: Any) -> None:
    logger.info(
        "hypercorn's parent sent SIGTERM to this worker, still draining: the drain goes on to "
        "its end or its deadline"
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
