"""Canaries: every private internal graceful_web reads (graceful_web/_quirks.py) and every
event loop whose signals it holds back still have the shape it expects.

Each failure names the package and the version installed, so an upgrade that changes an
internal says at once what to look at. When one fails, graceful_web falls back to what the
bare server does (tests/servers/test_servers_and_loops.py shows the fallback); it never gets worse.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import multiprocessing.process
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from graceful_web import _quirks, _signals


async def _eventually(read: Callable[[], Any], expected: Any = True, timeout: float = 5) -> Any:
    """What ``read()`` gives once it gives ``expected`` (truthy, by default), or after ``timeout``
    seconds: a server started in the test's loop needs some turns to listen and accept."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if (value == expected if expected is not True else value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.01)


def _canary(package: str, what: str) -> str:
    version = _quirks.version_of(package)
    return f"{package} {version}: {what} changed shape; see graceful_web/_quirks.py"


# -- event loops: signals go through the wakeup fd ------------------------------------------


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "rloop":
        import rloop

        return rloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.fixture
def restore_sigusr() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_sigusr")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "rloop"])
def test_each_loop_hands_its_signals_to_the_drain_first(kind: str) -> None:
    package = "python" if kind == "asyncio" else kind
    loop = _new_loop(kind)
    seen: list[str] = []
    try:
        loop.add_signal_handler(signal.SIGUSR1, seen.append, "server:USR1")
        loop.add_signal_handler(signal.SIGUSR2, seen.append, "server:USR2")

        async def scenario() -> None:
            installed = _signals.install(
                loop, [signal.SIGUSR1], lambda sig: seen.append(f"drain:{sig.name}")
            )
            assert installed is not None, _canary(package, "add_reader()")
            try:
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGUSR2)
                await _until(lambda: len(seen) >= 2)
                assert sorted(seen) == ["drain:SIGUSR1", "server:USR2"], _canary(
                    package, f"signal delivery through the wakeup fd (saw {seen})"
                )
                assert installed.deliver(signal.SIGUSR1)
                await _until(lambda: len(seen) >= 3)
                assert seen[2:] == ["server:USR1"], _canary(package, "the loop's wakeup fd")
            finally:
                installed.uninstall()
            os.kill(os.getpid(), signal.SIGUSR1)  # the server's own handler again
            await _until(lambda: len(seen) >= 4)
            assert seen[3:] == ["server:USR1"], _canary(package, "signal.set_wakeup_fd")

        loop.run_until_complete(scenario())
    finally:
        loop.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop", "rloop"])
def test_each_loops_tasks_tell_what_they_await(kind: str) -> None:
    package = "python" if kind == "asyncio" else kind
    loop = _new_loop(kind)

    async def wait_on(future: asyncio.Future[Any]) -> None:
        await future

    async def scenario() -> None:
        job = asyncio.get_running_loop().create_future()
        gathering = asyncio.gather(job)
        main = asyncio.ensure_future(wait_on(gathering))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        awaited = _quirks.awaited_future(main)
        assert awaited is gathering, _canary(package, "Task._fut_waiter")
        assert job in _quirks.gathered_children(gathering), _canary(package, "gather's _children")
        job.set_result(None)
        await main

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


# -- uvicorn ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_sigusr")
def test_uvicorn_keeps_the_signals_it_reraises_in_a_list() -> None:
    import uvicorn

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not served")

    server = uvicorn.Server(uvicorn.Config(app))
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with server.capture_signals():
            captured = _quirks.uvicorn_captured_signals(signal.SIGTERM)
            assert captured is not None, _canary("uvicorn", "Server._captured_signals")
            server.handle_exit(int(signal.SIGTERM), None)
            assert captured == [signal.SIGTERM], _canary("uvicorn", "Server.handle_exit")
            captured.clear()  # what the drain does, so uvicorn does not re-raise it
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


def test_uvicorn_servers_show_their_listeners_and_idle_connections() -> None:
    # At a stop the drain closes uvicorn's listeners itself and waits, for a short grace, for
    # the connections uvicorn's own shutdown would close unanswered: those with no request.
    import uvicorn

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            await _eventually(lambda: server.started)
            assert _quirks.uvicorn_server(asyncio.get_running_loop()) is server, _canary(
                "uvicorn", "Server.serve (the coroutine frame that holds the server)"
            )
            listeners = _quirks.uvicorn_listeners(server)
            assert listeners, _canary("uvicorn", "Server.servers")
            port = listeners[0].sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            idle = await _eventually(lambda: _quirks.uvicorn_idle_connections(server), 1)
            assert idle == 1, _canary(
                "uvicorn", "ServerState.connections (a protocol's cycle, before any request)"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"ok")
            assert _quirks.uvicorn_idle_connections(server) == 1, _canary(
                "uvicorn", "RequestResponseCycle.response_complete (idle once answered)"
            )
            writer.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    asyncio.run(scenario())


