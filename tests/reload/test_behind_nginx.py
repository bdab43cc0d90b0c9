"""nginx with upstream keep-alive in front of a server that reloads its workers on SIGHUP.

nginx (the Debian package, installed by .ci/ensure_nginx.sh) runs as a non-daemon process of
the test, with its configuration, pid, logs and temp paths in the test's folder, on a free port
of 127.0.0.1. Its upstream is docs/reloads/nginx-upstream-keepalive.conf, the standard
keep-alive setup (``keepalive 16``, HTTP/1.1, an empty ``Connection`` header), so nginx keeps
idle connections to the workers and writes the next request on one of them: a worker that
closes such a connection while nginx writes on it costs a request. nginx writes a GET again on
a new connection when a cached one fails, never a POST.

Behind it, uvicorn ``--workers 2`` and gunicorn's ``aiohttp.GunicornWebWorker`` ``--workers 2``
are each reloaded twice with SIGHUP under keep-alive GETs and POSTs from clients to nginx, with
graceful_web and bare (GRACEFUL=0). Counted: what clients saw (GET and POST apart), the jobs the
202s accepted that never wrote their line, and what nginx's own log says about its upstream.
With GRACEFUL_RELOAD_FIGURES set, one JSON line per run is appended to that file.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import spawn, stop, wait_answering
from tests.support.servers import ROOT, Server, StartServer

from ._figures import record_figures
from ._load import KEEPALIVE_GET, KEEPALIVE_POST, Load, Traffic
from ._workers import Workers

PY = sys.executable
APP_MODULE = "tests.apps.reload_app"
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "uvicorn --workers 2": (
        [PY, "-m", "uvicorn", f"{APP_MODULE}:app", "--host", "127.0.0.1", "--port", "{port}",
         "--workers", "2", "--loop", "uvloop", "--http", "httptools"],
        {},
    ),
    "gunicorn GunicornWebWorker --workers 2": (
        [PY, "-m", "gunicorn", "-k", "aiohttp.GunicornWebWorker", "-b", "127.0.0.1:{port}",
         "--workers", "2", "--graceful-timeout", "30", f"{APP_MODULE}:aiohttp_app()"],
        {"APP": "aiohttp"},
    ),
}  # fmt: skip
RELOADS = 2
WORKERS = 2
# POSTs each generation of workers answers before the next step: the reload then cuts into
# jobs in flight, and the load afterwards shows the new workers serve.
POSTS_PER_GENERATION = 8
# Clients talk to nginx on kept-alive connections only: nginx itself is never restarted, so
# new client connections would test nothing of the servers behind it. 12 clients keep most of
# nginx's 16 cached upstream connections busy, so a worker that stops finds requests on them.
TRAFFIC = Traffic(
    fresh_clients=0,
    keepalive_get_clients=8,
    keepalive_get_interval=0.02,
    keepalive_post_clients=4,
    keepalive_post_interval=0.05,
)

# The configuration docs/reloads.md shows, included in a main configuration of the test's own.
UPSTREAM_CONF = ROOT / "docs" / "reloads" / "nginx-upstream-keepalive.conf"
MAIN_CONF = """\
# Written by tests/reload/test_behind_nginx.py for one run.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Each request's status, and the upstream statuses nginx got for it: "502, 202" is a
    # request nginx wrote again on a new connection after a cached one failed.
    log_format reload '$request_method $status "$upstream_status"';
    access_log {dir}/access.log reload;

    include {dir}/upstream.conf;
}}
"""


def render_upstream_conf(port: int, upstream_port: int) -> str:
    """docs/reloads/nginx-upstream-keepalive.conf with this run's two ports."""
    text = UPSTREAM_CONF.read_text()
    for old, new in (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ):
        assert text.count(old) == 1, f"{UPSTREAM_CONF.name} no longer has {old!r} once"
        text = text.replace(old, new)
    return text


# What nginx's error log says when a connection to the upstream fails, by the cause.
UPSTREAM_ERRORS = {
    "closed before the response": re.compile(r"upstream prematurely closed connection"),
    "reset": re.compile(r"\(104: Connection reset by peer\)"),
    "refused": re.compile(r"\(111: Connection refused\)"),
    "timed out": re.compile(r"upstream timed out"),
}
ACCESS_LINE = re.compile(r'(?P<method>\S+) (?P<status>\d+) "(?P<upstream>[^"]*)"')


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def upstream_errors(self) -> dict[str, int]:
        log = self.log()
        return {name: len(pattern.findall(log)) for name, pattern in UPSTREAM_ERRORS.items()}

    def access(self) -> list[re.Match[str]]:
        path = self.dir / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [found for line in lines if (found := ACCESS_LINE.fullmatch(line))]

    def written_again(self) -> dict[str, int]:
        """Requests nginx wrote to the upstream more than once, by method."""
        return dict(
            collections.Counter(line["method"] for line in self.access() if "," in line["upstream"])
        )

    def errors_answered(self) -> dict[str, int]:
        """Answers of 500 and more nginx gave its clients, by method and status."""
        return dict(
            collections.Counter(
                f"{line['method']} {line['status']}"
                for line in self.access()
                if int(line["status"]) >= 500
            )
        )


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    assert found, "nginx is not installed: make test-reload installs it (.ci/ensure_nginx.sh)"
    return found


