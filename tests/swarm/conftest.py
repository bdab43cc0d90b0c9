"""The demo services as a Docker Swarm stack (docker-stack.yml), updated by swarm itself.

`make test-swarm` (docker/test-swarm.sh) provisions the engine, the base image and the wheelhouse
as `make test-docker` does and passes them in the environment (BASE_IMAGE, PIP_INSTALL_OPTIONS).
The engine is made a one-node swarm for the session (`docker swarm init --advertise-addr
127.0.0.1`) and leaves it at the end (`docker swarm leave --force`), unless it was in a swarm
already. Without an engine these tests fail; they never skip. tests/conftest.py leaves this folder
out of `make test` unless GRACEFUL_SWARM_TESTS=1.

Every task runs with host networking (the stack's `hostnet`), on ports of 127.0.0.1 chosen here:
no byte leaves the loopback. Everything a test deploys is removed by its id.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.docker_engine import require_docker_engine
from tests.support.load import Kind, MixedLoad
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = ROOT / "docker-stack.yml"
NGINX_CONF = ROOT / "docker" / "swarm" / "nginx.conf"
DEMO_IMAGE = "graceful-web-demo:test"
NGINX_IMAGE = "graceful-web-nginx:test"
SERVICES = ("aiohttp", "asgi")
REPLICAS = 3
#: The port prefixes of docker-stack.yml and docker/swarm/nginx.conf: replica N of a service
#: listens on <prefix>N, its nginx on <prefix>0.
DEFAULT_PREFIXES = {"aiohttp": 1850, "asgi": 1860}
PREFIX_VARIABLES = {"aiohttp": "AIOHTTP_PORT_PREFIX", "asgi": "ASGI_PORT_PREFIX"}
COMMAND_TIMEOUT = 120.0
BUILD_TIMEOUT = 900.0


def docker(
    *args: str,
    timeout: float = COMMAND_TIMEOUT,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = ["docker", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and done.returncode != 0:
        output = f"{done.stdout}\n{done.stderr}"
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return done


def inspect(*ids: str) -> list[dict[str, Any]]:
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(docker("inspect", *ids).stdout)
    return found


def docker_time(raw: str) -> float:
    """Docker's RFC 3339 nanosecond timestamps, as seconds since the epoch."""
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", raw).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def stack_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(STACK_FILE.read_text())
    return loaded


def seconds(value: str) -> float:
    """A compose duration such as '30s' or '1m30s'."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    assert parts and value, f"not a duration: {value!r}"
    return int(parts.group(1) or 0) * 60 + float(parts.group(2) or 0)


def grace_period(service: str) -> float:
    return seconds(stack_file()["services"][service]["stop_grace_period"])


def drain_timeout(service: str) -> float:
    return float(stack_file()["services"][service]["environment"]["GRACEFUL_DRAIN_TIMEOUT"])


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_prefixes(count: int) -> list[int]:
    """Port prefixes P with P0..P9 free on 127.0.0.1, under the ephemeral port range."""
    chosen: list[int] = []
    while len(chosen) < count:
        prefix = random.randrange(1100, 3200)
        if prefix not in chosen and all(_free(prefix * 10 + n) for n in range(10)):
            chosen.append(prefix)
    return chosen


def render_nginx_conf(prefixes: dict[str, int]) -> str:
    """docker/swarm/nginx.conf with the replicas and listeners on this test's ports."""
    text = NGINX_CONF.read_text()
    for service, prefix in prefixes.items():
        old = f"127.0.0.1:{DEFAULT_PREFIXES[service]}"
        assert text.count(old) == REPLICAS + 1, f"{NGINX_CONF} no longer has {old} 4 times"
        text = text.replace(old, f"127.0.0.1:{prefix}")
    return text


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Task:
    id: str
    slot: int
    desired: str
    state: str
    exit_code: int | None
    container: str | None
    env: tuple[str, ...]
    created: float
    timestamp: float
    message: str
    error: str

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Task:
        status = raw["Status"]
        container = status.get("ContainerStatus") or {}
        return cls(
            id=raw["ID"],
            slot=int(raw.get("Slot", 0)),
            desired=raw["DesiredState"],
            state=status["State"],
            exit_code=container.get("ExitCode"),
            container=container.get("ContainerID"),
            env=tuple(raw["Spec"]["ContainerSpec"].get("Env") or ()),
            created=docker_time(raw["CreatedAt"]),
            timestamp=docker_time(status["Timestamp"]),
            message=status.get("Message", ""),
            error=status.get("Err", ""),
        )