# -- hypercorn -------------------------------------------------------------------------------


def test_hypercorn_workers_carry_their_config_and_stop_event() -> None:
    from hypercorn import run as hypercorn_run
    from hypercorn.asyncio.run import asyncio_worker
    from hypercorn.config import Config

    class NotStarted(multiprocessing.Process):
        def start(self) -> None:
            pass

    class Context:
        Process = NotStarted

    config = Config()
    config.workers = 1
    config.graceful_timeout = 17.0
    stop_event = multiprocessing.get_context("spawn").Event()
    processes: list[Any] = []
    hypercorn_run._populate(  # type: ignore[attr-defined]
        processes, config, asyncio_worker, None, stop_event, Context()
    )
    saved = multiprocessing.process._current_process  # type: ignore[attr-defined]
    multiprocessing.process._current_process = processes[0]  # type: ignore[attr-defined]
    try:
        assert _quirks.hypercorn_parent_stop_event() is stop_event, _canary(
            "hypercorn", "the worker process's arguments (shutdown_event)"
        )
        assert _quirks.hypercorn_graceful_timeout() == 17.0, _canary(
            "hypercorn", "the worker process's arguments (config.graceful_timeout)"
        )
    finally:
        multiprocessing.process._current_process = saved  # type: ignore[attr-defined]


