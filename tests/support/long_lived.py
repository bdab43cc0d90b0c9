"""Connections that never end by themselves, held open against a real server while it is told to
stop, and what each one saw, recorded from outside.

``hold_and_stop(server, Load())`` opens N echo websockets, N server-sent-event feeds, a few
finishing streams (an LLM answer over SSE) and a few long polls, starts the jobs, sends SIGTERM
and waits for every connection to end and the process to exit. The apps are
tests/apps/longlived_asgi.py and tests/apps/longlived_aiohttp.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import httpx

from .processes import stop
from .servers import Server

#: How long after the signal the harness waits for everything to end before it kills the server.
GIVE_UP_AFTER = 25.0


@dataclass(frozen=True)
class Load:
    websockets: int = 20
    feeds: int = 20
    finishing: int = 3
    polls: int = 3
    jobs: int = 8


@dataclass
class Ended:
    """How one connection ended: ``how`` (a websocket's close code, 1006 when none came; a
    feed "clean" or "cut"; a finishing stream "complete" or "incomplete"; a long poll its
    status or "cut"; "never ended", "failed"), seconds after the signal (None: still open when
    the harness gave up)."""

    how: str
    after: float | None
    error: str = ""  # what the client raised, when it did


@dataclass
class Outcome:
    websockets: list[Ended] = field(default_factory=list)
    feeds: list[Ended] = field(default_factory=list)
    finishing: list[Ended] = field(default_factory=list)
    polls: list[Ended] = field(default_factory=list)
    jobs_done: int = 0
    jobs_started: int = 0
    exit_status: int | None = None  # None: killed by the harness after GIVE_UP_AFTER
    exit_after: float | None = None  # seconds from the signal
    exit_after_last_job: float | None = None

    def tally(self, kind: str) -> dict[str, int]:
        """How many of ``kind`` ended each way: {"1012": 20} or {"clean": 19, "cut: ...": 1}."""
        return dict(Counter(ended.how for ended in getattr(self, kind)))

    def latest(self, kind: str) -> float | None:
        times = [ended.after for ended in getattr(self, kind) if ended.after is not None]
        return max(times) if times else None

    def figures(self) -> dict[str, Any]:
        figures = asdict(self)
        for kind in ("websockets", "feeds", "finishing", "polls"):
            figures[kind] = {"tally": self.tally(kind), "latest": self.latest(kind)}
        return figures


class _Clock:
    def __init__(self) -> None:
        self.signalled_at: float | None = None
        self.signalled = asyncio.Event()

    def since_signal(self) -> float | None:
        if self.signalled_at is None:
            return None
        return round(time.monotonic() - self.signalled_at, 3)


Opened = Callable[[], None]


def _once(queue: asyncio.Queue[None]) -> Opened:
    """Tells the harness once that a connection is open (or failed to open)."""
    fired = False

    def fire() -> None:
        nonlocal fired
        if not fired:
            fired = True
            queue.put_nowait(None)

    return fire


async def _guarded(connection: Awaitable[Ended], opened: Opened) -> Ended:
    """A connection's end; one that failed (to open, or the client itself) says how."""
    try:
        return await connection
    except Exception as exc:
        return Ended("failed", None, repr(exc))
    finally:
        opened()


async def _websocket(session: aiohttp.ClientSession, url: str, opened: Opened,
                     clock: _Clock) -> Ended:  # fmt: skip
    async with session.ws_connect(url, autoping=True, heartbeat=None) as ws:
        await ws.send_str("hello")
        reply = await ws.receive(timeout=10)
        assert reply.type == aiohttp.WSMsgType.TEXT and reply.data == "hello", reply
        opened()
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):  # fmt: skip
                break
        code = ws.close_code if ws.close_code is not None else 1006
        return Ended(str(code), clock.since_signal())


async def _stream(client: httpx.AsyncClient, url: str, opened: Opened, clock: _Clock,
                  finishing: bool) -> Ended:  # fmt: skip
    body = b""
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                return Ended(f"status {response.status_code}", clock.since_signal())
            async for chunk in response.aiter_bytes():
                opened()
                body += chunk
    except httpx.HTTPError as exc:
        return Ended("incomplete" if finishing else "cut", clock.since_signal(), repr(exc))
    if finishing:
        return Ended("complete" if body.endswith(b"data: [DONE]\n\n") else "incomplete",
                     clock.since_signal())  # fmt: skip
    return Ended("clean", clock.since_signal())


