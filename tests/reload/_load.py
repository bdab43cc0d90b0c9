"""A bounded load of raw HTTP/1.1 requests from threads, each request's fate recorded.

Raw sockets, so nothing is retried behind the test's back: a request written on a connection
that then closes without a response is a failure, named by what the socket said. A client
reuses a kept-alive connection until the server closes it (``Connection: close``, or a close
noticed before the next request is written, as any HTTP client checks an idle connection) and
only then opens a new one.

Kinds of traffic, each counted on its own:

``fresh``           GETs, each on a new TCP connection
``keepalive_get``   GETs from a few clients, each on one persistent connection
``keepalive_post``  POSTs of orders with unique ids, persistent connections likewise: the ids
                    answered 202 are the accepted jobs
``burst``           on demand (:meth:`Load.burst`): many clients doing fresh-connection GETs
                    back to back for a bounded time
"""

from __future__ import annotations

import collections
import errno
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

FRESH, KEEPALIVE_GET, KEEPALIVE_POST, BURST = "fresh", "keepalive_get", "keepalive_post", "burst"
KINDS = (FRESH, KEEPALIVE_GET, KEEPALIVE_POST, BURST)
PID_HEADER = "x-worker-pid"
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Traffic:
    """How much of each kind, and where it goes; every client is paced and bounded."""

    fresh_clients: int = 2
    fresh_interval: float = 0.05
    keepalive_get_clients: int = 3
    keepalive_get_interval: float = 0.05
    keepalive_post_clients: int = 2
    keepalive_post_interval: float = 0.1
    get_path: str = "/fast"
    get_body: bytes = b"ok"
    post_path: str = "/orders?id={id}"  # {id}: the order's id
    post_status: int = 202
    order_prefix: str = "o"  # so that several loads against one service never share an id
    timeout: float = 10.0  # per request: connect, write and the whole response
    max_requests_per_client: int = 5000
    max_seconds: float = 180.0  # the steady clients stop by themselves after this


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float  # time.monotonic() before the request was written (or connected)
    ended: float
    reason: str | None  # None when answered as expected, else why not
    status: int | None = None
    pid: str | None = None  # the worker that answered, from its X-Worker-Pid header
    order_id: str | None = None


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, outcome: Outcome) -> None:
        self.sent += 1
        if outcome.reason is None:
            self.ok += 1
        else:
            self.failed[outcome.reason] += 1

    @property
    def failed_count(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "ok": self.ok, "failed": dict(sorted(self.failed.items()))}


# -- one HTTP/1.1 exchange on a raw socket ----------------------------------------------------


