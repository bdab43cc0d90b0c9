"""A connection accepted just as aiohttp closes its listener must not hold up the exit.

aiohttp closes idle connections once, right after closing the listener and before the drain. A
connection accepted a moment earlier whose handler has not started reading yet is only marked
closing: aiohttp ignores the request that arrives on it, then waits for that request for the
whole shutdown_timeout (60 s), far past the drain deadline. Under load this happened in about
one rolling restart in three behind nginx (tests/docker); the watchdog then ended the process
with status 70 although nothing was lost.

Here the client connects and sends its request, the loop gets a given number of turns, then the
runner is cleaned up (which starts the drain, as with ``handle_signals=False``). One of the turn
counts lands in the gap; with every count the cleanup must end, not wait for shutdown_timeout.
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from graceful_web.aiohttp import setup

SHUTDOWN_TIMEOUT = 60.0  # aiohttp's default: what a hang would cost
CLEANUP_BOUND = 10.0  # far below it, far above a cleanup that does not hang
REQUEST = b"GET /fast HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


async def fast(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def cleanup_ends(turns: int) -> bool:
    app = web.Application()
    app.router.add_get("/fast", fast)
    setup(app, drain_timeout=5, handle_signals=False)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    # A server in use: one request has been served before the stop.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    # The kernel completes this connection at once; the loop accepts it in its next turns.
    late = socket.create_connection(("127.0.0.1", port))
    try:
        late.sendall(REQUEST)
        for _ in range(turns):
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(runner.cleanup(), CLEANUP_BOUND)
        except TimeoutError:
            return False
        return True
    finally:
        late.close()


def test_a_connection_accepted_as_the_listener_closes_does_not_hold_up_the_exit() -> None:
    # Each run gets a loop of its own: a drain belongs to its event loop.
    hung = [turns for turns in range(8) if not asyncio.run(cleanup_ends(turns))]
    assert hung == [], (
        f"runner.cleanup() waited for an unread connection (loop turns before the stop: {hung})"
    )