@contextmanager
def run_nginx(workdir: Path, upstream_port: int) -> Iterator[Nginx]:
    """nginx in front of 127.0.0.1:``upstream_port``, answering proxied /readyz; stopped by PID."""
    workdir.mkdir()
    port = free_port()
    # As root, nginx's workers would switch to nobody, who cannot enter pytest's private folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    (workdir / "upstream.conf").write_text(render_upstream_conf(port, upstream_port))
    conf = workdir / "nginx.conf"
    conf.write_text(MAIN_CONF.format(user=user, dir=workdir))
    command = [nginx_binary(), "-p", str(workdir), "-e", str(workdir / "error.log"),
               "-c", str(conf), "-g", "daemon off;"]  # fmt: skip
    proc = spawn(command, workdir / "stderr.log")
    nginx = Nginx(proc, port, workdir)
    try:
        wait_answering(
            proc, f"{nginx.url}/readyz", 10, "nginx to answer /readyz from its upstream",
            nginx.log, name="nginx",
        )  # fmt: skip
        yield nginx
    finally:
        stop(proc)


def done_orders(server: Server) -> set[str]:
    """The orders whose job wrote its ``done <id> <pid>`` line."""
    return {line.split()[1] for line in server.jobs() if line.startswith("done ")}


def posts_answered_by(load: Load, pids: set[int], since: float) -> int:
    return sum(
        1
        for outcome in load.snapshot()
        if outcome.kind == KEEPALIVE_POST
        and outcome.reason is None
        and outcome.started >= since
        and outcome.pid is not None
        and int(outcome.pid) in pids
    )


def reload_under_load(server: Server, workers: Workers, load: Load) -> None:
    """SIGHUP ``RELOADS`` times, each once the workers in place have taken jobs, and wait for
    each reload to replace every worker; then for the last workers to take jobs too."""
    wait_until(lambda: len(workers.alive()) == WORKERS, 15, f"{WORKERS} workers")
    since = time.monotonic()
    for reload in range(RELOADS + 1):
        generation = workers.alive()

        def took_jobs(generation: set[int] = generation, since: float = since) -> bool:
            return posts_answered_by(load, generation, since) >= POSTS_PER_GENERATION

        wait_until(took_jobs, 15, f"generation {reload} of the workers to accept jobs")
        if reload == RELOADS:
            return
        server.send(signal.SIGHUP)

        def replaced(retiring: set[int] = generation) -> bool:
            alive = workers.alive()
            return not alive & retiring and len(alive) == WORKERS

        wait_until(replaced, 30, f"reload {reload + 1} to replace the workers;\n{server.log()}")
        since = time.monotonic()


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful_web", "bare"])
@pytest.mark.parametrize("kind", SERVERS, ids=lambda kind: kind.split()[0])
def test_reloads_through_nginx_with_upstream_keepalive(
    start_server: StartServer, tmp_path: Path, kind: str, graceful: bool
) -> None:
    began = time.monotonic()
    argv, env = SERVERS[kind]
    server = start_server(
        argv, env={**env, "GRACEFUL": "1" if graceful else "0"}, ready_path="/readyz"
    )
    workers = Workers(server.pid)
    workers.start()
    with run_nginx(tmp_path / "nginx", server.port) as nginx:
        load = Load("127.0.0.1", nginx.port, TRAFFIC)
        load.start()
        try:
            reload_under_load(server, workers, load)
        finally:
            load.stop()
            workers.stop()
        # Every job the last workers accepted writes its line 1.5 s after its 202; the jobs of
        # retired workers were written before they exited, or never will be.
        last_workers = workers.alive()
        accepted = load.accepted_orders()
        of_last_workers = {
            outcome.order_id
            for outcome in load.snapshot()
            if outcome.order_id in accepted and outcome.pid and int(outcome.pid) in last_workers
        }
        wait_until(
            lambda: of_last_workers <= done_orders(server), 10, "the last workers' jobs to end"
        )
        lost = accepted - done_orders(server)
        figures = {
            "test": "behind_nginx",
            "server": kind,
            "graceful_web": graceful,
            "get": load.tally(KEEPALIVE_GET).as_dict(),
            "post": load.tally(KEEPALIVE_POST).as_dict(),
            "accepted": len(accepted),
            "lost": len(lost),
            "nginx_upstream_errors": nginx.upstream_errors(),
            "nginx_wrote_again": nginx.written_again(),
            "nginx_answered": nginx.errors_answered(),
            "seconds": round(time.monotonic() - began, 1),
        }
    server.send(signal.SIGTERM)
    exit_status = server.wait_exit(30)
    figures["exit_status"] = exit_status
    record_figures(figures)
    print(f"\n{json.dumps(figures)}")
    assert load.tally(KEEPALIVE_GET).ok > 0 and accepted, "no load got through nginx"
    if not graceful and kind.startswith("uvicorn"):
        # Its workers die of the SIGTERM they re-raise, with every job in flight.
        assert lost, "bare uvicorn lost no job: the run cannot see a loss"
    if graceful:
        assert not lost, f"{len(lost)} accepted jobs lost: {sorted(lost)[:10]}\n{server.log()}"
        assert exit_status == 0, server.log()
