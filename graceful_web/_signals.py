"""Route stop signals into the drain first, and on to the server when it is time.

Servers stop on a signal in one of two ways: a Python-level handler (``signal.signal``, as
uvicorn does), or a handler on the event loop (``loop.add_signal_handler``: aiohttp, gunicorn's
workers, hypercorn, granian). Every event loop that offers the latter (asyncio's, uvloop,
rloop) learns of a signal through the process's wakeup fd (``signal.set_wakeup_fd``), not
through any handler we could read back: uvloop and rloop keep theirs where Python cannot see.

So nothing is read out of the loop. While installed, the wakeup fd is ours: a signal we
watch reaches our handler and not the loop, every other signal is passed on to the loop at
once, and ``deliver`` hands a watched signal on when the drain says so: it calls the
Python-level handler we replaced and writes the signal to the loop's own wakeup fd, exactly
as if the signal had arrived then. The server stops the way it always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

logger = logging.getLogger("graceful_web")

SignalCallback = Callable[[signal.Signals], None]


def server_handles(sig: signal.Signals) -> bool:
    """Whether something in this process acts on ``sig`` (a Python-level handler, or an
    event loop's handler, which always sets a Python-level one alongside)."""
    return callable(signal.getsignal(sig))


class Installed:
    """Our handlers for a set of signals, with what they replaced."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        # The Python-level handler each of our signals had before ours.
        self.previous: dict[signal.Signals, Any] = {}
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._loop_wakeup_fd = -1  # the wakeup fd the loop had set, where signals go on to

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return tuple(self.previous)

    def deliver(self, sig: signal.Signals) -> bool:
        """Hand ``sig`` to the server's own handler for it, as if it arrived now; False when
        nothing in the process handles ``sig``."""
        handler: Any = self.previous[sig] if sig in self.previous else signal.getsignal(sig)
        handled = callable(handler)
        if self._owns_wakeup_fd() and self._loop_wakeup_fd >= 0:
            # Unless someone took the wakeup fd back since, the loop never saw this signal.
            with contextlib.suppress(OSError):
                os.write(self._loop_wakeup_fd, bytes([int(sig)]))
        if handled:
            handler(int(sig), None)
        return handled

    def uninstall(self) -> None:
        self._pass_on_pending()
        for sig, handler in self.previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)
        self.previous = {}
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return
        if self._owns_wakeup_fd():
            with contextlib.suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._loop_wakeup_fd)
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()
        self._reader = self._writer = None

    # -- the wakeup fd ---------------------------------------------------------------------

    def _take_wakeup_fd(self) -> bool:
        assert self._loop is not None
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            self._loop.add_reader(reader.fileno(), self._pass_on_pending)
        except (NotImplementedError, RuntimeError, ValueError):
            reader.close()
            writer.close()
            return False
        self._reader, self._writer = reader, writer
        self._loop_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        return True

    def _owns_wakeup_fd(self) -> bool:
        writer = self._writer
        if writer is None or threading.current_thread() is not threading.main_thread():
            return False
        # Python has no getter: set ours and put back whatever was there if it was not.
        current = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if current != writer.fileno():
            signal.set_wakeup_fd(current)
            return False
        return True

    def _pass_on_pending(self) -> None:
        """Signals we do not watch go on to the loop at once; ours stay here."""
        reader = self._reader
        if reader is None:
            return
        try:
            data = reader.recv(4096)
        except (BlockingIOError, InterruptedError, OSError):
            return
        others = bytes(number for number in data if number not in self._watched_numbers())
        if others and self._loop_wakeup_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._loop_wakeup_fd, others)

    def _watched_numbers(self) -> set[int]:
        return {int(sig) for sig in self.previous}


def install(
    loop: asyncio.AbstractEventLoop,
    signals: Iterable[signal.Signals],
    callback: SignalCallback,
) -> Installed | None:
    """Make ``callback(sig)`` run on ``loop`` when one of ``signals`` arrives, before the
    server's own handler, which then runs only on ``Installed.deliver``.

    None (with a warning saying what is lost) when this loop or thread does not allow it:
    the server's own handlers are then left exactly as they were.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "graceful_web: the server runs its event loop outside the main thread, where "
            "signals cannot be handled: the drain starts only when the server shuts down"
        )
        return None
    installed = Installed(loop)
    if not installed._take_wakeup_fd():
        logger.warning(
            "graceful_web: the event loop %s.%s does not offer add_reader(), so its signal "
            "handlers cannot be put behind the drain's: the server stops on its own at the "
            "signal, and the drain starts when it shuts down (no pre_stop_delay, no second "
            "signal forcing the exit)",
            type(loop).__module__,
            type(loop).__qualname__,
        )
        return None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of whatever code is running: hand the work to the loop
        # rather than touch its state from here.
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(callback, signal.Signals(signum))

    for sig in dict.fromkeys(signals):
        try:
            installed.previous[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError) as exc:
            logger.warning("graceful_web: cannot handle %s here (%s)", sig.name, exc)
    return installed
