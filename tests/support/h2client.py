"""A frame-level HTTP/2 client that tells exactly what a server sent on one connection: each
stream's status, body and end (END_STREAM, or RST_STREAM with its code), and every GOAWAY with
its last stream id.

Python's h2 package closes its connection state on the first GOAWAY it receives, so a client
built on it (httpx) cannot read a response the server still sends after one, as RFC 9113 6.8
allows (python-hyper/h2#1181). This client keeps reading frames until the server closes the
socket, as nghttp2, Go and Envoy do.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REFUSED_STREAM = 0x7
NO_ERROR = 0x0
WINDOW = 65535  # the initial flow-control window, of the connection and of each stream


@dataclass
class Stream:
    path: str
    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM received
    reset: int | None = None  # RST_STREAM's error code


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    error_code: int


class H2Client:
    """One HTTP/2 connection (h2c with prior knowledge, or h2 over TLS with ALPN)."""

    def __init__(
        self, port: int, *, tls: bool = False, timeout: float = 30.0, give_back: int = WINDOW // 2
    ) -> None:
        """``give_back``: how many bytes read before the window is given back (1: a
        WINDOW_UPDATE for every DATA frame, which may cross the server's close on the wire)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.streams: dict[int, Stream] = {}
        self.goaways: list[GoAway] = []
        self.closed = threading.Event()  # the server closed the socket
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._next_id = 1
        self._used: dict[int, int] = {}  # flow-controlled bytes not yet given back, by window
        self._give_back = give_back
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._send(PREFACE + SettingsFrame(0).serialize())
        self._reader = threading.Thread(target=self._read_frames, daemon=True)
        self._reader.start()

    def get(self, path: str) -> int:
        """Open a stream for ``GET path``; its id."""
        with self._lock:
            stream_id = self._next_id
            self._next_id += 2
            self.streams[stream_id] = Stream(path)
            headers = HeadersFrame(stream_id, flags=["END_HEADERS", "END_STREAM"])
            headers.data = self._encoder.encode(
                [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1"),
                 (":path", path)]
            )
            self._send(headers.serialize())
        return stream_id

    def wait(self, done: Callable[[], object], timeout: float) -> bool:
        """Wait until ``done()`` holds (read under the client's lock); False at the timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self) -> None:
        try:
            # shutdown first: close() alone leaves the socket open while the reader is in recv
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
        finally:
            self._reader.join(timeout=5)

    def _consumed(self, stream_id: int, length: int) -> None:
        """Give the window back once ``give_back`` bytes of it are used (by default half of
        it, as nghttp2 does: a small response then needs nothing sent back)."""
        for window in (0, stream_id):
            used = self._used.get(window, 0) + length
            if used >= self._give_back:
                update = WindowUpdateFrame(window)
                update.window_increment = used
                self._send(update.serialize())
                used = 0
            self._used[window] = used

    # -- reading -------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        # The server may have gone: what it sent is what the test looks at.
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _read_frames(self) -> None:
        buffer = b""
        try:
            while True:
                while len(buffer) < 9:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                while len(buffer) < 9 + length:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                frame.parse_body(memoryview(buffer[9 : 9 + length]))
                buffer = buffer[9 + length :]
                with self._changed:
                    self._on_frame(frame)
                    self._changed.notify_all()
        except OSError:
            return
        finally:
            # The server closed: close too, as a browser or proxy would (over TLS the server
            # waits for it).
            self.sock.close()
            with self._changed:
                self.closed.set()
                self._changed.notify_all()

    def _on_frame(self, frame: Frame) -> None:
        stream = self.streams.get(frame.stream_id)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self._send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self._send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append(GoAway(frame.last_stream_id, frame.error_code))
        elif stream is None:
            return
        elif isinstance(frame, HeadersFrame):
            for name, value in self._decoder.decode(frame.data):
                if name == ":status":
                    stream.status = int(value)
        elif isinstance(frame, DataFrame):
            stream.body += frame.data
            self._consumed(frame.stream_id, frame.flow_controlled_length)
        elif isinstance(frame, RstStreamFrame):
            stream.reset = frame.error_code
        if isinstance(frame, (HeadersFrame, DataFrame)) and "END_STREAM" in frame.flags:
            stream.ended = True
