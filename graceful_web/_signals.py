"""Route stop signals into the drain first, and on to the server when it is time.

Servers stop on a signal in one of two ways: a Python-level handler (``signal.signal``, as
uvicorn does), or a handler on the event loop (``loop.add_signal_handler``: aiohttp, gunicorn's
workers, hypercorn, granian). Every event loop that offers the latter (asyncio's, uvloop,
rloop) learns of a signal through the process's wakeup fd (``signal.set_wakeup_fd``), not
through any handler we could read back: uvloop and rloop keep theirs where Python cannot see.

So nothing is read out of the loop. While installed, the wakeup fd is ours: a signal we
watch reaches our handler and not the loop, every other signal is passed on to the loop at
once, and ``deliver`` hands a watched signal on when the drain says so: it writes the signal
to the loop's own wakeup fd (for a loop's handler) or calls the Python-level handler we
replaced, exactly as if the signal had arrived then. The server stops the way it always does.
A loop that takes the wakeup fd back at the start of a run (uvloop, rloop) is caught up with
at the next signal or ``retake``; a signal the loop saw meanwhile is not delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from . import _quirks

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
        # The wakeup fd the loop had set, where signals go on to, with its inode: a loop may
        # close it at the end of a run (uvloop does), and its number may then be reused.
        self._loop_wakeup: tuple[int, int] | None = None
        # Signals that reached the loop too, while it had taken the wakeup fd back.
        self._seen_by_loop: set[signal.Signals] = set()

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        return tuple(self.previous)

    def deliver(self, sig: signal.Signals) -> bool:
        """Hand ``sig`` to the server's own handler for it, as if it arrived now; False when
        nothing in the process handles ``sig``."""
        handler: Any = self.previous[sig] if sig in self.previous else signal.getsignal(sig)
        if not callable(handler):
            return False
        if _quirks.is_loop_signal_dispatcher(handler, self._loop):
            # The loop's own entry runs from the wakeup fd: write the signal there, unless
            # the loop saw it already.
            self.retake()
            if sig not in self._seen_by_loop:
                self._write_to_loop(bytes([int(sig)]))
        else:
            handler(int(sig), None)
        self._seen_by_loop.discard(sig)
        return True

    def retake(self) -> bool:
        """Make the wakeup fd ours again if the loop took it back (uvloop and rloop set their
        own at the start of every run); True when it was still ours."""
        writer = self._writer
        if writer is None or threading.current_thread() is not threading.main_thread():
            return True
        current = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if current == writer.fileno():
            return True
        if current >= 0:
            with contextlib.suppress(OSError):
                self._loop_wakeup = (current, os.fstat(current).st_ino)
        return False

    def uninstall(self) -> None:
        self._pass_on_pending()
        for sig, handler in self.previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)
        self.previous = {}
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return
        if threading.current_thread() is threading.main_thread():
            # Give the wakeup fd back to the loop, unless the loop has already taken it.
            current = signal.set_wakeup_fd(writer.fileno())
            if current != writer.fileno():
                signal.set_wakeup_fd(current)
            elif self._loop_wakeup is not None and self._loop_fd_is_alive():
                signal.set_wakeup_fd(self._loop_wakeup[0])
            else:
                signal.set_wakeup_fd(-1)
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
        self.retake()
        return True

    def _on_python_signal(self, sig: signal.Signals) -> None:
        if not self.retake():
            self._seen_by_loop.add(sig)

    def _loop_fd_is_alive(self) -> bool:
        if self._loop_wakeup is None:
            return False
        fd, inode = self._loop_wakeup
        try:
            return os.fstat(fd).st_ino == inode
        except OSError:
            return False

    def _write_to_loop(self, data: bytes) -> None:
        if self._loop_fd_is_alive():
            assert self._loop_wakeup is not None
            with contextlib.suppress(OSError):
                os.write(self._loop_wakeup[0], data)

    def _pass_on_pending(self) -> None:
        """Signals we do not watch go on to the loop at once; ours stay here."""
        reader = self._reader
        if reader is None:
            return
        try:
            data = reader.recv(4096)
        except (BlockingIOError, InterruptedError, OSError):
            return
        watched = {int(sig) for sig in self.previous}
        others = bytes(number for number in data if number not in watched)
        if others:
            self._write_to_loop(others)


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
            "the server runs its event loop outside the main thread, where "
            "signals cannot be handled: the drain starts only when the server shuts down"
        )
        return None
    installed = Installed(loop)
    if not installed._take_wakeup_fd():
        logger.warning(
            "under %s, the event loop %s.%s does not offer add_reader(), so its "
            "signal handlers cannot be put behind the drain's: the server stops on its own at "
            "the signal, and the drain starts when it shuts down (no pre_stop_delay, no second "
            "signal forcing the exit)",
            _running_server(),
            type(loop).__module__,
            type(loop).__qualname__,
        )
        return None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of whatever code is running: hand the work to the loop
        # rather than touch its state from here.
        sig = signal.Signals(signum)
        installed._on_python_signal(sig)
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(callback, sig)

    for sig in dict.fromkeys(signals):
        try:
            installed.previous[sig] = signal.signal(sig, on_signal)
        except (ValueError, OSError) as exc:
            logger.warning("cannot handle %s here (%s)", sig.name, exc)
    return installed


def install_trio(signals: Iterable[signal.Signals], callback: SignalCallback) -> Installed | None:
    """Under trio: make ``callback(sig)`` run inside the trio run when one of ``signals``
    arrives, in place of the handler found (kept in ``Installed.previous``). None outside a
    trio run."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    token = trio.lowlevel.current_trio_token()
    installed = Installed()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the run has already ended
            token.run_sync_soon(callback, signal.Signals(signum))

    for sig in dict.fromkeys(signals):
        with contextlib.suppress(ValueError, OSError):
            installed.previous[sig] = signal.signal(sig, on_signal)
    return installed


_SERVERS = ("gunicorn", "granian", "hypercorn", "uvicorn", "aiohttp")


def _running_server() -> str:
    """The server this process most likely runs under, with its version, for a warning."""
    for name in _SERVERS:  # a gunicorn worker imports the server it runs: gunicorn first
        if name in sys.modules:
            return f"{name} {_quirks.version_of(name)}"
    return "this server"