@dataclass
class Stack:
    """One deployment of docker-stack.yml (or of ``file``, a stack made from it), with its own
    name, ports and job records."""

    name: str
    env: dict[str, str]
    prefixes: dict[str, int]
    jobs_dir: Path
    file: Path = STACK_FILE
    services: tuple[str, ...] = SERVICES
    replicas: int = REPLICAS
    nginx: bool = True
    service_ids: list[str] = field(default_factory=list)
    config_ids: list[str] = field(default_factory=list)

    def service(self, service: str) -> str:
        return f"{self.name}_{service}"

    def nginx_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.prefixes[service]}0"

    def replica_port(self, service: str, slot: int) -> int:
        return self.prefixes[service] * 10 + slot

    def deploy(self) -> None:
        # Newer clients wait for the services to converge unless told not to; older ones have
        # no such flag. The convergence is waited for here, with a timeout.
        detach = (
            ["--detach=true"] if "--detach" in docker("stack", "deploy", "--help").stdout else []
        )
        done = docker(
            "stack", "deploy", *detach, "--resolve-image", "never",
            "-c", str(self.file), self.name, env=self.env, check=False,
        )  # fmt: skip
        # What was created, even by a deploy that failed half-way, so remove() finds it.
        self._find_ids()
        assert done.returncode == 0, f"docker stack deploy failed:\n{done.stdout}\n{done.stderr}"
        assert len(self.service_ids) == len(self.services) + self.nginx, self.service_ids

    def _find_ids(self) -> None:
        label = f"label=com.docker.stack.namespace={self.name}"
        self.service_ids = docker(
            "service", "ls", "-q", "--filter", label, check=False
        ).stdout.split()
        self.config_ids = docker(
            "config", "ls", "-q", "--filter", label, check=False
        ).stdout.split()

    def tasks(self, service: str) -> list[Task]:
        ids = docker("service", "ps", "-q", "--no-trunc", self.service(service)).stdout.split()
        return [Task.of(raw) for raw in inspect(*ids)]

    def running(self, service: str) -> list[Task]:
        return [t for t in self.tasks(service) if t.desired == "running" and t.state == "running"]

    def update_status(self, service: str) -> dict[str, Any]:
        found = docker(
            "service", "inspect", "-f", "{{json .UpdateStatus}}", self.service(service)
        ).stdout.strip()
        status: dict[str, Any] = json.loads(found) if found not in ("", "null") else {}
        return status

    def update(self, service: str, *args: str) -> None:
        docker("service", "update", "--detach", *args, self.service(service))

    def wait_update(self, service: str, states: set[str], timeout: float) -> dict[str, Any]:
        """Poll the service's UpdateStatus until its state is one of ``states``."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.update_status(service))
            bad = {"paused", "rollback_paused"} - states
            assert seen.get("State") not in bad, f"{service} update stopped: {seen}"
            return seen.get("State") in states

        wait_until(reached, timeout, f"{service} update to reach {states} (last {seen})")
        return seen

    def wait_converged(self, timeout: float = 120.0) -> None:
        """Every replica running (healthy: swarm counts a task running only then) and
        answering on its own port, and nginx answering for each set."""
        slots = list(range(1, self.replicas + 1))
        for service in self.services:
            wait_until(
                lambda service=service: sorted(t.slot for t in self.running(service)) == slots,
                timeout,
                f"{self.replicas} running tasks of {self.service(service)}",
            )
            for slot in slots:
                url = f"http://127.0.0.1:{self.replica_port(service, slot)}/readyz"
                wait_until(lambda url=url: answers(url), 30, f"{url} to answer 200")
            if not self.nginx:
                continue
            wait_until(
                lambda service=service: answers(f"{self.nginx_url(service)}/fast"),
                30,
                f"nginx to answer for {service}",
            )

    def records(self, service: str) -> list[str]:
        found: list[str] = []
        for path in sorted(self.jobs_dir.glob(f"{service}-*-jobs.log")):
            found += path.read_text().splitlines()
        return found

    def remove(self) -> None:
        """Remove what deploy() created, by id, and wait until its containers are gone."""
        if not self.service_ids:
            self._find_ids()  # a deploy cut short
        if self.service_ids:
            docker("service", "rm", *self.service_ids, check=False)
        label = f"label=com.docker.stack.namespace={self.name}"
        grace = max(grace_period(service) for service in self.services)
        wait_until(
            lambda: not docker("ps", "-aq", "--filter", label, check=False).stdout.split(),
            grace + 60,
            f"the containers of stack {self.name} to be removed",
        )
        if self.config_ids:
            docker("config", "rm", *self.config_ids, check=False)
        self.service_ids, self.config_ids = [], []


@dataclass(frozen=True)
class Event:
    at: float
    status: str
    container: str
    task: str
    service: str
    attributes: dict[str, str]


@dataclass
class Events:
    """`docker events` for one stack's containers, read by a thread; stopped by its PID."""

    stack: str
    proc: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "docker", "events", "--format", "{{json .}}", "--filter", "type=container",
                "--filter", f"label=com.docker.stack.namespace={self.stack}",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            raw = json.loads(line)
            status = raw.get("status", "")
            if status.startswith("exec_"):  # the healthchecks
                continue
            attributes = raw["Actor"]["Attributes"]
            with self.lock:
                self.events.append(
                    Event(
                        at=raw["timeNano"] / 1e9,
                        status=status,
                        container=raw["Actor"]["ID"],
                        task=attributes.get("com.docker.swarm.task.id", ""),
                        service=attributes.get("com.docker.swarm.service.name", ""),
                        attributes=attributes,
                    )
                )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.thread is not None:
            self.thread.join(10)

    def of_task(self, task: str) -> list[Event]:
        with self.lock:
            return [event for event in self.events if event.task == task]