class Failed(Exception):
    """A request that got no proper answer; ``reason`` says what the client saw."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        """The server closes the connection after this response."""
        return "close" in self.headers.get("connection", "").lower()


def reason_of(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BrokenPipeError):
        return "broken pipe"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Reader:
    """Reads one response from ``sock`` by its framing, never past ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.buffer = bytearray()
        self.received_any = False

    def _more(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Failed("timeout")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if chunk:
            self.received_any = True
            self.buffer += chunk
        return bool(chunk)

    def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            if not self._more():
                raise Failed("incomplete response")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._more():
                raise Failed("incomplete response")
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line

    def _take(self, count: int) -> bytes:
        self._need(count)
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise Failed("bad response")
            if not self._more():
                raise Failed("incomplete response" if self.received_any else "server disconnected")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise Failed("bad response")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:  # delimited by the close
            while self._more():
                pass
            body, self.buffer = bytes(self.buffer), bytearray()
        return Response(int(parts[1]), headers, body)

    def _chunked(self) -> bytes:
        body = bytearray()
        while size := int(self._line().split(b";")[0], 16):
            body += self._take(size)
            self._take(2)
        while self._line():  # trailers, up to the empty line
            pass
        return bytes(body)


def request_bytes(method: str, path: str, host: str, close: bool) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: graceful-web-reload"]
    if method == "POST":
        lines.append("Content-Length: 0")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise Failed("connect timeout") from None
    except OSError as exc:
        raise Failed(reason_of(exc)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, request: bytes, timeout: float) -> Response:
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        sock.sendall(request)
        return Reader(sock, deadline).response()
    except OSError as exc:
        raise Failed(reason_of(exc)) from None


def closed_while_idle(sock: socket.socket) -> bool:
    """Whether the server has closed (or written on) an idle connection: it cannot carry the
    next request. Nothing has been written on it, so a new connection is no retry."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset while idle
    return True  # EOF, or bytes nobody asked for: either way unusable


class KeptAlive:
    """One client's persistent connection, replaced only once the server has closed it."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.sock: socket.socket | None = None
        self.connections = 0
        self.closed_by_server_while_idle = 0

    def request(self, method: str, path: str) -> Response:
        if self.sock is not None and closed_while_idle(self.sock):
            self.closed_by_server_while_idle += 1
            self.close()
        if self.sock is None:
            self.sock = connect(self.host, self.port, self.timeout)
            self.connections += 1
        try:
            response = exchange(
                self.sock, request_bytes(method, path, self.host, close=False), self.timeout
            )
        except Failed:
            self.close()  # the connection's state is unknown: never write on it again
            raise
        if response.closes:
            self.close()
        return response

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def fresh_request(host: str, port: int, method: str, path: str, timeout: float) -> Response:
    sock = connect(host, port, timeout)
    try:
        return exchange(sock, request_bytes(method, path, host, close=True), timeout)
    finally:
        sock.close()


# -- the load ------------------------------------------------------------------------------------


def _nothing() -> None:
    pass


class Burst:
    """``clients`` threads each doing fresh-connection GETs back to back for ``seconds``."""

    def __init__(self, load: Load, clients: int, seconds: float) -> None:
        self.load = load
        self.until = time.monotonic() + seconds
        self.threads = [
            threading.Thread(target=self._client, name=f"burst-{n}", daemon=True)
            for n in range(clients)
        ]
        self.begun = threading.Semaphore(0)
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        self.begun.release()
        while time.monotonic() < self.until and not self.load.stopping.is_set():
            self.load.get(BURST, keep=None)

    def wait_begun(self, timeout: float = 5.0) -> None:
        """Until every client thread is running (bounded)."""
        deadline = time.monotonic() + timeout
        for _ in self.threads:
            if not self.begun.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"the burst's clients did not start within {timeout} s")

    def join(self) -> None:
        timeout = self.until - time.monotonic() + self.load.traffic.timeout + 5
        deadline = time.monotonic() + max(timeout, 1.0)
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), "burst clients hang"


