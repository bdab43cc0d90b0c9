"""Every private internal of a server or event loop that graceful_web reads, in one place.

Each accessor answers None (or nothing) when the internal is not there or has another shape,
and its caller then does what the bare server would do, never worse. Each has a canary in
tests/unit/test_quirks.py that fails naming the package and its version when the shape changes.
Nothing here imports a web framework: the objects are handed in, or found by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import ssl
import sys
from importlib import metadata
from typing import Any

logger = logging.getLogger("graceful_web")


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


# -- uvicorn -----------------------------------------------------------------------------


def uvicorn_captured_signals(sig: signal.Signals) -> list[int] | None:
    """The list in which uvicorn's ``Server`` notes the signals it re-raises once it has shut
    down (uvicorn >= 0.29, ``Server._captured_signals``), when uvicorn's handler is the one
    installed for ``sig``. A clean drain ends with status 0 only if the drain's signal is
    taken out of it."""
    server = getattr(signal.getsignal(sig), "__self__", None)
    if server is None or not type(server).__module__.startswith("uvicorn"):
        return None
    captured = getattr(server, "_captured_signals", None)
    if isinstance(captured, list):
        return captured
    if hasattr(server, "capture_signals"):
        logger.warning(
            "uvicorn %s keeps no _captured_signals list: after a clean drain it "
            "may end by re-raising %s (status %d) instead of exiting 0",
            version_of("uvicorn"),
            sig.name,
            -int(sig),
        )
    return None


def _awaited_frames(task: asyncio.Task[Any]) -> list[Any]:
    """The frames of the coroutines ``task`` is awaiting, outermost first."""
    frames: list[Any] = []
    try:
        coro: Any = task.get_coro()
    except Exception:
        return frames
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None)
    return frames


def _local_of_awaited(
    loop: asyncio.AbstractEventLoop, module: str, functions: tuple[str, ...], name: str
) -> Any:
    """The local ``name`` of a coroutine of ``module`` (one of ``functions``) that a task of
    ``loop`` is awaiting, or None."""
    for task in asyncio.all_tasks(loop):
        for frame in _awaited_frames(task):
            if frame.f_globals.get("__name__") == module and frame.f_code.co_name in functions:
                value = frame.f_locals.get(name)
                if value is not None:
                    return value
    return None


def uvicorn_server(loop: asyncio.AbstractEventLoop) -> Any:
    """uvicorn's ``Server`` serving on ``loop`` (the ``self`` of its ``serve`` or ``_serve``
    coroutine, which the main task awaits; under gunicorn's UvicornWorker, the worker's own
    ``_serve`` awaits it), or None."""
    return _local_of_awaited(loop, "uvicorn.server", ("serve", "_serve"), "self")


def uvicorn_listeners(server: Any) -> list[Any]:
    """The listening ``asyncio.Server`` objects of a uvicorn ``Server`` (``Server.servers``)."""
    servers = getattr(server, "servers", None)
    if not isinstance(servers, list) or not all(hasattr(s, "close") for s in servers):
        return []
    return servers


def uvicorn_idle_connections(server: Any) -> int | None:
    """How many of a uvicorn server's HTTP connections have no request in progress: the ones
    its own shutdown would close at once (``ServerState.connections``, each protocol's
    ``cycle``); None when the shape is not the one known."""
    connections = getattr(getattr(server, "server_state", None), "connections", None)
    if not isinstance(connections, set):
        return None
    idle = 0
    for protocol in list(connections):
        if not hasattr(protocol, "cycle"):
            continue  # a websocket: the drain's business, never idle
        cycle = protocol.cycle
        if cycle is None or getattr(cycle, "response_complete", False):
            idle += 1
    return idle


# -- aiohttp -----------------------------------------------------------------------------


def aiohttp_runner(task: asyncio.Task[Any] | None, runner_class: type, app: object) -> Any:
    """The runner serving ``app``, found among the locals of the coroutines of the task that
    started it (run_app's ``_run_app``, GunicornWebWorker's ``_run``, an ``AppRunner`` of the
    user's own main), or None."""
    if task is None or task.done():
        return None
    for frame in _awaited_frames(task):
        for value in list(frame.f_locals.values()):
            if isinstance(value, runner_class) and getattr(value, "app", None) is app:
                return value
    return None


def aiohttp_site_listener(site: Any) -> Any:
    """The listening ``asyncio.Server`` of an aiohttp site (``BaseSite._server``), or None."""
    server = getattr(site, "_server", None)
    return server if hasattr(server, "close") and hasattr(server, "sockets") else None


def aiohttp_idle_connections(server: Any) -> int | None:
    """How many connections of an aiohttp ``web.Server`` have no request in progress nor one
    read and waiting (``RequestHandler._request_in_progress``, ``_messages``); None when the
    shape is not the one known."""
    idle = 0
    for handler in server.connections:
        in_progress = getattr(handler, "_request_in_progress", None)
        messages = getattr(handler, "_messages", None)
        if not isinstance(in_progress, bool) or messages is None:
            return None
        if not in_progress and not messages:
            idle += 1
    return idle


# -- hypercorn ---------------------------------------------------------------------------


def hypercorn_worker_arguments() -> list[Any]:
    """What this process was started with, when a multi-process hypercorn parent started it
    (``multiprocessing.Process._target/_args/_kwargs``): its config and its stop event."""
    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if target is None or not getattr(target, "__module__", "").startswith("hypercorn."):
        return []
    kwargs = getattr(process, "_kwargs", None) or {}
    return [*getattr(process, "_args", ()), *kwargs.values()]


def hypercorn_parent_stop_event() -> Any:
    """The event a hypercorn parent sets to stop this worker (the worker never sees the
    parent's SIGTERM and ignores SIGINT); None outside such a worker."""
    for argument in hypercorn_worker_arguments():
        if callable(getattr(argument, "is_set", None)) and callable(
            getattr(argument, "set", None)
        ):
            return argument
    return None


def hypercorn_listeners(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The listening ``asyncio.Server`` objects of hypercorn's asyncio worker serving on
    ``loop`` (the ``servers`` list of ``hypercorn.asyncio.run.worker_serve``)."""
    servers = _local_of_awaited(loop, "hypercorn.asyncio.run", ("worker_serve",), "servers")
    if isinstance(servers, list) and all(hasattr(s, "close") for s in servers):
        return servers
    return []


def hypercorn_graceful_timeout() -> float | None:
    """The parent's ``graceful_timeout`` in a hypercorn worker process."""
    for argument in hypercorn_worker_arguments():
        graceful_timeout = getattr(argument, "graceful_timeout", None)
        if isinstance(graceful_timeout, (int, float)):
            return float(graceful_timeout)
    return None


# -- daphne ------------------------------------------------------------------------------

#: The close codes RFC 6455 (7.4.1) has a server send, besides 1000.
SERVER_CLOSE_CODES = frozenset({1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014})


def daphne_sends_server_close_codes() -> bool:
    """Let daphne close a websocket with 1001 or 1012 when the app's ``websocket.close`` says so.

    daphne hands the code to autobahn's ``sendClose``, which takes only 1000 and 3000-4999 from
    an application (daphne#374, autobahn#1642): for 1001 or 1012 it raises inside the server and
    no close frame is sent, so the client ends with 1006 when the process exits. For the codes
    RFC 6455 has a server send, ``WebSocketProtocol.serverClose`` then sends the frame with
    autobahn's ``sendCloseFrame``, as daphne itself does for 1011. False (with a warning) when
    those are not there."""
    ws_protocol = sys.modules.get("daphne.ws_protocol")
    protocol = getattr(ws_protocol, "WebSocketProtocol", None)
    server_close = getattr(protocol, "serverClose", None)
    if protocol is None or server_close is None or not hasattr(protocol, "sendCloseFrame"):
        logger.warning(
            "daphne %s: WebSocketProtocol.serverClose or sendCloseFrame not found: websockets "
            "closed by the drain may end with 1006 instead of their close code",
            version_of("daphne"),
        )
        return False
    if getattr(server_close, "graceful_web", False):
        return True

    def serverClose(self: Any, code: int | None = None) -> None:
        if code in SERVER_CLOSE_CODES:
            self.sendCloseFrame(code=code)
        else:
            server_close(self, code)

    serverClose.graceful_web = True  # type: ignore[attr-defined]
    protocol.serverClose = serverClose
    return True


def hypercorn_h2_protocols(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The ``H2Protocol`` of each HTTP/2 connection hypercorn's asyncio worker serves on
    ``loop``: each runs a task of its ``send_task`` (hypercorn.protocol.h2), whose ``self`` it
    is."""
    if "hypercorn.protocol.h2" not in sys.modules:
        return []
    found = []
    for task in asyncio.all_tasks(loop):
        for frame in _awaited_frames(task)[:1]:
            name = (frame.f_globals.get("__name__"), frame.f_code.co_name)
            if name == ("hypercorn.protocol.h2", "send_task") and "self" in frame.f_locals:
                found.append(frame.f_locals["self"])
    return found


#: RFC 9113 error codes: a stream refused before any processing may be retried elsewhere.
_H2_NO_ERROR = 0x0
_H2_REFUSED_STREAM = 0x7
_H2_CONNECTION_CLOSED = 3  # h2.connection.ConnectionState.CLOSED


def hypercorn_h2_go_away(protocol: Any) -> bool:
    """Close one of hypercorn's HTTP/2 connections gracefully (RFC 9113 6.8), as hyper and Go
    do: GOAWAY now, naming the last stream it will answer; a stream opened later is refused
    with REFUSED_STREAM (safe to retry elsewhere); hypercorn's final GOAWAY names the same
    stream; a client writing after the TLS close (a WINDOW_UPDATE on the wire) no longer ends
    hypercorn with status 1. False when the shape is not the one known, or it is closed.
    (hypercorn alone: one GOAWAY once every stream is done, later streams reset NO_ERROR.)"""
    connection: Any = getattr(protocol, "connection", None)
    state = getattr(getattr(connection, "state_machine", None), "state", None)
    last = getattr(connection, "highest_inbound_stream_id", None)
    send: Any = getattr(protocol, "send", None)
    create_stream: Any = getattr(protocol, "_create_stream", None)
    raw_data: Any = getattr(sys.modules.get("hypercorn.events"), "RawData", None)
    callables = (send, create_stream, raw_data, *(getattr(connection, name, None) for name in
                 ("reset_stream", "close_connection")))
    if not isinstance(last, int) or state is None or not all(map(callable, callables)):
        return False
    if int(getattr(state, "value", state)) == _H2_CONNECTION_CLOSED:
        return False
    if getattr(connection.close_connection, "__name__", "") == "close_naming_last":
        return True  # told already (a second signal)
    reset_stream = connection.reset_stream
    close_connection = connection.close_connection

    def refuse(stream_id: int, error_code: int = _H2_REFUSED_STREAM) -> Any:
        return reset_stream(stream_id, error_code)

    def close_naming_last(error_code: int = _H2_NO_ERROR, *args: Any, **kwargs: Any) -> Any:
        # What the client sends after it (a WINDOW_UPDATE) is ignored: h2 would answer it
        # with a second GOAWAY, PROTOCOL_ERROR, its streams all answered.
        connection.receive_data = lambda data: []
        return close_connection(error_code, *args, **{"last_stream_id": last, **kwargs})

    async def create_or_refuse(request: Any) -> None:
        # Before hypercorn itself knows it is stopping: a stream past the GOAWAY's last one.
        if request.stream_id > last:
            refuse(request.stream_id)
            return
        await create_stream(request)

    connection.reset_stream = refuse  # hypercorn resets streams that come once it is stopping
    connection.close_connection = close_naming_last
    protocol._create_stream = create_or_refuse
    tcp_server = getattr(send, "__self__", None)  # hypercorn.asyncio.tcp_server.TCPServer
    close = getattr(tcp_server, "_close", None)
    if callable(close):

        async def close_despite_late_tls_data() -> None:
            with contextlib.suppress(ssl.SSLError):  # APPLICATION_DATA_AFTER_CLOSE_NOTIFY
                await close()

        tcp_server._close = close_despite_late_tls_data  # type: ignore[union-attr]
    # A GOAWAY frame (length 8, type 7, no flags, stream 0), written past h2's state machine,
    # which would close the connection to every frame after it.
    goaway = bytes.fromhex("000008070000000000") + last.to_bytes(4, "big") + bytes(4)
    task = asyncio.get_running_loop().create_task(send(raw_data(data=goaway)))
    _sending.add(task)
    task.add_done_callback(_sending.discard)
    return True


_sending: set[asyncio.Task[Any]] = set()


# -- responses ---------------------------------------------------------------------------


def connection_gone(send: object) -> bool:
    """Whether a server's ``send`` for one response says its connection is gone, so that what
    is sent on it is dropped without a word: uvicorn's ``RequestResponseCycle.disconnected``
    (both HTTP implementations), hypercorn's ``HTTPStream.closed`` (HTTP/1.1 and HTTP/2; set
    as the stream closes, so it counts only before the response's last message)."""
    owner = getattr(send, "__self__", None)
    if owner is None:
        return False
    module = type(owner).__module__
    if module.startswith("uvicorn.protocols.http."):
        return getattr(owner, "disconnected", False) is True
    if module == "hypercorn.protocol.http_stream":
        return getattr(owner, "closed", False) is True
    return False


# -- asyncio tasks -----------------------------------------------------------------------


def awaited_future(task: asyncio.Task[Any]) -> asyncio.Future[Any] | None:
    """The future ``task`` is suspended on right now (``Task._fut_waiter``, the same in
    asyncio's C and Python tasks, which uvloop and rloop use too)."""
    waiter = getattr(task, "_fut_waiter", None)
    return waiter if isinstance(waiter, asyncio.Future) else None


def gathered_children(future: asyncio.Future[Any]) -> tuple[asyncio.Future[Any], ...]:
    """The children of an ``asyncio.gather`` future (``_GatheringFuture._children``)."""
    return tuple(getattr(future, "_children", ()))


# -- event loops -------------------------------------------------------------------------


def is_loop_signal_dispatcher(handler: object, loop: object) -> bool:
    """Whether ``handler``, a Python-level signal handler, is only the stand-in an event loop
    sets beside its own ``add_signal_handler`` entry (asyncio's ``_sighandler_noop``, uvloop's
    ``Loop.__sighandler``, rloop's ``_noop``): the loop dispatches from the wakeup fd."""
    if getattr(handler, "__self__", None) is loop:
        return getattr(handler, "__name__", "") == "_Loop__sighandler"  # uvloop
    return (getattr(handler, "__module__", None), getattr(handler, "__qualname__", None)) in {
        ("asyncio.unix_events", "_sighandler_noop"),
        ("rloop.utils", "_noop"),
    }


def aiohttp_servers(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """The aiohttp ``web.Server`` objects with a connection open on ``loop``: each connection
    is a task running ``RequestHandler.start`` (aiohttp.web_protocol), whose ``self._manager``
    is its server. Read when the drain ends, so serving a request pays nothing for it."""
    servers: dict[int, Any] = {}
    for task in asyncio.all_tasks(loop):
        try:
            coro: Any = task.get_coro()
        except Exception:
            continue
        code = getattr(coro, "cr_code", None)
        if code is None or getattr(code, "co_qualname", code.co_name) != "RequestHandler.start":
            continue
        frame = coro.cr_frame
        if frame is None or frame.f_globals.get("__name__") != "aiohttp.web_protocol":
            continue
        server = getattr(frame.f_locals.get("self"), "_manager", None)
        if server is not None:
            servers[id(server)] = server
    return list(servers.values())