@pytest.fixture(scope="session")
def swarm() -> Iterator[None]:
    """A one-node swarm on the engine: initialised here and left at the end, unless the engine
    was in a swarm already (then it is used and left as it was)."""
    require_docker_engine("test-swarm")
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    joined_here = state == "inactive"
    if joined_here:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    else:
        manager = docker("info", "--format", "{{.Swarm.ControlAvailable}}").stdout.strip()
        assert state == "active" and manager == "true", f"engine in swarm state {state!r}"
    try:
        yield
    finally:
        if joined_here:
            docker("swarm", "leave", "--force", check=False)


@pytest.fixture(scope="session")
def images() -> None:
    """The demo and nginx images, built as `make test-docker` builds them (docker's layer cache
    makes them the very images its compose build made, when it ran first)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # the classic builder, as docker-compose v1's
    base = os.environ.get("BASE_IMAGE", "python:3.12-slim")
    nginx_base = os.environ.get("NGINX_BASE_IMAGE", base)
    pip_options = os.environ.get("PIP_INSTALL_OPTIONS", "")
    common = ("build", "-q", "--network", "host", "--label", "graceful-web.demo=1")
    docker(
        *common, "--build-arg", f"BASE_IMAGE={base}",
        "--build-arg", f"PIP_INSTALL_OPTIONS={pip_options}", "-t", DEMO_IMAGE, str(ROOT),
        env=env, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    docker(
        *common, "--build-arg", f"BASE_IMAGE={nginx_base}", "-t", NGINX_IMAGE,
        str(ROOT / "docker" / "nginx"), env=env, timeout=BUILD_TIMEOUT,
    )  # fmt: skip


@pytest.fixture(scope="session")
def stacks(
    swarm: None, images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[bool], Stack]]:
    """stacks(graceful) deploys docker-stack.yml and waits until it has converged. A test
    removes its stack when done; whatever is left is removed at the end of the session."""
    stacks: list[Stack] = []

    def make(graceful: bool) -> Stack:
        work = tmp_path_factory.mktemp("swarm")
        prefixes = dict(zip(SERVICES, free_prefixes(len(SERVICES)), strict=True))
        conf = work / "nginx.conf"
        conf.write_text(render_nginx_conf(prefixes))
        jobs_dir = work / "jobs"
        jobs_dir.mkdir()
        env = {
            **os.environ,
            "DEMO_IMAGE": DEMO_IMAGE,
            "NGINX_IMAGE": NGINX_IMAGE,
            "NGINX_CONF": str(conf),
            "JOBS_DIR": str(jobs_dir),
            "GRACEFUL": "1" if graceful else "0",
            **{PREFIX_VARIABLES[s]: str(p) for s, p in prefixes.items()},
        }
        name = f"gwtest-{'on' if graceful else 'off'}-{secrets.token_hex(2)}"
        stack = Stack(name, env, prefixes, jobs_dir)
        stacks.append(stack)
        stack.deploy()
        stack.wait_converged()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.remove()


# -- load ---------------------------------------------------------------------------------

CLIENTS = 4  # per service
PAUSE = 0.15  # between a client's requests: a bounded, paced load
MAX_REQUESTS = 4000  # per service; the load stops by itself at either bound
MAX_SECONDS = 300.0
REQUEST_TIMEOUT = 30.0


@dataclass(kw_only=True)
class Load(MixedLoad):
    """Paced requests and jobs through one service's nginx from a few threads.

    Three requests in ten post a job (1 to 3 s, so that each replica has some in flight when
    it is told to stop), two are slow (0.2 to 1.2 s), the rest quick.
    """

    clients: int = CLIENTS
    pause: float = PAUSE
    max_requests: int | None = MAX_REQUESTS
    max_seconds: float = MAX_SECONDS
    request_timeout: float = REQUEST_TIMEOUT

    def mix(self, n: int) -> tuple[Kind, int, str | None]:
        kind = n % 10
        if kind < 3:
            return "job", 1000 + n * 37 % 2000, f"{self.name}-{n}"
        if kind < 5:
            return "slow", 200 + n * 53 % 1000, None
        return "fast", 0, None
