"""How the stop sequence (``_stop``) reaches an aiohttp server: the runner serving the app
(run_app, ``AppRunner``, gunicorn's ``GunicornWebWorker``), its sites' listeners and its idle
connections, and its own way to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import __version__ as aiohttp_version
from aiohttp import web

from . import _quirks, _signals
from ._stop import Connections

logger = logging.getLogger("graceful_web")

# asyncio takes this many loop turns from accepting a connection to the first step of
# aiohttp's handler for it: accept task, transport, connection_made, handler task.
_ACCEPT_TURNS = 4


class AiohttpServer:
    """The aiohttp server running ``app``, started by ``server_task``."""

    # The drain runs in aiohttp's on_shutdown, once the server has stopped: a signal during
    # a drain the app's own cleanup started forces.
    stopped_when_draining = True
    closes_long_lived_itself = False  # its runner's stop waits for the drain (on_shutdown)
    stop_again_when_forced = False

    def __init__(self, app: web.Application, server_task: asyncio.Task[Any] | None) -> None:
        self.app = app
        self.server_task = server_task
        self.cancelled_server_task = False

    def connections(self) -> Connections | None:
        runner = _quirks.aiohttp_runner(self.server_task, web.BaseRunner, self.app)
        if runner is None or runner.server is None:
            logger.warning(
                "aiohttp %s: the runner serving this app was not found where graceful_web "
                "looks for it; aiohttp stops as it does on its own, closing idle and "
                "just-accepted connections unanswered",
                aiohttp_version,
            )
            return None
        sites = list(runner.sites)
        server = runner.server

        async def take_sites_out() -> None:
            for site in sites:
                await site.stop()  # closed already: this takes it out of the runner

        listeners = [_quirks.aiohttp_site_listener(site) for site in sites]
        return Connections(
            [listener for listener in listeners if listener],
            lambda: _quirks.aiohttp_idle_connections(server),
            after_close=take_sites_out,
        )

    def stop(self, sig: signal.Signals, installed: _signals.Installed | None) -> None:
        if installed is None or installed.deliver(sig):
            return
        # No server handler for this signal (an AppRunner whose task waits forever, SIGTERM
        # whose default would kill the process): cancel the task that started the app, so its
        # ``finally: await runner.cleanup()`` runs the drain.
        task = self.server_task
        if task is not None and not task.done():
            self.cancelled_server_task = True
            task.cancel()

    def forced(self, sig: signal.Signals) -> None:
        pass


async def close_idle_connections() -> None:
    """Close, once more, the connections that have no request in progress.

    aiohttp closes idle connections once, right after closing the listeners and before the
    drain. A connection accepted a moment before that has not started reading yet, so it is
    only marked closing: aiohttp then ignores the request that arrives on it and waits for that
    request anyway, for run_app's whole shutdown_timeout (60 s), well past the drain deadline.
    Its request never reached the application, so closing it loses nothing: a proxy in front
    sees the connection closed and may send the request to another instance.
    """
    for _ in range(_ACCEPT_TURNS):
        await asyncio.sleep(0)
    for server in _quirks.aiohttp_servers(asyncio.get_running_loop()):
        if isinstance(server, web.Server):
            server.pre_shutdown()