def test_hypercorn_asyncio_workers_keep_their_listeners_in_worker_serve() -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async def scenario() -> list[Any]:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        stop = asyncio.Event()
        serving = asyncio.create_task(
            worker_serve(lambda: app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        )
        loop = asyncio.get_running_loop()
        try:
            found: list[Any] = await _eventually(lambda: _quirks.hypercorn_listeners(loop))
        finally:
            stop.set()
            await asyncio.wait_for(serving, 10)
        return found

    listeners = asyncio.run(scenario())
    assert listeners and all(isinstance(s, asyncio.Server) for s in listeners), _canary(
        "hypercorn", "hypercorn.asyncio.run.worker_serve (its servers list)"
    )


def test_hypercorn_h2_connections_take_a_goaway_naming_their_last_stream() -> None:
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config

    from tests.support.h2client import REFUSED_STREAM, GoAway, H2Client

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    async def scenario() -> tuple[list[Any], bool, H2Client]:
        client: H2Client | None = None
        config = Config()
        config.bind = ["127.0.0.1:0"]
        stop = asyncio.Event()
        serving = asyncio.create_task(
            worker_serve(ASGIWrapper(app), config, shutdown_trigger=stop.wait)
        )
        loop = asyncio.get_running_loop()
        try:
            listeners = await _eventually(lambda: _quirks.hypercorn_listeners(loop))
            client = H2Client(listeners[0].sockets[0].getsockname()[1])
            first = client.get("/")
            await _eventually(lambda: client.streams[first].ended)
            found: list[Any] = await _eventually(lambda: _quirks.hypercorn_h2_protocols(loop))
            told = bool(found) and _quirks.hypercorn_h2_go_away(found[0])
            await _eventually(lambda: client.goaways)
            late = client.get("/")
            await _eventually(lambda: client.streams[late].reset is not None)
        finally:
            if client is not None:
                client.close()  # first: hypercorn waits for its connections as it stops
            stop.set()
            await asyncio.wait_for(serving, 10)
        return found, told, client

    found, told, client = asyncio.run(scenario())
    shape = _canary("hypercorn", "hypercorn.protocol.h2.H2Protocol (send_task, connection)")
    assert len(found) == 1 and told, shape
    tcp_server = found[0].send.__self__  # its close no longer fails on TLS data after it
    assert tcp_server._close.__name__ == "close_despite_late_tls_data", shape
    assert client.goaways[0] == GoAway(last_stream_id=1, error_code=0), shape
    assert client.streams[3].reset == REFUSED_STREAM and client.streams[3].status is None, shape


def test_hypercorn_streams_say_when_their_connection_is_gone() -> None:
    from hypercorn.config import Config
    from hypercorn.protocol.http_stream import HTTPStream

    stream = HTTPStream(None, Config(), None, None, False, None, None, None, 1)  # type: ignore[arg-type]
    shape = _canary("hypercorn", "hypercorn.protocol.http_stream.HTTPStream.closed")
    assert _quirks.connection_gone(stream.app_send) is False, shape
    stream.closed = True  # as its StreamClosed event sets it
    assert _quirks.connection_gone(stream.app_send) is True, shape


@pytest.mark.parametrize("implementation", ["httptools_impl", "h11_impl"])
def test_uvicorn_request_cycles_say_when_their_connection_is_gone(implementation: str) -> None:
    import importlib
    import inspect

    module = importlib.import_module(f"uvicorn.protocols.http.{implementation}")
    cycle = module.RequestResponseCycle
    shape = _canary("uvicorn", f"uvicorn.protocols.http.{implementation}.RequestResponseCycle")
    assert "self.disconnected = False" in inspect.getsource(cycle.__init__), shape
    gone = object.__new__(cycle)
    gone.disconnected = True
    assert _quirks.connection_gone(gone.send) is True, shape


# -- aiohttp ---------------------------------------------------------------------------------


async def test_aiohttp_connection_tasks_lead_to_their_server(
    aiohttp_client: Callable[..., Any],
) -> None:
    # An idle keep-alive connection is a task running RequestHandler.start: the drain finds
    # the servers to close idle connections of through those tasks.
    app = web.Application()
    app.router.add_get("/", _hello)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    assert (await client.get("/")).status == 200
    servers = _quirks.aiohttp_servers(asyncio.get_running_loop())
    assert [type(server) for server in servers] == [web.Server], _canary(
        "aiohttp", "RequestHandler.start (its task's frame and self._manager)"
    )


async def test_aiohttp_runner_sites_and_connections_are_found_for_the_drain() -> None:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        this_task = asyncio.current_task()
        assert _quirks.aiohttp_runner(this_task, web.BaseRunner, app) is runner, _canary(
            "aiohttp", "the runner among the locals of the task that started it"
        )
        listener = _quirks.aiohttp_site_listener(site)
        assert listener is not None, _canary("aiohttp", "BaseSite._server")
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        server = runner.server
        assert server is not None
        idle = await _eventually(lambda: _quirks.aiohttp_idle_connections(server), 1)
        assert idle == 1, _canary(
            "aiohttp", "RequestHandler._request_in_progress and _messages"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"hello")
        writer.close()
    finally:
        await runner.cleanup()


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


# -- the interpreter: the census of requests reads coroutine frames ------------------------


def test_the_census_finds_requests_in_suspended_tasks_and_in_the_asking_one() -> None:
    import platform

    from graceful_web import _census

    async def serve(name: str, release: asyncio.Event, ask: bool = False) -> Any:
        started = time.monotonic()  # noqa: F841  (read by the census)
        if ask:  # read while both are in flight
            calls = _census.requests_in_flight(asyncio.get_running_loop()).values()
            return [(_census.name(c), _census.started(c), _census.source(c)) for c in calls]
        await inner(release)
        return None

    async def inner(release: asyncio.Event) -> None:
        await asyncio.gather(release.wait())  # a future deep down the chain of awaits

    _census.watch(serve, "name", str)

    async def main() -> None:
        release = asyncio.Event()
        waiting = asyncio.create_task(serve("GET /waiting", release))
        await asyncio.sleep(0)
        found = await serve("GET /asking", release, ask=True)
        release.set()
        await waiting
        what = f"{platform.python_implementation()} {platform.python_version()}: "
        names = sorted(name for name, _, _ in found)
        assert names == ["GET /asking", "GET /waiting"], what + (
            "cr_await/cr_frame of a suspended coroutine, or the asking task's own stack, "
            "changed shape; see graceful_web/_census.py"
        )
        assert all(isinstance(started, float) for _, started, _ in found)
        assert sorted(str(source) for _, _, source in found) == names  # the local named

    asyncio.run(main())


# -- daphne ----------------------------------------------------------------------------------


def test_daphne_closes_websockets_through_autobahn_which_refuses_1001_and_1012(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from daphne.ws_protocol import WebSocketProtocol

    what = "WebSocketProtocol.serverClose(code) and sendCloseFrame(code, reasonUtf8, isReply)"
    assert "code" in inspect.signature(WebSocketProtocol.serverClose).parameters, _canary(
        "daphne", what
    )
    frame = inspect.signature(WebSocketProtocol.sendCloseFrame).parameters
    assert {"code", "reasonUtf8", "isReply"} <= set(frame), _canary("autobahn", what)
    # Still needed: autobahn refuses the codes a server closes with (daphne#374).
    with pytest.raises(Exception, match="invalid close code 1012"):
        WebSocketProtocol.sendClose(object(), code=1012)

    monkeypatch.setattr(WebSocketProtocol, "serverClose", WebSocketProtocol.serverClose)
    assert _quirks.daphne_sends_server_close_codes()
    sent: list[int | None] = []

    class Connection:
        def sendCloseFrame(self, code: int | None = None) -> None:
            sent.append(code)

        def sendClose(self, code: int | None = None) -> None:
            sent.append(-1 if code is None else -code)

    for code in (1012, 1001, 1000, 4000):
        WebSocketProtocol.serverClose(Connection(), code)  # type: ignore[arg-type]
    assert sent == [1012, 1001, -1000, -4000]
