"""Signal handlers where the loop has none to offer (Windows): routed through the loop."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from graceful_web._signals import install

# -- platforms without loop.add_signal_handler (Windows) ----------------------------------


class LoopWithoutSignalHandlers(asyncio.SelectorEventLoop):
    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def test_signal_fallback_routes_signals_through_the_loop() -> None:
    loop = LoopWithoutSignalHandlers()
    seen: list[signal.Signals] = []
    chained: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: chained.append(signum))
    try:

        async def scenario() -> None:
            installed = install(asyncio.get_running_loop(), [signal.SIGUSR1], seen.append)
            assert installed is not None
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(200):
                    if seen:
                        break
                    await asyncio.sleep(0.01)
                assert installed.deliver(signal.SIGUSR1)
            finally:
                installed.uninstall()

        loop.run_until_complete(scenario())
    finally:
        loop.close()
        signal.signal(signal.SIGUSR1, previous)
    assert seen == [signal.SIGUSR1]
    assert chained == [signal.SIGUSR1]  # the handler it replaced is still reachable