async def _poll(client: httpx.AsyncClient, url: str, clock: _Clock) -> Ended:
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return Ended("cut", clock.since_signal(), repr(exc))
    return Ended(str(response.status_code), clock.since_signal())


async def _exit(server: Server, clock: _Clock) -> tuple[int | None, float | None, float]:
    """The exit status (None: still running after GIVE_UP_AFTER), seconds from the signal, and
    the wall-clock time it was seen (the jobs write theirs)."""
    await clock.signalled.wait()
    assert clock.signalled_at is not None
    deadline = clock.signalled_at + GIVE_UP_AFTER
    while server.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    status = server.proc.poll()
    return status, (clock.since_signal() if status is not None else None), time.time()


async def _wait_count(queue: asyncio.Queue[None], count: int, what: str) -> None:
    async def drain() -> None:
        for _ in range(count):
            await queue.get()

    try:
        await asyncio.wait_for(drain(), 15)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def _hold_and_stop(server: Server, load: Load) -> Outcome:
    clock = _Clock()
    opened: asyncio.Queue[None] = asyncio.Queue()
    base, ws_url = server.url, server.url.replace("http://", "ws://") + "/ws"
    timeout = httpx.Timeout(GIVE_UP_AFTER + 5, connect=10)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with aiohttp.ClientSession() as session, \
            httpx.AsyncClient(timeout=timeout, limits=limits) as client:  # fmt: skip

        def start(open_one: Callable[[Opened], Awaitable[Ended]]) -> asyncio.Task[Ended]:
            once = _once(opened)
            return asyncio.create_task(_guarded(open_one(once), once))

        polls = [asyncio.create_task(_poll(client, f"{base}/poll", clock))
                 for _ in range(load.polls)]  # fmt: skip
        websockets = [start(lambda once: _websocket(session, ws_url, once, clock))
                      for _ in range(load.websockets)]  # fmt: skip
        feeds = [start(lambda once: _stream(client, f"{base}/feed", once, clock, False))
                 for _ in range(load.feeds)]  # fmt: skip
        await _wait_count(opened, load.websockets + load.feeds, "websockets and feeds to open")
        finishing = [start(lambda once: _stream(client, f"{base}/answer", once, clock, True))
                     for _ in range(load.finishing)]  # fmt: skip
        await _wait_count(opened, load.finishing, "the finishing streams' first tokens")
        await _wait_polls(server, load.polls)
        for number in range(load.jobs):
            response = await client.post(f"{base}/jobs?id=j{number}")
            assert response.status_code == 202, response.text
        exit_task = asyncio.create_task(_exit(server, clock))
        server.send(signal.SIGTERM)
        clock.signalled_at = server.signalled_at
        clock.signalled.set()
        status, exit_after, exited_at = await exit_task
        if status is None:  # still running: what is still open counts as never ended
            await asyncio.to_thread(stop, server.proc)
        outcome = Outcome(exit_status=status, exit_after=exit_after, jobs_started=load.jobs)
        for tasks, ended in ((websockets, outcome.websockets), (feeds, outcome.feeds),
                             (finishing, outcome.finishing), (polls, outcome.polls)):  # fmt: skip
            ended.extend(await _results(tasks))
    outcome.jobs_done = len(server.jobs())
    if status is not None and server.jobs():
        last_job = max(float(line.split()[1]) for line in server.jobs())
        outcome.exit_after_last_job = round(exited_at - last_job, 3)
    return outcome


async def _wait_polls(server: Server, count: int) -> None:
    deadline = time.monotonic() + 15
    while server.events().count("poll-waiting") < count:
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the long polls")
        await asyncio.sleep(0.01)


async def _results(tasks: list[asyncio.Task[Ended]]) -> list[Ended]:
    """Each connection's end; one still open (the harness gave up, the server was killed) or
    failed by an error of its own counts by that."""
    _, pending = await asyncio.wait(tasks, timeout=5)
    for task in pending:
        task.cancel()
    results = []
    for task in tasks:
        if task in pending:
            results.append(Ended("never ended", None))
        elif task.exception() is not None:
            results.append(Ended("failed", None, repr(task.exception())))
        else:
            results.append(task.result())
    return results


def hold_and_stop(server: Server, load: Load = Load()) -> Outcome:
    """Open ``load`` against ``server``, SIGTERM it, and record how everything ended."""
    return asyncio.run(_hold_and_stop(server, load))
