"""Websocket clients that reconnect whenever their connection is closed, as a browser app does.

Each client connects to ``/ws`` (tests/apps/reload_app.py: the first message is the pid of the
worker that took it), waits for the connection to end, notes how, and after a short backoff
connects again, until the test stops it. Counted, over all clients:

- ``closes``: connections the server ended, by the close code of its close frame; ``1006`` for
  one that went without a close frame (reset, or closed under the client): an abnormal close;
- ``failed``: connect attempts that did not give an open websocket (refused, reset, a status
  other than 101 such as nginx's 502), by reason.

The clients run in one thread with its own event loop, on aiohttp's client; every attempt has a
timeout and the whole run is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

import aiohttp

BACKOFF_S = 0.05  # plus as much again at random, so reconnects do not all land at once
CONNECT_TIMEOUT = 5.0
MAX_SECONDS = 120.0  # the clients stop by themselves after this
ABNORMAL = "1006"


@dataclass
class Figures:
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    connects: int = 0

    @property
    def abnormal(self) -> int:
        return self.closes[ABNORMAL]

    def as_dict(self) -> dict[str, object]:
        return {
            "connects": self.connects,
            "closes": dict(self.closes),
            "abnormal": self.abnormal,
            "failed_reconnects": sum(self.failed.values()),
            "failed": dict(self.failed),
        }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"status {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if "refused" in str(exc).lower() else type(exc.os_error).__name__
    return type(exc).__name__


class ReconnectingClients(threading.Thread):
    """``count`` reconnecting websocket clients of ``url``."""

    def __init__(self, url: str, count: int) -> None:
        super().__init__(daemon=True, name="reconnecting-websockets")
        self.url = url
        self.count = count
        self.figures = Figures()
        self.worker_of: dict[int, int] = {}  # client → pid of the worker it is connected to
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._began = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._began.set()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            clients = [
                asyncio.create_task(self._client(session, number)) for number in range(self.count)
            ]
            await asyncio.wait(clients, timeout=MAX_SECONDS)
            for client in clients:
                client.cancel()
            await asyncio.gather(*clients, return_exceptions=True)

    async def _client(self, session: aiohttp.ClientSession, number: int) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            try:
                ws = await session.ws_connect(self.url, timeout=aiohttp.ClientWSTimeout(5, 5))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                with self.lock:
                    self.figures.failed[_reason(exc)] += 1
                await self._backoff()
                continue
            try:
                await self._connected(ws, number)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                with self.lock:  # before its first message: the connect did not succeed
                    self.figures.failed[f"{_reason(exc)} before its first message"] += 1
            finally:
                with self.lock:
                    self.worker_of.pop(number, None)
                await ws.close()
            await self._backoff()

    async def _connected(self, ws: aiohttp.ClientWebSocketResponse, number: int) -> None:
        assert self._stopping is not None
        first = await ws.receive(timeout=CONNECT_TIMEOUT)
        if first.type != aiohttp.WSMsgType.TEXT:
            with self.lock:
                self.figures.failed["closed before its first message"] += 1
            return
        with self.lock:
            self.figures.connects += 1
            self.worker_of[number] = int(first.data)
        receiving = asyncio.ensure_future(ws.receive())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not receiving.done():
            receiving.cancel()  # the test is over: the client closes (1000), not counted
            return
        try:
            message = receiving.result()
            code = str(message.data) if message.type == aiohttp.WSMsgType.CLOSE else ABNORMAL
        except (aiohttp.ClientError, OSError):
            code = ABNORMAL
        with self.lock:
            self.figures.closes[code] += 1

    async def _backoff(self) -> None:
        await asyncio.sleep(BACKOFF_S * (1 + random.random()))

    def begin(self) -> None:
        self.start()
        self._began.wait(5)

    def workers(self) -> collections.Counter[int]:
        """How many clients are connected to each worker now."""
        with self.lock:
            return collections.Counter(self.worker_of.values())

    def stop(self) -> Figures:
        """Close every client, wait for the thread; the figures."""
        if self._loop is not None and self._stopping is not None and self.is_alive():
            with contextlib.suppress(RuntimeError):  # its loop ended meanwhile
                self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(15)
        return self.figures


def wait_connected(clients: ReconnectingClients, to: set[int] | None, timeout: float) -> None:
    """Until every client is connected (to one of the workers ``to``, when given)."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        workers = clients.workers()
        if sum(workers.values()) == clients.count and (to is None or set(workers) <= to):
            return
        time.sleep(0.05)
    raise AssertionError(
        f"not every client connected{' to the new workers' if to else ''} within {timeout} s: "
        f"{dict(clients.workers())}, {clients.figures.as_dict()}"
    )
