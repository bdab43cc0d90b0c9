"""HTTP/2 at a stop (hypercorn h2c and h2, granian ``--http 2``): 20 streams of 2 s in flight
on 2 connections at SIGTERM are answered in full; each connection gets GOAWAY naming the last
stream it will answer; a stream opened after it is refused, never answered in part; exit 0.

Read with a frame-level client (tests/support/h2client.py): clients built on Python's h2
package (httpx) stop reading at the first GOAWAY, so they cannot see a drain done right.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.h2client import REFUSED_STREAM, WINDOW, H2Client
from tests.support.polling import wait_until
from tests.support.servers import Server, StartServer

PY = sys.executable
APP = "tests.apps.asgi_app:app"
STREAMS_PER_CONNECTION = 10
STREAM_MS = 2000
DRAIN_TIMEOUT = "10"


def _hypercorn(*options: str) -> list[str]:
    return [PY, "-m", "hypercorn", "-w", "0", *options, APP, "--bind", "127.0.0.1:{port}",
            "--graceful-timeout", DRAIN_TIMEOUT]


def _granian(*options: str) -> list[str]:
    return [PY, "-m", "granian", "--interface", "asgi", "--http", "2", *options,
            "--host", "127.0.0.1", "--port", "{port}", APP]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return cert, key


GRANIAN_TLS = ("--ssl-certificate", "--ssl-keyfile")
CASES = {
    # name: (argv, TLS options of that server or None, with graceful_web)
    "hypercorn h2c": (_hypercorn(), None, True),
    "hypercorn h2 uvloop": (_hypercorn("-k", "uvloop"), ("--certfile", "--keyfile"), True),
    "granian h2c": (_granian("--loop", "asyncio"), None, True),
    "granian h2 uvloop": (_granian("--loop", "uvloop"), GRANIAN_TLS, True),
    "granian h2c bare": (_granian("--loop", "asyncio"), None, False),
    "hypercorn h2c bare": (_hypercorn(), None, False),
}
BARE_FALLS_SHORT = pytest.mark.xfail(
    strict=True,
    reason="hypercorn alone sends its GOAWAY only once every stream is done, naming the "
    "streams it reset meanwhile, which it resets with NO_ERROR",
)


@pytest.fixture(
    params=[
        pytest.param(name, marks=BARE_FALLS_SHORT) if name == "hypercorn h2c bare" else name
        for name in CASES
    ]
)
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _start(
    start_server: StartServer, case: str, certificate: tuple[Path, Path]
) -> tuple[Server, bool]:
    argv, tls_options, graceful = CASES[case]
    argv = list(argv)
    if tls_options is not None:
        for option, path in zip(tls_options, certificate, strict=True):
            argv[3:3] = [option, str(path)]
    env = {"GRACEFUL_DRAIN_TIMEOUT": DRAIN_TIMEOUT, "WITHOUT_GRACEFUL": "0" if graceful else "1"}
    server = start_server(argv, env=env, ready_path=None)
    tls = tls_options is not None

    def answers() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited:\n{server.log()}")
        try:
            client = H2Client(server.port, tls=tls, timeout=2)
        except OSError:
            return False
        try:
            stream = client.get("/healthz")
            return client.wait(lambda: client.streams[stream].ended, 5)
        finally:
            client.close()

    wait_until(answers, 20, f"{case} to answer over HTTP/2")
    return server, tls


@pytest.fixture
def clients() -> Iterator[list[H2Client]]:
    opened: list[H2Client] = []
    try:
        yield opened
    finally:
        for client in opened:
            client.close()


def test_streams_in_flight_are_answered_in_full_and_later_ones_refused(
    start_server: StartServer,
    case: str,
    certificate: tuple[Path, Path],
    clients: list[H2Client],
) -> None:
    server, tls = _start(start_server, case, certificate)
    # Over TLS, a WINDOW_UPDATE for every DATA frame: one crosses the server's close (hypercorn
    # alone then ends with status 1, ssl.SSLError APPLICATION_DATA_AFTER_CLOSE_NOTIFY).
    give_back = 1 if tls else WINDOW // 2
    clients += [H2Client(server.port, tls=tls, give_back=give_back) for _ in range(2)]
    in_flight = [
        (client, client.get(f"/slow-recorded?ms={STREAM_MS}&id={n}"))
        for client in clients
        for n in range(STREAMS_PER_CONNECTION)
    ]
    wait_until(
        lambda: sum(line.startswith("start:") for line in server.events()) == len(in_flight),
        10,
        "every stream in flight",
    )
    server.send(signal.SIGTERM)
    for client in clients:
        assert client.wait(lambda c=client: bool(c.goaways), 5), f"no GOAWAY\n{server.log()}"
    # At the drain, not once the streams are done (they take 2 s).
    assert not any(client.streams[stream_id].ended for client, stream_id in in_flight)
    # A stream the client opens as the GOAWAY crosses it on the wire.
    late = [(client, client.get("/slow-recorded?ms=10&id=late")) for client in clients]

    assert server.wait_exit(timeout=float(DRAIN_TIMEOUT) + 5) == 0, server.log()
    for client in clients:
        assert client.wait(client.closed.is_set, 5), "the connection was left open"
    answered = [
        stream_id
        for client, stream_id in in_flight
        if (stream := client.streams[stream_id]).status == 200
        and stream.ended
        and stream.body == f"slept {STREAM_MS} ms\n".encode()
    ]
    assert len(answered) == len(in_flight), [c.streams[i] for c, i in in_flight]
    for client in clients:
        first = client.goaways[0]
        assert first.error_code == 0, client.goaways
        # The last GOAWAY names the streams answered and no later one.
        assert client.goaways[-1].last_stream_id == 2 * STREAMS_PER_CONNECTION - 1, client.goaways
    # Refused, so safe to retry elsewhere: hypercorn resets it with REFUSED_STREAM, granian
    # leaves it unanswered past the GOAWAY's last stream. Never answered in part.
    refused = REFUSED_STREAM if case.startswith("hypercorn") else None
    for client, stream_id in late:
        stream = client.streams[stream_id]
        assert stream.status is None and not stream.body, stream
        assert stream.reset == refused, stream
        assert stream_id > client.goaways[-1].last_stream_id


def test_http2_under_trio_is_said_once_at_its_first_request(
    start_server: StartServer, clients: list[H2Client]
) -> None:
    server = start_server(_hypercorn("-k", "trio"), env={"GRACEFUL_DRAIN_TIMEOUT": "5"})
    clients.append(H2Client(server.port, timeout=5))
    for _ in range(2):
        stream = clients[0].get("/healthz")
        assert clients[0].wait(lambda s=stream: clients[0].streams[s].ended, 5)
    assert server.log().count("HTTP/2 under trio") == 1, server.log()
