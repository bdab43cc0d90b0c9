"""How a server process stops listening without leaving a connection unanswered.

A client's request can be lost at a stop in three places, none of them in the application:

- **The accept queue.** Connections the kernel has completed but the process has not yet
  accepted wait in the listening socket's queue. A socket shared with other processes
  (gunicorn's, uvicorn's and hypercorn's workers share the parent's) keeps its queue when one
  process closes its copy. A socket this process alone holds (a single-process server's, or
  one bound with ``SO_REUSEPORT``: aiohttp's ``reuse_port=True``, granian's workers) takes its
  queue with it: the kernel resets those connections (for ``SO_REUSEPORT``, unless
  ``net.ipv4.tcp_migrate_req`` is 1 and it moves them to another socket on the port). So the
  loop is first let to accept what is queued, then every listener closes in the same step.
- **Accepted, not yet read.** A connection accepted a moment before the listener closed has
  no request yet: servers close it as idle at once. Its request is usually on its way.
- **Idle keep-alive.** A client may be writing its next request on a connection the server is
  closing; it sees the connection reset and cannot know whether the request was handled.

HTTP/1.1 cannot tell an idle client to go away, so, as Envoy and nginx do, a closing server
answers every request with ``Connection: close`` and keeps connections with no request in
progress open for a short grace (``idle_connection_grace``) after the listeners closed: a
request already sent, or about to be, is read and answered; then the server closes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

logger = logging.getLogger("graceful_web")

#: How often the grace looks at the connections still idle.
IDLE_POLL = 0.01
#: The longest the loop is given to accept what waits in a reuse-port socket's queue.
ACCEPT_QUEUE_LIMIT = 0.2
#: Loop turns from asyncio's accept to the connection's transport and protocol (one, and a
#: spare).
ATTACH_TURNS = 2
TCP_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def _reuse_port(sock: Any) -> bool:
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, reuse_port))
    except (OSError, AttributeError):
        return False


def _queued(fds: Sequence[int]) -> bool:
    """Whether any of these listening sockets has a connection waiting to be accepted."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _queue_no_more(fds: Sequence[int]) -> None:
    """Shrink to nothing the accept queue of each ``SO_REUSEPORT`` socket this process alone
    holds: until it closes, the kernel keeps steering new connections to it, and would reset
    those it queued there. With no room, it drops their SYN instead; the client sends it again a
    second later and reaches another socket on the port. Not for a socket the parent holds too
    (gunicorn's ``--reuse-port``): its queue is the other workers' as well."""
    own = _sockets("self")
    parents = set(_sockets(str(os.getppid())).values())
    for fd in fds:
        if own.get(fd) in parents or (sock := _borrowed(fd)) is None:
            continue
        with sock:
            if _reuse_port(sock):
                with contextlib.suppress(OSError):
                    sock.listen(0)


def _sockets(pid: str) -> dict[int, str]:
    """A process's socket file descriptors, each with its ``socket:[inode]`` (from /proc: the
    same inode in two processes is one socket)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            found[int(name)] = link
    return found


def _borrowed(fd: int) -> socket.socket | None:
    """A socket object on a copy of ``fd``, to query or set; closing it leaves ``fd`` open."""
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


async def close_listeners(servers: Sequence[Any], *, accept_queued: bool = True) -> None:
    """Close every listening server (``asyncio.Server`` or one like it: ``sockets``,
    ``close()``). The connections queued on their sockets are accepted first, by the loop as it
    would accept any: a socket this process alone holds (a single-process server's, or one
    bound with ``SO_REUSEPORT``) resets them as it closes. On a socket shared with other
    workers, the few taken this way are answered here rather than there; ``accept_queued=False``
    leaves them to the other workers, for a server that will not answer them here. While the
    kernel does not move queued connections (``tcp_migrate_req`` 0), an ``SO_REUSEPORT``
    socket of this process's own takes no new ones meanwhile (``_queue_no_more``)."""
    fds: list[int] = []
    for server in servers:
        for sock in getattr(server, "sockets", None) or ():
            with contextlib.suppress(OSError, ValueError):
                fds.append(sock.fileno())
    if fds:
        if accept_queued and migrates_requests() is False:
            _queue_no_more(fds)
        give_up = time.monotonic() + ACCEPT_QUEUE_LIMIT
        while accept_queued and _queued(fds) and time.monotonic() < give_up:
            await asyncio.sleep(0)  # the loop's reader accepts them
        # Then stop accepting, without closing yet: asyncio attaches a connection to its server
        # one loop turn after accepting it, and drops it, unread, if the server closed in
        # between. (uvloop accepts otherwise and has no such reader: nothing to remove.)
        loop = asyncio.get_running_loop()
        for fd in fds:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
        for _ in range(ATTACH_TURNS):
            await asyncio.sleep(0)
    for server in servers:
        server.close()


