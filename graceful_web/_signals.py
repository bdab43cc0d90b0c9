"""Route stop signals into the drain, on top of whatever handler the server installed.

Servers install their own handlers (aiohttp and gunicorn with ``loop.add_signal_handler``);
replacing them would break the server's own stop, so each installed handler remembers the
previous one and the adapter calls it when it is time for the server to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable
from types import FrameType

logger = logging.getLogger("graceful_web")

SignalCallback = Callable[[signal.Signals], None]
Chained = Callable[[], None]


def _previous_loop_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> Chained | None:
    # asyncio keeps one handler per signal and offers no getter; the selector loops all keep
    # them in ``_signal_handlers``. Without it there is nothing to chain, and we say so.
    handlers = getattr(loop, "_signal_handlers", None)
    if not isinstance(handlers, dict):
        return None
    handle = handlers.get(sig)
    if handle is None or handle.cancelled():
        return None
    callback = handle._callback
    args = handle._args

    def call_previous() -> None:
        callback(*args)

    return call_previous


def _previous_python_handler(sig: signal.Signals) -> Chained | None:
    previous = signal.getsignal(sig)
    if not callable(previous):
        return None

    def call_previous() -> None:
        previous(int(sig), None)

    return call_previous


def previous_handler(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> Chained | None:
    """The handler a server installed for ``sig`` (on the loop or with ``signal.signal``),
    as a call that runs it; None when there is none."""
    return _previous_loop_handler(loop, sig) or _previous_python_handler(sig)


class Installed:
    """Our handlers for a set of signals, with the handlers they replaced."""

    def __init__(self) -> None:
        self.previous: dict[signal.Signals, Chained | None] = {}
        self._loop_signals: list[signal.Signals] = []
        self._python_signals: dict[signal.Signals, object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def chain(self, sig: signal.Signals) -> bool:
        """Call the handler ours replaced; False when there was none."""
        previous = self.previous.get(sig)
        if previous is None:
            return False
        previous()
        return True

    def uninstall(self) -> None:
        loop = self._loop
        for sig in self._loop_signals:
            if loop is None or loop.is_closed():
                break
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
        for sig, handler in self._python_signals.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, handler)  # type: ignore[arg-type]
        self._loop_signals.clear()
        self._python_signals.clear()


def install(
    loop: asyncio.AbstractEventLoop,
    signals: Iterable[signal.Signals],
    callback: SignalCallback,
) -> Installed:
    """Make ``callback(sig)`` run on ``loop`` when one of ``signals`` arrives.

    Uses ``loop.add_signal_handler`` where the platform has it and falls back to
    ``signal.signal`` plus ``call_soon_threadsafe`` (Windows, or loops without it).
    """
    installed = Installed()
    installed._loop = loop
    for sig in signals:
        # Without a loop handler, the Python-level one (SIGINT's KeyboardInterrupt, or
        # asyncio.run's own SIGINT handler) is the server's way to stop.
        previous = _previous_loop_handler(loop, sig) or _previous_python_handler(sig)
        try:
            loop.add_signal_handler(sig, callback, sig)
        except NotImplementedError:
            installed.previous[sig] = _previous_python_handler(sig)
            _install_python_handler(installed, loop, sig, callback)
            continue
        except (RuntimeError, ValueError) as exc:
            logger.warning(
                "cannot handle %s here (%s): run the server in the main thread", sig.name, exc
            )
            continue
        installed.previous[sig] = previous
        installed._loop_signals.append(sig)
    return installed


def _install_python_handler(
    installed: Installed,
    loop: asyncio.AbstractEventLoop,
    sig: signal.Signals,
    callback: SignalCallback,
) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A Python-level handler runs between two bytecodes of whatever code is running;
        # hand the work to the loop instead of touching its state from here.
        loop.call_soon_threadsafe(callback, signal.Signals(signum))

    try:
        installed._python_signals[sig] = signal.signal(sig, on_signal)
    except (ValueError, OSError) as exc:
        logger.warning(
            "cannot handle %s here (%s): run the server in the main thread", sig.name, exc
        )