class Load:
    """Steady paced traffic of every kind to ``host:port`` from threads, until :meth:`stop`
    or its bounds; every request's :class:`Outcome` is kept."""

    def __init__(self, host: str, port: int, traffic: Traffic | None = None) -> None:
        self.host, self.port = host, port
        self.traffic = traffic or Traffic()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.threads: list[threading.Thread] = []
        self.bursts: list[Burst] = []
        self.order_ids: Iterator[int] = itertools.count()
        self.connections: collections.Counter[str] = collections.Counter()
        self.closed_while_idle: collections.Counter[str] = collections.Counter()
        self.started = 0.0

    # -- running it

    def start(self) -> None:
        self.started = time.monotonic()
        traffic = self.traffic
        for n in range(traffic.fresh_clients):
            self._thread(f"{FRESH}-{n}", traffic.fresh_interval, self._fresh_client)
        for n in range(traffic.keepalive_get_clients):
            connection = KeptAlive(self.host, self.port, traffic.timeout)
            self._thread(
                f"{KEEPALIVE_GET}-{n}",
                traffic.keepalive_get_interval,
                self._keepalive_client(KEEPALIVE_GET, connection),
                connection.close,
            )
        for n in range(traffic.keepalive_post_clients):
            connection = KeptAlive(self.host, self.port, traffic.timeout)
            self._thread(
                f"{KEEPALIVE_POST}-{n}",
                traffic.keepalive_post_interval,
                self._keepalive_client(KEEPALIVE_POST, connection),
                connection.close,
            )

    def _thread(
        self,
        name: str,
        interval: float,
        one: Callable[[], None],
        done: Callable[[], None] = _nothing,
    ) -> None:
        thread = threading.Thread(
            target=self._paced, args=(interval, one, done), name=name, daemon=True
        )
        thread.start()
        self.threads.append(thread)

    def burst(self, clients: int = 48, seconds: float = 1.2) -> Burst:
        """Start a burst of fresh connections now; it ends by itself after ``seconds``."""
        burst = Burst(self, clients, seconds)
        self.bursts.append(burst)
        return burst

    def stop(self) -> None:
        """Stop every client and wait for the requests in flight (bounded by their timeout)."""
        self.stopping.set()
        deadline = time.monotonic() + self.traffic.timeout + 10
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for burst in self.bursts:
            burst.join()
        hanging = [thread.name for thread in self.threads if thread.is_alive()]
        assert not hanging, f"load clients still in a request: {hanging}"

    def _paced(self, interval: float, one: Callable[[], None], done: Callable[[], None]) -> None:
        bound = self.started + self.traffic.max_seconds
        try:
            for _ in range(self.traffic.max_requests_per_client):
                if self.stopping.wait(interval) or time.monotonic() > bound:
                    return
                one()
        finally:
            done()

    def _fresh_client(self) -> None:
        self.get(FRESH, keep=None)

    def _keepalive_client(self, kind: str, connection: KeptAlive) -> Callable[[], None]:
        def one() -> None:
            before = (connection.connections, connection.closed_by_server_while_idle)
            if kind == KEEPALIVE_GET:
                self.get(kind, keep=connection)
            else:
                self.post_order(connection)
            with self.lock:
                self.connections[kind] += connection.connections - before[0]
                self.closed_while_idle[kind] += connection.closed_by_server_while_idle - before[1]

        return one

    # -- one request of each kind

    def get(self, kind: str, keep: KeptAlive | None) -> None:
        path, timeout = self.traffic.get_path, self.traffic.timeout
        started = time.monotonic()
        try:
            if keep is None:
                response = fresh_request(self.host, self.port, "GET", path, timeout)
            else:
                response = keep.request("GET", path)
        except Failed as exc:
            self._record(Outcome(kind, started, time.monotonic(), exc.reason))
            return
        reason = self._judge(response, 200, self.traffic.get_body)
        self._record(Outcome(kind, started, time.monotonic(), reason, response.status,
                             response.headers.get(PID_HEADER)))  # fmt: skip

    def post_order(self, keep: KeptAlive) -> None:
        order_id = f"{self.traffic.order_prefix}{next(self.order_ids)}"
        path = self.traffic.post_path.format(id=order_id)
        started = time.monotonic()
        try:
            response = keep.request("POST", path)
        except Failed as exc:
            self._record(Outcome(KEEPALIVE_POST, started, time.monotonic(), exc.reason,
                                 order_id=order_id))  # fmt: skip
            return
        reason = self._judge(response, self.traffic.post_status, None)
        self._record(Outcome(KEEPALIVE_POST, started, time.monotonic(), reason, response.status,
                             response.headers.get(PID_HEADER), order_id))  # fmt: skip

    @staticmethod
    def _judge(response: Response, status: int, body: bytes | None) -> str | None:
        if response.status >= 500:
            return "5xx"
        if response.status != status:
            return f"status {response.status}"
        if body is not None and response.body.strip() != body:
            return "unexpected body"
        return None

    def _record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    # -- what happened

    def snapshot(self) -> list[Outcome]:
        with self.lock:
            return list(self.outcomes)

    def tally(self, kind: str, since: float = 0.0, until: float = float("inf")) -> Tally:
        """The requests of ``kind`` started in [since, until)."""
        tally = Tally()
        for outcome in self.snapshot():
            if outcome.kind == kind and since <= outcome.started < until:
                tally.add(outcome)
        return tally

    def accepted_orders(self) -> set[str]:
        return {
            outcome.order_id
            for outcome in self.snapshot()
            if outcome.kind == KEEPALIVE_POST and outcome.reason is None and outcome.order_id
        }

    def answered_by(self, since: float = 0.0) -> collections.Counter[str]:
        """Worker pids that answered requests started since ``since``, with their counts."""
        return collections.Counter(
            outcome.pid
            for outcome in self.snapshot()
            if outcome.pid is not None and outcome.started >= since and outcome.reason is None
        )