async def answer_idle_connections(idle: Callable[[], int], grace: float) -> None:
    """Wait until no connection is left without a request in progress, or ``grace`` is over.

    Called once the listeners are closed, while responses say ``Connection: close``: a
    connection carrying a request is answered and closed by the server; one still idle at the
    end is the server's to close."""
    give_up = time.monotonic() + grace
    while idle() and time.monotonic() < give_up:
        await asyncio.sleep(IDLE_POLL)


# -- SO_REUSEPORT without tcp_migrate_req -----------------------------------------------------

_warned_reuse_port = False

#: How long after startup the process's listening sockets are looked for (servers bind them
#: after the application's startup), and how often: until the process listens, then less
#: often (a server binds its listeners together; each look reads every open socket).
LISTENERS_WATCH = 10.0
LISTENERS_POLL = 0.1
LISTENERS_BOUND_POLL = 1.0


@dataclass
class Looked:
    """What looking at the process's sockets found, kept from one look to the next."""

    #: Connected sockets (each ``socket:[inode]``): they never listen, and are not asked again.
    connected: set[str] = field(default_factory=set)
    #: Whether an internet socket listens: the server has bound its listeners.
    listening: bool = False


def reuse_port_listeners(looked: Looked | None = None) -> list[str]:
    """The addresses this process listens on with ``SO_REUSEPORT`` (read from its open
    files: servers do not say how they bound their sockets)."""
    found: set[str] = set()
    for fd, link in _sockets("self").items():
        if looked is not None and link in looked.connected:
            continue
        sock = _borrowed(fd)
        if sock is None:
            continue
        with sock:
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError:
                continue
            if not listening and looked is not None and _has_peer(sock):
                looked.connected.add(link)
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            if listening and inet and looked is not None:
                looked.listening = True
            if listening and inet and _reuse_port(sock):
                host, port = sock.getsockname()[:2]
                found.add(f"{host}:{port}")
    return sorted(found)


def _has_peer(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def migrates_requests() -> bool | None:
    """``net.ipv4.tcp_migrate_req`` of this network namespace; None where there is none."""
    try:
        return TCP_MIGRATE_REQ.read_text().strip() != "0"
    except OSError:
        return None


async def warn_if_reuse_port_resets() -> None:
    """Once the server listens: say once, in its log, that connections queued on an
    ``SO_REUSEPORT`` socket of this process are reset when it stops listening, while the
    kernel does not migrate them."""
    global _warned_reuse_port
    if _warned_reuse_port or migrates_requests() is not False:
        return
    give_up = time.monotonic() + LISTENERS_WATCH
    looked = Looked()
    while not (addresses := reuse_port_listeners(looked)):
        if time.monotonic() > give_up:
            return
        # anyio: under trio too (hypercorn's trio worker)
        await anyio.sleep(LISTENERS_BOUND_POLL if looked.listening else LISTENERS_POLL)
    if _warned_reuse_port:
        return
    _warned_reuse_port = True
    logger.warning(
        "this process listens on %s with SO_REUSEPORT while net.ipv4.tcp_migrate_req is 0: "
        "when it stops listening (a reload, a restart beside a second process), the kernel "
        "resets the connections waiting in its queue that graceful_web could not accept in "
        "time. Set net.ipv4.tcp_migrate_req=1 (sysctl -w, and in /etc/sysctl.d/) so they move "
        "to another process on the port",
        ", ".join(addresses),
    )
