"""The demo services under a real Docker engine, driven through docker-compose.yml.

`make test-docker` (docker/test-docker.sh) provisions the engine, a base image and a wheelhouse
and passes them in the environment (BASE_IMAGE, PIP_INSTALL_OPTIONS, GRACEFUL_COMPOSE). Without
an engine these tests fail; they never skip. tests/conftest.py leaves this folder out of
`make test` unless GRACEFUL_DOCKER_TESTS=1.

Every container runs with host networking (compose.host.yml), on free ports of 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.docker_engine import require_docker_engine
from tests.support.polling import wait_until
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILES = (ROOT / "docker-compose.yml", HERE / "compose.host.yml")
PROJECT = "graceful-web-test"
SERVICES = ("aiohttp", "asgi", "web-a", "web-b", "nginx")
PORT_VARIABLES = {
    "aiohttp": "AIOHTTP_PORT",
    "asgi": "ASGI_PORT",
    "web-a": "WEB_A_PORT",
    "web-b": "WEB_B_PORT",
    "nginx": "NGINX_PORT",
}
BUILD_TIMEOUT = 900.0
COMMAND_TIMEOUT = 120.0


def grace_period() -> float:
    """stop_grace_period of the demo services, as docker-compose.yml sets it."""
    text = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r"^\s*stop_grace_period:\s*(\d+)s\s*$", text, re.MULTILINE)
    assert found, "docker-compose.yml no longer sets stop_grace_period in seconds"
    return float(found.group(1))


def _docker_time(raw: str) -> float:
    """Docker's RFC 3339 nanosecond timestamps, as seconds since the epoch."""
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", raw).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int
    started_at: float
    finished_at: float
    health: str | None


@dataclass(frozen=True)
class Compose:
    """docker compose (v2) or docker-compose (v1) for this project, with a fixed environment."""

    command: tuple[str, ...]
    env: dict[str, str]
    ports: dict[str, int]

    def with_env(self, **extra: str) -> Compose:
        return replace(self, env={**self.env, **extra})

    def run(
        self, *args: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [part for path in COMPOSE_FILES for part in ("-f", str(path))]
        argv = [*self.command, "-p", PROJECT, *files, "--profile", "rolling", *args]
        done = subprocess.run(
            argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def up(self, *services: str) -> None:
        self.run("up", "-d", "--no-build", *services, timeout=180)

    def stop(self, *services: str) -> float:
        """Stop as `docker compose stop` does (SIGTERM, SIGKILL after stop_grace_period);
        returns how long the command took."""
        started = time.monotonic()
        self.run("stop", *services, timeout=grace_period() + 60)
        return time.monotonic() - started

    def start(self, *services: str) -> None:
        self.run("start", *services)

    def remove(self, *services: str) -> None:
        self.run("rm", "-f", "-s", *services)

    def container_id(self, service: str) -> str:
        found = self.run("ps", "-q", service).stdout.split()
        assert len(found) == 1, f"expected one container for {service}, found {found}"
        return found[0]

    def state(self, service: str) -> ContainerState:
        cid = self.container_id(service)
        fields = "{{.State.Running}} {{.State.ExitCode}} {{.State.StartedAt}} {{.State.FinishedAt}}"
        fields += " {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}"
        out = subprocess.run(
            ["docker", "inspect", "-f", fields, cid],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
        ).stdout.split()
        return ContainerState(
            running=out[0] == "true",
            exit_code=int(out[1]),
            started_at=_docker_time(out[2]),
            finished_at=_docker_time(out[3]),
            health=None if out[4] == "-" else out[4],
        )

    def logs(self, service: str) -> str:
        done = subprocess.run(
            ["docker", "logs", self.container_id(service)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=True,
        )
        return done.stdout + done.stderr

    def drain_line(self, service: str) -> str | None:
        """The last drain report the service logged (logger graceful_web)."""
        lines = [line for line in self.logs(service).splitlines() if "drain finished" in line]
        return lines[-1].split("graceful_web: ", 1)[-1] if lines else None

    def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        """Readiness poll on the service's own /readyz."""

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url(service)}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, f"{service} to answer /readyz with 200")

    def wait_healthy(self, service: str, timeout: float = 60.0) -> None:
        """The engine's own view: the compose healthcheck (readiness) has passed."""
        wait_until(
            lambda: self.state(service).health == "healthy",
            timeout,
            f"docker to report {service} healthy",
        )


def _compose_command() -> tuple[str, ...]:
    configured = os.environ.get("GRACEFUL_COMPOSE")
    if configured:
        return tuple(shlex.split(configured))
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
    )
    return ("docker", "compose") if probe.returncode == 0 else ("docker-compose",)


@pytest.fixture(scope="session")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """The compose project with its images built; removed (after a graceful stop) at the end."""
    require_docker_engine()
    ports = {service: free_port() for service in SERVICES}
    env = {
        **os.environ,
        **{PORT_VARIABLES[service]: str(port) for service, port in ports.items()},
        "JOBS_DIR": str(tmp_path_factory.mktemp("jobs")),
        "GRACEFUL": "1",
    }
    project = Compose(_compose_command(), env, ports)
    project.run("down", "--remove-orphans", "-t", "5")  # what a crashed run left behind
    project.run("build", timeout=BUILD_TIMEOUT)
    try:
        yield project
    finally:
        project.run("down", "--remove-orphans", "-t", str(int(grace_period())), check=False)


def accepted_connections(server_port: int) -> set[int]:
    """Client ports of the connections the server on ``server_port`` has accept()ed.

    A connection still in the listen queue is ESTABLISHED too, but has no socket inode until
    the server accepts it: those are left out.
    """
    clients: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            if local_port == server_port and established and fields[9] != "0":
                clients.add(remote_port)
    return clients
