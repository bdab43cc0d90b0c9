"""Websockets under ``GracefulLifespan``: protected while open, closed by the drain once its
grace is over, so no websocket holds the server to the deadline."""

from __future__ import annotations

import contextlib
import logging

import anyio

from ._asgi_lifespan import ASGIApp, Message, Receive, Scope, Send
from ._config import Config
from ._current import current_drain
from ._work import inside_protected

logger = logging.getLogger("graceful_web")


async def serve_websocket(
    app: ASGIApp, config: Config, scope: Scope, receive: Receive, send: Send
) -> None:
    """Serve one websocket as protected work; still open ``websocket_close_grace`` into the
    drain, it is closed with 1001 (going away) and the app's side is cancelled."""
    drain = current_drain()
    path = scope.get("path", "")
    send_lock = anyio.Lock()
    closed_by_us = False
    app_done = False

    async def locked_send(message: Message) -> None:
        async with send_lock:
            await send(message)

    async def close_when_grace_is_over(app_scope: anyio.CancelScope) -> None:
        nonlocal closed_by_us
        await drain.wait_shutting_down()
        await anyio.sleep(config.websocket_close_grace)
        if app_done or drain.forced:
            return
        closed_by_us = True
        logger.info("closing websocket %s with 1001 (going away): drain grace is over", path)
        with contextlib.suppress(Exception):
            async with send_lock:
                await send({"type": "websocket.close", "code": 1001, "reason": "going away"})
        app_scope.cancel()

    token = inside_protected.set(True)
    outer = anyio.CancelScope()
    work = drain.request_started(f"WEBSOCKET {path}", outer.cancel)
    try:
        with outer:
            async with anyio.create_task_group() as task_group:
                app_scope = anyio.CancelScope()
                task_group.start_soon(close_when_grace_is_over, app_scope)
                try:
                    with app_scope:
                        await app(scope, receive, locked_send)
                except Exception:
                    if not closed_by_us:
                        raise
                finally:
                    app_done = True
                    task_group.cancel_scope.cancel()
    finally:
        inside_protected.reset(token)
        drain.discard(work)
