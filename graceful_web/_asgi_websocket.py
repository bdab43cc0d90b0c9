"""Websockets under ``GracefulLifespan``: protected while open, and closed by the drain once
``long_lived_grace`` is over (``_long_lived``), so that no websocket holds the server to the
deadline and every client is told to reconnect."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable

import anyio

from ._asgi_lifespan import ASGIApp, Message, Receive, Scope, Send
from ._config import CLOSE_HANDSHAKE_TIME, Config
from ._current import current_drain
from ._work import inside_protected

logger = logging.getLogger("graceful_web")


async def serve_websocket(
    app: ASGIApp, config: Config, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one websocket as protected work. When the drain ends it: the close
    (``websocket_close_code``) goes out between the app's own messages, the app's later
    messages are dropped, and its handler, which the server hands the disconnect once the
    client answers the close, returns; one that does not is cancelled."""
    drain = current_drain()
    path = scope.get("path", "")
    code = config.websocket_close_code
    send_lock = anyio.Lock()
    app_scope = anyio.CancelScope()
    app_done = anyio.Event()
    closing = False

    async def locked_send(message: Message) -> None:
        if closing:
            return  # after the drain's close, the app's own messages have nowhere to go
        async with send_lock:
            if not closing:
                await send(message)

    async def close() -> Awaitable[None] | None:
        # Bounded with every other close by the drain (_long_lived), not each on its own.
        nonlocal closing
        if app_done.is_set():
            return None
        closing = True
        try:
            async with send_lock:
                await send({"type": "websocket.close", "code": code, "reason": "service restart"})
        except anyio.get_cancelled_exc_class():
            # Some servers' send waits for the client's answer to the close (uvicorn's).
            logger.warning(
                "websocket %s: the client did not answer the close (%d) within %.1f s",
                path,
                code,
                CLOSE_HANDSHAKE_TIME,
            )
            raise
        except Exception:
            return app_returns()  # the connection is gone already: nothing was closed
        drain.long_lived.ended("websocket")
        return app_returns()

    async def app_returns() -> None:
        try:
            await app_done.wait()
        finally:
            if not app_done.is_set():
                logger.warning(
                    "websocket %s: its handler did not return within %.1f s of the close "
                    "(%d): cancelled",
                    path,
                    CLOSE_HANDSHAKE_TIME,
                    code,
                )
                app_scope.cancel()

    token = inside_protected.set(True)
    work = drain.request_started(f"WEBSOCKET {path}", app_scope.cancel)
    if not drain.long_lived.add(work, "websocket", close):
        # The drain's closes went out already: this one is refused as it opens.
        closing = True
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": "service restart"})
        app_scope.cancel()
    try:
        with app_scope:
            await app(scope, receive, locked_send)
    except Exception:
        if not closing:
            raise
        # What the app raised on its way out after the drain's close is that close's doing.
        logger.debug("websocket %s ended after its close", path, exc_info=True)
    finally:
        app_done.set()
        drain.long_lived.discard(work)
        inside_protected.reset(token)
        drain.discard(work)
